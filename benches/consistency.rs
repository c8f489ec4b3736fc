//! The cost of session consistency: pgbench through pgcausal at `causal` (both ways of learning a
//! write's position) against `eventual`, interleaved round by round on one cluster.
//!
//! Run: `cargo bench --bench consistency` (`-- --quick` for a short run). Prints median TPS, the
//! ratio to eventual, and the share of units served by followers.

use pgcausal::cluster::{Cluster, ClusterSpec, UserSpec};
use std::process::{Child, Command};
use std::time::Duration;

struct Proxy {
    name: &'static str,
    child: Child,
    port: u16,
    metrics: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_proxy(name: &'static str, cluster: &Cluster, dir: &std::path::Path, consistency: &str) -> Proxy {
    let (port, metrics) = (free_port(), free_port());
    let mut config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[pool]\nsize = 16\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n{consistency}\n"
    );
    for n in cluster.nodes() {
        config += &format!("[[nodes]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\n", n.name, n.port);
    }
    config += "[[users]]\nname = \"app\"\npassword = \"secret\"\n";
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pgcausal"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("PGCAUSAL_LOG", "warn")
        .spawn()
        .unwrap();
    let proxy = Proxy { name, child, port, metrics };
    for _ in 0..100 {
        if psql(proxy.port, "SELECT 1").is_some() {
            return proxy;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{name} did not start");
}

fn psql(port: u16, sql: &str) -> Option<String> {
    let out = Command::new(bin("psql"))
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app", "-d", "postgres", "-c", sql])
        .env("PGPASSWORD", "secret")
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn bin(name: &str) -> std::path::PathBuf {
    pgcausal::cluster::find_pg_bindir().unwrap().join(name)
}

/// Units leased to (followers, leader) so far, from /metrics.
fn routed(metrics_port: u16) -> (f64, f64) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let sum = |target: &str| -> f64 {
        body.lines()
            .filter(|l| l.starts_with("pgcausal_routed_total") && l.contains(&format!("target=\"{target}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (sum("follower"), sum("leader"))
}

fn pgbench(port: u16, args: &[&str], seconds: u32) -> f64 {
    let out = Command::new(bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "app", "-n", "-c", "16", "-j", "2"])
        .args(["-T", &seconds.to_string()])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", "secret")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgbench {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("number of failed transactions: 0"), "{text}");
    text.lines()
        .find(|l| l.starts_with("tps"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .expect("tps line")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, seconds) = if quick { (1, 3) } else { (3, 8) };
    let dir = tempfile::tempdir().unwrap();
    let mut spec = ClusterSpec::new(dir.path().join("cluster"));
    let mut app = UserSpec::new("app", "secret");
    app.superuser = true;
    spec.users = vec![app];
    let cluster = Cluster::start(spec).expect("cluster");
    let leader = cluster.port(0);
    let init = Command::new(bin("pgbench"))
        .args(["-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p", &leader.to_string(), "-U", "app", "postgres"])
        .env("PGPASSWORD", "secret")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    cluster.wait_replicated(Duration::from_secs(60)).unwrap();
    let script = dir.path().join("ninety_ten.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 1000000)\n\\set r random(1, 10)\n\\set delta random(-5000, 5000)\n\
         SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
         \\if :r = 1\nUPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\\endif\n",
    )
    .unwrap();
    let proxies = [
        start_proxy("eventual", &cluster, dir.path(), "[consistency]\nlevel = \"eventual\""),
        start_proxy("causal (probe)", &cluster, dir.path(), "[consistency]\nlevel = \"causal\"\nwrite_lsn = \"probe\""),
        start_proxy(
            "causal (same connection)",
            &cluster,
            dir.path(),
            "[consistency]\nlevel = \"causal\"\nwrite_lsn = \"same_connection\"",
        ),
        start_proxy(
            "causal (probe, no wait)",
            &cluster,
            dir.path(),
            "[consistency]\nlevel = \"causal\"\nwait_timeout = \"0ms\"",
        ),
    ];
    let script = script.to_string_lossy().to_string();
    let workloads: [(&str, Vec<&str>); 3] = [
        ("select-only -S -M prepared", vec!["-S", "-M", "prepared"]),
        ("90/10 read/write -M prepared", vec!["-f", &script, "-M", "prepared"]),
        ("write-heavy -N -M prepared", vec!["-N", "-M", "prepared"]),
    ];
    println!("pgcausal consistency cost: 16 clients, {seconds}s runs, {rounds} interleaved rounds, scale 10");
    println!(
        "{:<30} {:<26} {:>10} {:>8} {:>10} {:>14}",
        "workload", "variant", "median tps", "min", "max", "follower share"
    );
    for (label, args) in &workloads {
        let mut results: Vec<(Vec<f64>, f64, f64)> = proxies.iter().map(|_| (Vec::new(), 0.0, 0.0)).collect();
        for _ in 0..rounds {
            for (i, p) in proxies.iter().enumerate() {
                let before = routed(p.metrics);
                results[i].0.push(pgbench(p.port, args, seconds));
                let after = routed(p.metrics);
                results[i].1 += after.0 - before.0;
                results[i].2 += after.1 - before.1;
            }
        }
        let baseline = median(results[0].0.clone());
        for (p, (tps, followers, leader)) in proxies.iter().zip(results) {
            let m = median(tps.clone());
            let (min, max) = tps.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
            let share = followers / (followers + leader).max(1.0);
            println!(
                "{label:<30} {:<26} {m:>10.0} {min:>8.0} {max:>10.0} {:>13.1}%   ({:.2}x eventual)",
                p.name,
                share * 100.0,
                m / baseline
            );
        }
    }
}
