//! The command line: check-config reports bad files by file, key and reason; hash-password prints pg_authid secrets.

use std::process::Command;

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgcausal")).arg("check-config").arg(&path).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout))
}

const GOOD: &str = "[proxy]\nlisten = \"127.0.0.1:6432\"\n[[nodes]]\nname = \"pg1\"\nhost = \"127.0.0.1\"\nport = 5432\n[[users]]\nname = \"app\"\npassword = \"s\"\n";

#[test]
fn check_config_accepts_a_good_file_and_names_the_bad_key() {
    let (success, out) = check(GOOD);
    assert!(success, "{out}");
    assert!(out.contains("ok (1 nodes, 1 users)"), "{out}");
    let (success, out) = check(&GOOD.replace("port = 5432", "port = \"five\""));
    assert!(!success);
    assert!(out.contains("bad.toml: key `nodes[0].port`"), "{out}");
    let (success, out) = check(&GOOD.replace("[proxy]", "[proxy]\npool_mod = \"session\""));
    assert!(!success);
    assert!(out.contains("key `proxy") && out.contains("unknown field `pool_mod`"), "{out}");
    let (success, out) = check("[proxy\n");
    assert!(!success && out.contains("bad.toml:"), "{out}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `pgcausal serve` child; killed (by PID) when dropped.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_address_in_use_is_named_with_its_config_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let proxy_taken = GOOD.replace("127.0.0.1:6432", &addr.to_string()) + "[metrics]\nlisten = \"\"\n";
    let metrics_taken = GOOD.replace("127.0.0.1:6432", &format!("127.0.0.1:{}", free_port()))
        + &format!("[metrics]\nlisten = \"{addr}\"\n");
    for (text, key) in [(proxy_taken, "proxy.listen"), (metrics_taken, "metrics.listen")] {
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_pgcausal")).args(["serve", "--config"]).arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(&format!("cannot listen on {addr} ({key})")) && stderr.contains("in use"), "{stderr}");
    }
}

/// `--log-format json`: one JSON object per line, fields at the top level, no colour codes; a
/// node that refuses connections is one warn line however often the probes retry.
#[test]
fn json_logs_and_a_refused_node_logged_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let closed = free_port(); // nothing listens there
    let text =
        GOOD.replace("127.0.0.1:6432", &format!("127.0.0.1:{}", free_port())).replace("5432", &closed.to_string())
            + "[metrics]\nlisten = \"\"\n[monitor]\ninterval = \"50ms\"\n";
    std::fs::write(&path, text).unwrap();
    let log_path = dir.path().join("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pgcausal"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&path)
        .env("PGCAUSAL_LOG", "debug")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _serve = Serve(child);
    // Wait for the warn line and then for ten more failed probes (debug lines): retries happened.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        let warned = log.lines().position(|l| l.contains("\"server connection failed\""));
        if warned.is_some_and(|at| log.lines().skip(at).filter(|l| l.contains("\"probe failed\"")).count() >= 10) {
            break log;
        }
        assert!(std::time::Instant::now() < deadline, "no warn line and retries:\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!log.contains('\u{1b}'), "ANSI codes in JSON logs:\n{log}");
    for line in log.lines() {
        assert!(line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":"), "not a JSON line: {line}");
    }
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("\"server connection failed\"")).collect();
    assert_eq!(warned.len(), 1, "a refused node logged more than once:\n{log}");
    let line = warned[0];
    for field in [
        "\"level\":\"WARN\"",
        "\"node\":\"pg1\"",
        &format!("\"addr\":\"127.0.0.1:{closed}\""),
        "\"purpose\":\"control\"",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    assert!(line.contains("refused") && !line.contains("\"sqlstate\""), "{line}");
}

fn hash_password(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgcausal"))
        .arg("hash-password")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_string();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

#[test]
fn hash_password_prints_what_postgres_stores_and_check_config_takes_it() {
    use pgcausal::secret::{ScramVerifier, Secret};
    let (ok, from_arg, err) = hash_password(&["hunter2"], None);
    assert!(ok, "{err}");
    let (ok, from_stdin, err) = hash_password(&[], Some("hunter2\n"));
    assert!(ok, "{err}");
    for printed in [&from_arg, &from_stdin] {
        let Ok(Secret::Scram(v)) = Secret::parse(printed) else { panic!("not a verifier: {printed}") };
        assert!(printed.starts_with("SCRAM-SHA-256$4096:"), "{printed}");
        assert_eq!(v.salt.len(), 16);
        assert_eq!(ScramVerifier::from_password("hunter2", &v.salt, 4096), v, "{printed} is not hunter2's");
    }
    assert_ne!(from_arg, from_stdin, "each verifier gets its own salt");
    let config = GOOD.replace("password = \"s\"", &format!("password = \"{from_arg}\"\nserver_password = \"s\""));
    let (success, out) = check(&config);
    assert!(success, "{out}");

    let (ok, md5, err) = hash_password(&["--md5", "--user", "y", "pw"], None);
    assert!(ok, "{err}");
    assert_eq!(md5, "md55cd54d0fec19d1894dba02b32ee85469", "PostgreSQL 15's hash of pw for role y");
    let (ok, _, err) = hash_password(&["--md5", "pw"], None);
    assert!(!ok && err.contains("--user"), "{err}");
    let (ok, _, err) = hash_password(&[], Some("\n"));
    assert!(!ok && err.contains("empty password"), "{err}");
}
