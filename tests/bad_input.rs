//! Misbehaving clients get a clear FATAL error and a closed connection; others are unaffected.

mod support;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::*;

/// Reads until EOF and returns the fields of the first ErrorResponse: (severity, code, message).
fn read_error_then_eof(s: &mut TcpStream) -> (String, String, String) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).expect("the proxy closes the connection");
    let at = all.iter().position(|&b| b == b'E').unwrap_or_else(|| panic!("no ErrorResponse in {all:?}"));
    let len = u32::from_be_bytes(all[at + 1..at + 5].try_into().unwrap()) as usize;
    let body = &all[at + 5..at + 1 + len];
    let mut fields = std::collections::HashMap::new();
    for f in body.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        fields.insert(f[0], String::from_utf8_lossy(&f[1..]).into_owned());
    }
    (fields[&b'S'].clone(), fields[&b'C'].clone(), fields[&b'M'].clone())
}

fn startup(user: &str, db: &str, version: u32) -> Vec<u8> {
    startup_packet(version, &[("user", user), ("database", db)])
}

/// Logs in as the trust user and reads up to ReadyForQuery.
fn logged_in(port: u16, db: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&startup(TRUST_USER, db, 196608)).unwrap();
    read_until(&mut s, &[b'Z', 0, 0, 0, 5, b'I']);
    s
}

/// Reads until `end` (a ReadyForQuery) has arrived.
fn read_until(s: &mut TcpStream, end: &[u8]) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(end.len()).any(|w| w == end) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before {end:?}: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn bad_clients_get_errors_and_good_clients_carry_on() {
    let cluster = shared_cluster();
    cluster.create_database("bad_input");
    let p = ProxyProcess::start(
        cluster,
        ProxyOptions { proxy_section: "client_login_timeout = \"2s\"".into(), ..Default::default() },
    );
    let port = p.port;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (good, connection) =
        runtime.block_on(tokio_postgres::connect(&p.conn_str("bad_input"), tokio_postgres::NoTls)).unwrap();
    runtime.spawn(connection);
    let check_good = |step: &str| {
        let messages = runtime
            .block_on(good.simple_query("SELECT 42"))
            .unwrap_or_else(|e| panic!("good client failed after {step}: {e}"));
        let value = messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("42"), "after {step}");
    };
    check_good("start");

    // HTTP instead of PostgreSQL: the first 4 bytes read as an absurd startup length.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (sev, code, msg) = read_error_then_eof(&mut s);
    assert_eq!((sev.as_str(), code.as_str()), ("FATAL", "08P01"), "{msg}");
    assert!(msg.contains("invalid length of startup packet"), "{msg}");
    check_good("garbage");

    // Unknown protocol version.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&startup(USER, "bad_input", 4 << 16)).unwrap();
    let (_, code, msg) = read_error_then_eof(&mut s);
    assert_eq!(code, "0A000", "{msg}");
    assert!(msg.contains("unsupported frontend protocol 4.0"), "{msg}");
    check_good("protocol version");

    // A startup packet cut short: the login timeout ends it with a clear error.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&startup(USER, "bad_input", 196608)[..12]).unwrap();
    let (_, code, msg) = read_error_then_eof(&mut s);
    assert_eq!(code, "08006", "{msg}");
    check_good("truncated startup");

    // A 2 GB length prefix after login.
    let mut s = logged_in(port, "bad_input");
    s.write_all(&[b'Q', 0x7f, 0xff, 0xff, 0xf0]).unwrap();
    let (sev, code, msg) = read_error_then_eof(&mut s);
    assert_eq!((sev.as_str(), code.as_str()), ("FATAL", "08P01"), "{msg}");
    assert!(msg.contains("message length 2147483632 exceeds the limit"), "the length as sent: {msg}");
    check_good("2 GB length");

    // A message type PostgreSQL does not know: its own FATAL, from the proxy, before any server
    // connection sees (and drops over) it.
    let mut s = logged_in(port, "bad_input");
    s.write_all(&[b'Y', 0, 0, 0, 4]).unwrap();
    let (sev, code, msg) = read_error_then_eof(&mut s);
    assert_eq!((sev.as_str(), code.as_str(), msg.as_str()), ("FATAL", "08P01", "invalid frontend message type 89"));
    check_good("unknown message type");
    // The same inside a transaction: the server connection it held is not handed on dirty.
    let mut s = logged_in(port, "bad_input");
    s.write_all(&[&b"Q\0\0\0\x0aBEGIN\0"[..]].concat()).unwrap();
    read_until(&mut s, &[b'Z', 0, 0, 0, 5, b'T']);
    s.write_all(&[b'p', 0, 0, 0, 4]).unwrap(); // a password message after login
    let (sev, code, msg) = read_error_then_eof(&mut s);
    assert_eq!((sev.as_str(), code.as_str(), msg.as_str()), ("FATAL", "08P01", "invalid frontend message type 112"));
    check_good("unknown message type in a transaction");

    // A startup packet over proxy.max_startup_packet_size (PostgreSQL's 10000 by default).
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let packet = startup_packet(196608, &[("user", USER), ("application_name", &"x".repeat(20_000))]);
    s.write_all(&packet).unwrap();
    let (sev, code, msg) = read_error_then_eof(&mut s);
    assert_eq!((sev.as_str(), code.as_str()), ("FATAL", "08P01"), "{msg}");
    let expected = format!("startup packet length {} exceeds the limit of 10000 bytes", packet.len());
    assert!(msg.contains(&expected), "{msg}");
    check_good("long startup packet");

    // A length below the header size.
    let mut s = logged_in(port, "bad_input");
    s.write_all(&[b'Q', 0, 0, 0, 2]).unwrap();
    let (_, code, msg) = read_error_then_eof(&mut s);
    assert_eq!(code, "08P01", "{msg}");
    check_good("short length");

    // A message cut short, then the client hangs up: the proxy just closes.
    let mut s = logged_in(port, "bad_input");
    s.write_all(&[b'Q', 0, 0, 0, 100, b'S', b'E', b'L']).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.read_to_end(&mut rest).unwrap();
    check_good("truncated message");

    // A wrong password (SCRAM).
    let out = p.psql_as(USER, "not-the-password", "bad_input", &["-c", "SELECT 1"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("password authentication failed"));
    check_good("wrong password");

    // The proxy is still healthy for new clients and counted the protocol errors.
    assert_eq!(ok(p.psql("bad_input", &["-c", "SELECT 'fine'"], None)).trim(), "fine");
    assert!(metric_sum(&p.metrics(), "pgcausal_errors_total{class=\"08\",source=\"proxy\"}") >= 1.0);
}

/// A client that pipelines far more than the socket buffers hold and reads nothing until it has
/// written everything still gets every answer, as it would from PostgreSQL itself: the proxy
/// goes back to reading it after each answer. (Answers must fit the buffers: with answers that
/// do not, such a client deadlocks against PostgreSQL too.)
#[test]
fn a_client_that_writes_everything_before_reading_gets_every_answer() {
    let cluster = shared_cluster();
    cluster.create_database("pipeline_flood");
    let p = ProxyProcess::start(cluster, ProxyOptions::default());
    let s = logged_in(p.port, "pipeline_flood");
    // 20 MB of queries, far more than the kernel buffers; 120 kB of answers, which they hold.
    const QUERIES: usize = 2_000;
    let pad = "x".repeat(10_000);
    let mut batch = Vec::new();
    for _ in 0..QUERIES {
        let sql = format!("SELECT 1 /* {pad} */\0");
        batch.push(b'Q');
        batch.extend(((sql.len() + 4) as u32).to_be_bytes());
        batch.extend(sql.as_bytes());
    }
    let mut writer = s.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(writer.write_all(&batch).map(|_| batch.len())));
    let written = rx.recv_timeout(Duration::from_secs(60)).expect("writing hung: the proxy stopped reading");
    assert!(written.is_ok(), "{written:?}");
    // Now read every answer: one ReadyForQuery per query, no errors.
    let mut s = s;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (mut buf, mut ready, mut errors) = (Vec::new(), 0, 0);
    let mut chunk = vec![0u8; 256 * 1024];
    while ready < QUERIES {
        let n = s.read(&mut chunk).expect("answers stopped");
        assert!(n > 0, "closed after {ready} answers");
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while buf.len() - at >= 5 {
            let len = u32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap()) as usize;
            if buf.len() - at < len + 1 {
                break;
            }
            match buf[at] {
                b'Z' => ready += 1,
                b'E' => errors += 1,
                _ => {}
            }
            at += len + 1;
        }
        buf.drain(..at);
    }
    assert_eq!(errors, 0);
}

/// The value of the proxy's errors counter for SQLSTATE class `class` (0 before the first).
fn proxy_errors(p: &ProxyProcess, class: &str) -> f64 {
    let labels = format!("pgcausal_errors_total{{class=\"{class}\",source=\"proxy\"}}");
    p.metrics().lines().find_map(|l| l.strip_prefix(labels.as_str())?.trim().parse().ok()).unwrap_or(0.0)
}

/// Waits up to 20 s for `done` to hold over the proxy's log; panics with the log otherwise.
fn wait_for_log(p: &ProxyProcess, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = p.log();
        if done(&log) {
            return log;
        }
        assert!(std::time::Instant::now() < deadline, "no {what} in pgcausal's log:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A server login that fails (a [[users]] password that is not the server role's) is logged once
/// per node at warn, with PostgreSQL's own message and SQLSTATE, however often clients retry,
/// and its end at info; connections closed before a startup packet (a load balancer's checks)
/// are not logged at info.
#[test]
fn server_login_failures_are_logged_once_with_postgresqls_message() {
    let cluster = shared_cluster();
    cluster.sql(0, "postgres", "DROP ROLE IF EXISTS wrongpw; CREATE ROLE wrongpw LOGIN PASSWORD 'server-side'");
    cluster.create_database("bad_input_logs"); // also waits for the role to reach the followers
    let extra = "[[users]]\nname = \"wrongpw\"\npassword = \"proxy-side\"\n".to_string();
    let p = ProxyProcess::start(cluster, ProxyOptions { extra, ..Default::default() });
    let failed = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("server connection failed") && l.contains("user=wrongpw"))
            .map(str::to_string)
            .collect()
    };
    for attempt in 0..3 {
        let out = p.psql_as("wrongpw", "proxy-side", "bad_input_logs", &["-c", "SELECT 1"], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("password authentication failed"),
            "attempt {attempt}: {stderr}"
        );
    }
    let log = wait_for_log(&p, "warn line for the failed server login", |log| !failed(log).is_empty());
    let lines = failed(&log);
    for line in &lines {
        assert!(line.contains("WARN") && line.contains("sqlstate=28P01") && line.contains("purpose=pool"), "{line}");
        assert!(line.contains("error=password authentication failed for user \"wrongpw\""), "{line}");
        assert!(!line.contains("proxy-side") && !line.contains("server-side"), "a password in the log: {line}");
        assert!(!line.contains('\u{1b}'), "ANSI codes in a log file: {line}");
    }
    for node in ["node0", "node1", "node2"] {
        let count = lines.iter().filter(|l| l.contains(&format!("node={node} "))).count();
        assert!(count <= 1, "{node}'s failure logged {count} times over 3 attempts:\n{log}");
    }
    assert!(lines.iter().any(|l| l.contains("node=node")), "{lines:?}");

    // The server's password changes to the configured one: the next login works, logged at info.
    cluster.sql(0, "postgres", "ALTER ROLE wrongpw PASSWORD 'proxy-side'");
    p.wait_for_followers();
    let out = p.psql_as("wrongpw", "proxy-side", "bad_input_logs", &["-c", "SELECT 1"], None);
    assert_eq!(ok(out).trim(), "1");
    wait_for_log(&p, "recovery line", |log| {
        log.lines()
            .any(|l| l.contains("INFO") && l.contains("server connection works again") && l.contains("user=wrongpw"))
    });

    // TCP connects closed before any byte: counted, not logged at info.
    let before = proxy_errors(&p, "08");
    let peers: Vec<String> = (0..3)
        .map(|_| {
            let s = TcpStream::connect(("127.0.0.1", p.port)).unwrap();
            s.local_addr().unwrap().to_string()
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while proxy_errors(&p, "08") < before + 3.0 {
        assert!(std::time::Instant::now() < deadline, "the proxy did not see the 3 closed connects");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = p.log();
    for peer in &peers {
        assert!(!log.contains(peer.as_str()), "a connect closed before its startup packet was logged:\n{log}");
    }
}
