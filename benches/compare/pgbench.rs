//! Running pgbench against one target and reading what it reports: TPS, failed transactions,
//! errors, and per-transaction latencies from its sampled `--log` files.

use crate::targets::{Env, DB, PASSWORD, USER};
use std::path::Path;
use std::process::Command;

/// A pgbench workload: its label, its clients/threads, and the rest of its arguments.
pub struct Workload {
    pub label: &'static str,
    pub clients: u32,
    pub threads: u32,
    pub args: Vec<String>,
    /// libpq's sslmode: "require" for the TLS workloads (run only against targets that
    /// terminate TLS), "disable" for the rest (libpq's default, prefer, would use TLS too).
    pub sslmode: &'static str,
}

/// The same workloads for every target. `script` is the 90/10 custom script's path.
pub fn workloads(script: &Path) -> Vec<Workload> {
    let w = |label: &'static str, clients, threads, args: &[&str]| Workload {
        label,
        clients,
        threads,
        args: args.iter().map(|s| s.to_string()).collect(),
        sslmode: if label.contains("TLS") { "require" } else { "disable" },
    };
    let script = script.to_string_lossy().to_string();
    vec![
        w("select-only -S -M simple", 16, 2, &["-S", "-M", "simple"]),
        w("select-only -S -M extended", 16, 2, &["-S", "-M", "extended"]),
        w("select-only -S -M prepared", 16, 2, &["-S", "-M", "prepared"]),
        w("TPC-B-like -N -M simple", 16, 2, &["-N", "-M", "simple"]),
        w("90/10 read/write -M simple", 16, 2, &["-f", &script, "-M", "simple"]),
        w("latency -S -c 1 -M simple", 1, 1, &["-S", "-M", "simple"]),
        w("TLS select-only -S -M simple", 16, 2, &["-S", "-M", "simple"]),
        w("TLS latency -S -c 1 -M simple", 1, 1, &["-S", "-M", "simple"]),
    ]
}

/// The 90/10 script: every transaction reads one account; one in ten then updates it.
pub const NINETY_TEN: &str = "\\set aid random(1, 1000000)\n\\set r random(1, 10)\n\\set delta random(-5000, 5000)\n\
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n\
\\if :r = 1\nUPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n\\endif\n";

/// One pgbench run's outcome.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub tps: Option<f64>,
    pub failed: u64,
    /// None when pgbench reported success and 0 failed transactions.
    pub error: Option<String>,
    /// Sampled per-transaction latencies, microseconds.
    pub latencies_us: Vec<f64>,
    pub avg_latency_ms: Option<f64>,
}

/// Runs pgbench for `seconds` against `port`; latency samples go through `log_dir`.
pub fn run(env: &Env, port: u16, w: &Workload, seconds: u32, log_dir: &Path, tag: &str) -> RunResult {
    let prefix = log_dir.join(tag);
    let out = Command::new(env.bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER, "-n"])
        .args(["-c", &w.clients.to_string(), "-j", &w.threads.to_string(), "-T", &seconds.to_string()])
        .args(["-l", "--sampling-rate=0.1"])
        .arg(format!("--log-prefix={}", prefix.display()))
        .args(&w.args)
        .arg(DB)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", w.sslmode)
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let mut r = parse(&stdout);
    r.latencies_us = read_logs(log_dir, tag);
    let failed_line = stdout.lines().find(|l| l.starts_with("number of failed transactions"));
    let first_error = stderr
        .lines()
        .find(|l| l.contains("ERROR") || l.contains("FATAL") || l.contains("aborted") || l.contains("error"))
        .map(|l| l.trim().to_string());
    if !out.status.success() || r.failed > 0 || failed_line.is_none() || r.tps.is_none() {
        let mut why = format!("pgbench exit {}", out.status.code().map_or("signal".into(), |c| c.to_string()));
        if r.failed > 0 {
            why += &format!(", {} failed transactions", r.failed);
        }
        if let Some(e) = first_error {
            why += &format!(": {e}");
        } else if let Some(l) = stderr.lines().last() {
            why += &format!(": {}", l.trim());
        }
        r.error = Some(why);
    }
    r
}

fn parse(stdout: &str) -> RunResult {
    let mut r = RunResult::default();
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("tps = ") {
            r.tps = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if let Some(rest) = line.strip_prefix("number of failed transactions: ") {
            r.failed = rest.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("latency average = ") {
            r.avg_latency_ms = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        }
    }
    r
}

/// Reads and deletes `log_dir/tag.*` (one file per pgbench thread). Each line is
/// `client_id transaction_no time_us script_no epoch epoch_us ...`; skipped/failed transactions
/// have a word in place of the time and are left out.
fn read_logs(log_dir: &Path, tag: &str) -> Vec<f64> {
    let mut v = Vec::new();
    let want = format!("{tag}.");
    for entry in std::fs::read_dir(log_dir).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&want) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            v.extend(text.lines().filter_map(|l| l.split(' ').nth(2)?.parse::<f64>().ok()));
        }
        let _ = std::fs::remove_file(entry.path());
    }
    v
}

/// The q-quantile (0..=1) of already sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

pub fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    quantile(&s, 0.5)
}

/// `pgbench -i -s scale` on the leader.
pub fn init(env: &Env, scale: u32) {
    let out = Command::new(env.bin("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), "-h", "127.0.0.1", "-p", &env.leader_port().to_string()])
        .args(["-U", USER, DB])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("pgbench -i");
    assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
}

/// `pgbench -S -c 1 -t n -M simple` (for the instruction counts); Err on any failure.
pub fn fixed_count(env: &Env, port: u16, n: u32, mode: &str) -> Result<(), String> {
    let out = Command::new(env.bin("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER, "-n", "-S", "-M", mode])
        .args(["-c", "1", "-j", "1", "-t", &n.to_string(), DB])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r = parse(&stdout);
    if out.status.success() && r.failed == 0 && stdout.contains(&format!("actually processed: {n}/{n}")) {
        Ok(())
    } else {
        Err(format!("{}\n{}", stdout.trim(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}
