//! Per-query cost: user-space instructions per `pgbench -S` query under callgrind, and resident
//! memory with 1000 idle clients.

use crate::pgbench;
use crate::procs::{rss_kib, Service};
use crate::targets::{Env, DB, PASSWORD, USER};
use std::time::{Duration, Instant};

/// Instruction counts of two proxy runs that differ only in the number of queries.
pub struct IrResult {
    pub small: (u32, u64),
    pub large: (u32, u64),
    /// Both runs were counted for this long (from readiness, counters zeroed, to an explicit
    /// dump), so timer-driven background work (monitor probes, LSN polling) is about the same in
    /// both and cancels out in the difference.
    pub window: Duration,
    /// Functions by exclusive Ir per query (large run minus small run, divided by the difference
    /// in queries): where the per-query instructions go.
    pub top: Vec<(String, f64)>,
    /// Counted from process start (callgrind_control could not reach the process), not from the
    /// end of the warm-up; start-up work then cancels out only if it is the same in both runs.
    pub whole_run: bool,
    /// Part of `per_query()` spent in SCRAM key derivation: a server connection opened during one
    /// window and not the other (a login, not per-query work).
    pub login_per_query: f64,
    /// Server logins pgcausal counted during each window (large, small), from its /metrics.
    pub logins: (Option<f64>, Option<f64>),
}

/// Starts a proxy (tag, wrapper command) and returns it with its metrics port, if it has one.
pub type StartProxy<'a> = &'a dyn Fn(&str, &[&str]) -> (Service, Option<u16>);

/// Queries run before counting starts.
pub const WARMUP: u32 = 200;

impl IrResult {
    pub fn per_query(&self) -> f64 {
        (self.large.1 as f64 - self.small.1 as f64) / (self.large.0 - self.small.0) as f64
    }
}

/// Starts a proxy under `valgrind --tool=callgrind` once per count (largest first), runs
/// `pgbench -S -c 1 -t n -M mode` through it with callgrind's counters zeroed at readiness,
/// idles until the common window has passed, dumps the counters and reads their total Ir.
pub fn callgrind(
    env: &Env,
    name: &str,
    counts: (u32, u32),
    mode: &str,
    start: StartProxy,
    keep: Option<&std::path::Path>,
) -> Result<IrResult, String> {
    let (small, large) = counts;
    let mut window: Option<Duration> = None;
    let mut totals = Vec::new();
    let mut profiles = Vec::new();
    let mut whole_run = false;
    let mut logins = Vec::new();
    for n in [large, small] {
        let out = env.dir.join(format!("callgrind-{name}-{n}.out"));
        let out_arg = format!("--callgrind-out-file={}", out.display());
        let wrapper = [
            "valgrind",
            "--tool=callgrind",
            "--dump-instr=no",
            "--compress-strings=no",
            "--compress-pos=no",
            "--trace-children=no",
            out_arg.as_str(),
        ];
        let (mut svc, metrics) = start(&format!("cg{n}"), &wrapper);
        let connects = || metrics.map(|port| crate::counter_sum(port, "pgcausal_server_connects_total"));
        // A warm-up run opens the proxy's server connections (each a SCRAM login costing tens of
        // millions of instructions) and initialises whatever is lazy; then the counters are zeroed,
        // so only the measured run and the window's background work are counted.
        if let Err(e) = pgbench::fixed_count(env, svc.port, WARMUP, mode) {
            return Err(format!("warm-up through {name} under callgrind failed: {e}\n{}", svc.log_tail(20)));
        }
        let zeroed = zeroable(&svc) && control(&svc, "-z").map_err(|e| eprintln!("compare: {e}")).is_ok();
        if !zeroed {
            whole_run = true;
        }
        let connects_before = connects();
        let t0 = Instant::now();
        let run = pgbench::fixed_count(env, svc.port, n, mode);
        let w = *window.get_or_insert_with(|| t0.elapsed() + Duration::from_secs(3));
        if let Err(e) = run {
            return Err(format!("pgbench -t {n} through {name} under callgrind failed: {e}\n{}", svc.log_tail(20)));
        }
        if t0.elapsed() > w {
            eprintln!("compare: {name} -t {n} under callgrind outran the window ({:?} > {w:?})", t0.elapsed());
        }
        std::thread::sleep(w.saturating_sub(t0.elapsed()));
        if zeroed {
            control(&svc, "-d")?;
        }
        logins.push(connects().zip(connects_before).map(|(a, b)| a - b));
        svc.stop_within(Duration::from_secs(120));
        // The explicit dump is part 1 (the dump at exit, shutdown work, is not counted); without
        // callgrind_control the whole run, start-up included, is in the file named.
        let part =
            if zeroed { out.with_file_name(format!("{}.1", out.file_name().unwrap().to_string_lossy())) } else { out };
        let text =
            std::fs::read_to_string(&part).map_err(|e| format!("{}: {e}\n{}", part.display(), svc.log_tail(20)))?;
        let total = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or_else(|| format!("no totals line in {}", part.display()))?;
        eprintln!("compare: callgrind {name} -t {n}: {total} Ir in {:.1}s window", w.as_secs_f64());
        totals.push((n, total));
        if let Some(keep) = keep {
            let _ = std::fs::create_dir_all(keep);
            let _ = std::fs::copy(&part, keep.join(part.file_name().unwrap()));
        }
        let out = part;
        profiles.push(function_profile(&out));
    }
    let functions: std::collections::HashSet<&String> = profiles[0].keys().chain(profiles[1].keys()).collect();
    let ir = |p: &std::collections::HashMap<String, u64>, f: &String| *p.get(f).unwrap_or(&0) as f64;
    let mut top: Vec<(String, f64)> = functions
        .into_iter()
        .map(|f| (f.clone(), (ir(&profiles[0], f) - ir(&profiles[1], f)) / (large - small) as f64))
        .collect();
    top.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let login_per_query = top.iter().filter(|(f, _)| is_login_work(f)).map(|(_, ir)| ir).sum();
    top.truncate(15);
    Ok(IrResult {
        large: totals[0],
        small: totals[1],
        window: window.unwrap(),
        top,
        whole_run,
        login_per_query,
        logins: (logins[0], logins[1]),
    })
}

/// Functions that only run for a login (SCRAM key derivation: PBKDF2 over SHA-256 and HMAC).
fn is_login_work(function: &str) -> bool {
    ["sha2::", "sasl::hi", "hmac::", "pbkdf2", "digest::"].iter().any(|p| function.contains(p))
}

/// Whether callgrind_control (vgdb) can talk to the process: here it hangs on processes running
/// as another user (PgBouncer runs as postgres), so only our own uid's are tried.
fn zeroable(svc: &Service) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{}/status", svc.pid())).unwrap_or_default();
    let uid =
        status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok());
    // SAFETY: getuid has no preconditions.
    uid == Some(unsafe { libc::getuid() })
}

/// `callgrind_control OPTION PID` (-z: zero the counters, -d: dump them to the next part file),
/// given up (its process group killed) after 30 s.
fn control(svc: &Service, option: &str) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new("callgrind_control")
        .arg(option)
        .arg(svc.pid().to_string())
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("callgrind_control: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            // SAFETY: the process group of our own child (callgrind_control and its vgdb).
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            return Err(format!("callgrind_control {option} {} hung; killed", svc.pid()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("OK") {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {option} {} failed: {}{}",
            svc.pid(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Exclusive Ir per function, read from a callgrind file written with uncompressed names and
/// positions: a cost line adds to the current `fn=`, except the line after `calls=`, which is the
/// inclusive cost of a call.
fn function_profile(out: &std::path::Path) -> std::collections::HashMap<String, u64> {
    let mut map = std::collections::HashMap::new();
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut current = String::new();
    let mut call_cost = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("fn=") {
            current = name.to_string();
        } else if line.starts_with("calls=") {
            call_cost = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-' || c == '*') {
            if std::mem::take(&mut call_cost) {
                continue;
            }
            if let Some(ir) = line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()) {
                *map.entry(current.clone()).or_insert(0) += ir;
            }
        }
    }
    map
}

/// RSS of a proxy (KiB): after start, with `n` clients logged in and idle, after each of them ran
/// one `SELECT 1` (still connected, idle), and peak (VmHWM).
pub struct RssResult {
    pub clients: usize,
    pub connected: usize,
    pub base: u64,
    pub idle: u64,
    pub after_query: u64,
    pub peak: u64,
    pub error: Option<String>,
}

pub fn idle_rss(svc: &Service, n: usize) -> RssResult {
    let pid = svc.pid();
    let base = rss_kib(pid).map(|r| r.0).unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let port = svc.port;
    rt.block_on(async move {
        use futures::StreamExt;
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(USER)
            .password(PASSWORD)
            .dbname(DB)
            .connect_timeout(Duration::from_secs(60));
        let results: Vec<_> = futures::stream::iter(0..n)
            .map(|_| {
                let config = config.clone();
                async move {
                    let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                    let task = tokio::spawn(conn);
                    Ok::<_, tokio_postgres::Error>((client, task))
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut error = None;
        let mut clients = Vec::new();
        for r in results {
            match r {
                Ok(c) => clients.push(c),
                Err(e) => {
                    error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = rss_kib(pid).map(|r| r.0).unwrap_or(0);
        let queries: Vec<_> = futures::stream::iter(clients.iter())
            .map(|(c, _)| async move { c.simple_query("SELECT 1").await })
            .buffer_unordered(32)
            .collect()
            .await;
        if let Some(Err(e)) = queries.into_iter().find(|q| q.is_err()) {
            error.get_or_insert_with(|| format!("SELECT 1: {e}"));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (after_query, peak) = rss_kib(pid).unwrap_or((0, 0));
        let connected = clients.len();
        drop(clients);
        RssResult { clients: n, connected, base, idle, after_query, peak, error }
    })
}
