//! The command line: check-config reports bad files by file, key and reason.

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
