//! Side by side: the same pgbench workloads against the leader directly, pgcausal, PgBouncer and
//! Pgpool-II (and, when asked, the tokio floor: floor.rs), interleaved round by round on one
//! leader + 2 followers cluster; then the proxies' instructions per query (callgrind, the floor
//! included) and memory with 1000 idle clients.
//!
//! Run through `benches/compare/run` (installs PgBouncer, Pgpool-II and valgrind), or
//! `cargo bench --bench compare -- [--quick] [--no-cost] [--rounds N] [--seconds N]
//! [--workload SUBSTR]... [--target NAME]...`. See benches/compare/README.md.

mod cost;
mod floor;
mod pgbench;
mod procs;
mod targets;

use pgbench::{median, quantile, RunResult, Workload};
use pgcausal::cluster::{Cluster, ClusterSpec, UserSpec};
use procs::{raise_nofile, RunAs};
use std::time::{Duration, Instant};
use targets::{Env, Target};

struct Options {
    quick: bool,
    rounds: u32,
    seconds: u32,
    cost: bool,
    load: bool,
    workloads: Vec<String>,
    targets: Vec<String>,
    /// Copy callgrind's output files here (for callgrind_annotate / kcachegrind).
    keep_callgrind: Option<std::path::PathBuf>,
    rss: bool,
    /// pgcausal's `proxy.threads`.
    threads: Option<usize>,
    /// pgbench's -M for the cost section: simple (default), extended or prepared.
    cost_mode: String,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Options {
        quick,
        rounds: if quick { 1 } else { 3 },
        seconds: if quick { 3 } else { 8 },
        cost: true,
        load: true,
        workloads: Vec::new(),
        targets: Vec::new(),
        keep_callgrind: None,
        rss: true,
        threads: None,
        cost_mode: "simple".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--rounds" => o.rounds = value().parse().expect("--rounds N"),
            "--seconds" => o.seconds = value().parse().expect("--seconds N"),
            "--workload" => o.workloads.push(value()),
            "--target" => o.targets.push(value()),
            "--no-cost" => o.cost = false,
            "--cost" => o.cost = true,
            "--cost-only" => o.load = false,
            "--no-rss" => o.rss = false,
            "--threads" => o.threads = Some(value().parse().expect("--threads N")),
            "--cost-mode" => o.cost_mode = value(),
            "--keep-callgrind" => o.keep_callgrind = Some(value().into()),
            _ => {} // --quick, and the --bench cargo passes
        }
    }
    o
}

/// Everything measured for one (workload, target) pair.
#[derive(Default)]
struct Cell {
    runs: Vec<RunResult>,
    /// pgcausal only: /metrics counter increases over this cell's runs.
    counters: std::collections::BTreeMap<String, f64>,
}

impl Cell {
    fn ok_tps(&self) -> Vec<f64> {
        self.runs.iter().filter(|r| r.error.is_none()).filter_map(|r| r.tps).collect()
    }
    fn median_tps(&self) -> Option<f64> {
        median(&self.ok_tps())
    }
    /// Median over successful rounds of pgbench's own "latency average" (ms).
    fn avg_latency(&self) -> Option<f64> {
        median(&self.runs.iter().filter(|r| r.error.is_none()).filter_map(|r| r.avg_latency_ms).collect::<Vec<_>>())
    }
    fn counter(&self, prefix: &str, label: &str) -> f64 {
        // + 0.0 turns an empty sum's -0 into 0.
        self.counters.iter().filter(|(k, _)| k.starts_with(prefix) && k.contains(label)).map(|(_, v)| v).sum::<f64>()
            + 0.0
    }
    fn errors(&self) -> Vec<&str> {
        self.runs.iter().filter_map(|r| r.error.as_deref()).collect()
    }
    /// p50 and p99 of every sampled transaction of the successful rounds (ms).
    fn percentiles(&self) -> (Option<f64>, Option<f64>) {
        let mut all: Vec<f64> =
            self.runs.iter().filter(|r| r.error.is_none()).flat_map(|r| r.latencies_us.iter().copied()).collect();
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (quantile(&all, 0.5).map(|v| v / 1000.0), quantile(&all, 0.99).map(|v| v / 1000.0))
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo bench --list
    }
    if floor::serve_if_asked() {
        return;
    }
    let o = options();
    let started = Instant::now();
    let nofile = raise_nofile();
    let dir = tempfile::Builder::new().prefix("pgcausal-compare-").tempdir().expect("tempdir");
    let run_as = RunAs::detect();
    let svc_dir = dir.path().join("svc");
    std::fs::create_dir(&svc_dir).unwrap();
    procs::chown(run_as, &svc_dir);
    let log_dir = dir.path().join("pgbench-logs");
    std::fs::create_dir(&log_dir).unwrap();

    let mut spec = ClusterSpec::new(dir.path().join("cluster"));
    let mut app = UserSpec::new(targets::USER, targets::PASSWORD);
    app.superuser = true;
    spec.users = vec![app];
    let cluster = Cluster::start(spec).expect("cluster starts");
    let tls = tls_files(run_as, &svc_dir);
    let env = Env {
        bindir: cluster.bindir().to_path_buf(),
        dir: svc_dir,
        run_as,
        nodes: cluster.nodes().into_iter().map(|n| (n.name, n.port)).collect(),
        proxy_threads: o.threads,
        tls,
    };
    eprintln!("compare: cluster up ({:?}); pgbench -i -s 10", env.nodes);
    pgbench::init(&env, 10);
    cluster.wait_replicated(Duration::from_secs(120)).expect("followers replay the pgbench tables");
    let script = dir.path().join("ninety_ten.sql");
    std::fs::write(&script, pgbench::NINETY_TEN).unwrap();
    let mut versions = vec![
        ("PostgreSQL", env.psql(env.leader_port(), "SHOW server_version").unwrap_or_default()),
        ("pgbench", tool_version(&env.bin("pgbench").to_string_lossy(), "--version")),
        ("PgBouncer", tool_version(&targets::pgbouncer_bin().to_string_lossy(), "--version")),
        ("Pgpool-II", tool_version(&targets::pgpool_bin().to_string_lossy(), "--version")),
    ];
    if o.cost {
        versions.push(("valgrind", tool_version("valgrind", "--version")));
    }

    println!("pgcausal side-by-side benchmark ({})", if o.quick { "--quick" } else { "default" });
    println!(
        "machine: {} CPUs, load average at start {}; open-file limit {nofile}",
        num_cpus(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
    println!("{}", versions.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join("; "));

    println!("setup (cluster, pgbench -i -s 10, replication): {:.0}s", started.elapsed().as_secs_f64());
    if o.load {
        let t = Instant::now();
        load(&o, &env, &log_dir, &script);
        println!("load section: {:.0}s", t.elapsed().as_secs_f64());
    }
    if o.cost {
        let t = Instant::now();
        cost(&o, &env);
        println!("cost section: {:.0}s", t.elapsed().as_secs_f64());
    }
    drop(cluster);
    println!("\ntotal time {:.0}s", started.elapsed().as_secs_f64());
}

/// A self-signed certificate for 127.0.0.1 and its key, as PEM files in `dir` (owned by `run_as`,
/// which PgBouncer runs as).
fn tls_files(run_as: Option<RunAs>, dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .and_then(|p| p.self_signed(&key))
        .expect("certificate");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    procs::write_owned(run_as, &cert_path, &cert.pem());
    procs::write_owned(run_as, &key_path, &key.serialize_pem());
    (cert_path, key_path)
}

fn load(o: &Options, env: &Env, log_dir: &std::path::Path, script: &std::path::Path) {
    let workloads: Vec<Workload> = pgbench::workloads(script)
        .into_iter()
        .filter(|w| o.workloads.is_empty() || o.workloads.iter().any(|s| w.label.contains(s.as_str())))
        .collect();
    let wanted = |name: &str| o.targets.is_empty() || name == "direct" || o.targets.iter().any(|t| t == name);
    let mut targets: Vec<Target> = vec![targets::direct(env)];
    if wanted("pgcausal") {
        targets.push(targets::pgcausal(env));
    }
    if wanted("pgcausal-leader") {
        targets.push(targets::pgcausal_leader(env));
    }
    if wanted("pgbouncer") {
        targets.push(targets::pgbouncer(env));
    }
    if wanted("pgpool") {
        targets.push(targets::pgpool(env));
    }
    // Opt-in: a measuring stick, not a product (see floor.rs).
    if o.targets.iter().any(|t| t == "tokio-floor") {
        targets.push(floor::target(env));
    }
    let mut cells: Vec<Vec<Cell>> =
        workloads.iter().map(|_| targets.iter().map(|_| Cell::default()).collect()).collect();
    println!(
        "\nload: {} rounds x {} workloads x {} targets, {}s per run, interleaved (round by round: every workload, \
         each against {}); scale 10, -j 2 for 16 clients",
        o.rounds,
        workloads.len(),
        targets.len(),
        o.seconds,
        targets.iter().map(|t| t.name).collect::<Vec<_>>().join(" "),
    );
    for round in 0..o.rounds {
        for (wi, w) in workloads.iter().enumerate() {
            for (ti, t) in targets.iter_mut().enumerate() {
                if let Some(svc) = t.service.as_mut() {
                    if !svc.is_running() {
                        cells[wi][ti].runs.push(RunResult {
                            error: Some(format!("{} is not running", t.name)),
                            ..Default::default()
                        });
                        continue;
                    }
                }
                if w.sslmode == "require" && !t.tls {
                    continue; // it does not terminate TLS: no cell
                }
                let tag = format!("r{round}-w{wi}-{}", t.name);
                let before = t.metrics_port.map(scrape);
                let r = pgbench::run(env, t.port, w, o.seconds, log_dir, &tag);
                if let (Some(before), Some(port)) = (before, t.metrics_port) {
                    for (k, v) in scrape(port) {
                        let b = before.iter().find(|(bk, _)| *bk == k).map_or(0.0, |(_, bv)| *bv);
                        *cells[wi][ti].counters.entry(k).or_default() += v - b;
                    }
                }
                let samples = r.latencies_us.len();
                eprintln!(
                    "compare: round {}/{} {:<28} {:<10} {:>9} tps, avg {} ms, {samples} samples (mean {:.3} ms){}",
                    round + 1,
                    o.rounds,
                    w.label,
                    t.name,
                    r.tps.map_or("-".into(), |v| format!("{v:.0}")),
                    r.avg_latency_ms.map_or("-".into(), |v| format!("{v:.3}")),
                    r.latencies_us.iter().sum::<f64>() / samples.max(1) as f64 / 1000.0,
                    r.error.as_ref().map_or(String::new(), |e| format!("  FAILED: {e}"))
                );
                cells[wi][ti].runs.push(r);
            }
        }
    }
    report(o, &workloads, &targets, &cells);
    if let Some(pc) = targets.iter().position(|t| t.metrics_port.is_some()) {
        pgcausal_counters(&workloads, &cells, pc);
    }
    for t in &targets {
        if let Some(svc) = &t.service {
            let tail = svc.log_tail(8);
            if tail.trim().is_empty() {
                println!("\n{} log: empty (nothing at its log level)", t.name);
            } else {
                println!("\n{} log (last lines):\n{tail}", t.name);
            }
        }
    }
}

fn report(o: &Options, workloads: &[Workload], targets: &[Target], cells: &[Vec<Cell>]) {
    println!(
        "\nmedian TPS over {} round(s) of {}s; p50/p99 latency from pgbench -l --sampling-rate 0.1 (all rounds pooled); \
         ratios are of median TPS",
        o.rounds, o.seconds
    );
    println!(
        "{:<28} {:<10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}  status",
        "workload", "target", "tps", "min", "max", "p50 ms", "p99 ms", "avg ms", "/direct", "/bouncer"
    );
    let bouncer = targets.iter().position(|t| t.name == "pgbouncer");
    let mut notes = Vec::new();
    for (wi, w) in workloads.iter().enumerate() {
        let direct = cells[wi][0].median_tps();
        let bouncer_tps = bouncer.and_then(|b| cells[wi][b].median_tps());
        for (ti, t) in targets.iter().enumerate() {
            let c = &cells[wi][ti];
            let tps = c.median_tps();
            let ok = c.ok_tps();
            let min = ok.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = ok.iter().cloned().fold(0.0, f64::max);
            let (p50, p99) = c.percentiles();
            let ratio = |base: Option<f64>| match (tps, base) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                _ => "-".into(),
            };
            let errors = c.errors();
            let status = if errors.is_empty() {
                "ok".to_string()
            } else {
                notes.push(format!("{} / {}: {}", w.label, t.name, errors[0]));
                format!("FAILED {}/{} runs", errors.len(), c.runs.len())
            };
            let num = |v: Option<f64>, prec: usize| v.map_or("-".into(), |v| format!("{v:.prec$}"));
            println!(
                "{:<28} {:<10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}  {status}",
                w.label,
                t.name,
                num(tps, 0),
                if ok.is_empty() { "-".into() } else { format!("{min:.0}") },
                if ok.is_empty() { "-".into() } else { format!("{max:.0}") },
                num(p50, 3),
                num(p99, 3),
                num(c.avg_latency(), 3),
                ratio(direct),
                ratio(bouncer_tps),
            );
        }
    }
    if !notes.is_empty() {
        println!("\nfailures (first error of each failing cell):");
        for n in notes {
            println!("  {n}");
        }
    }
    // pgcausal's targets against PgBouncer (the README's performance goals).
    let Some(pb) = bouncer else { return };
    for (pc, t) in targets.iter().enumerate().filter(|(_, t)| t.name.starts_with("pgcausal")) {
        versus_bouncer(workloads, cells, pc, pb, t.name);
    }
}

/// One line per workload: a pgcausal target against PgBouncer.
fn versus_bouncer(workloads: &[Workload], cells: &[Vec<Cell>], pc: usize, pb: usize, name: &str) {
    println!("\n{name} vs PgBouncer:");
    for (wi, w) in workloads.iter().enumerate() {
        let (a, b) = (&cells[wi][pc], &cells[wi][pb]);
        let line = if w.clients == 1 {
            match (a.percentiles().0, b.percentiles().0) {
                (Some(x), Some(y)) => {
                    format!("p50 {x:.3} ms vs {y:.3} ms: {}", if x <= y { "ok" } else { "MISS (slower)" })
                }
                _ => "not comparable (a target failed)".into(),
            }
        } else {
            match (a.median_tps(), b.median_tps()) {
                (Some(x), Some(y)) => {
                    format!("{x:.0} vs {y:.0} tps ({:.2}x): {}", x / y, if x >= y { "ok" } else { "MISS (below)" })
                }
                (Some(_), None) => "PgBouncer failed this workload; pgcausal ran it".into(),
                _ => "not comparable (pgcausal failed)".into(),
            }
        };
        println!("  {:<28} {line}", w.label);
    }
}

fn cost(o: &Options, env: &Env) {
    let counts = if o.quick { (200, 1000) } else { (1000, 5000) };
    println!(
        "\ncost: instructions per query = (Ir with {} queries - Ir with {}) / {}, `pgbench -S -c 1 -t N -M {}`, \
         proxy under valgrind --tool=callgrind (all user-space instructions of the proxy process: its code, \
         libc, crypto), each run a fresh start, {} warm-up queries, then the same wall-clock window; below each, the functions \
         taking the most of those per-query instructions (exclusive Ir per query)",
        counts.1,
        counts.0,
        counts.1 - counts.0,
        o.cost_mode,
        cost::WARMUP
    );
    let has_valgrind =
        std::process::Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success());
    if !has_valgrind {
        println!("  valgrind not installed: skipped (benches/compare/run installs it)");
    } else {
        // Probe timeouts are raised under callgrind only, so a 50x slower proxy does not mark nodes down.
        let extra = "[monitor]\ntimeout = \"5s\"\n";
        let start_pc = |tag: &str, wrapper: &[&str]| {
            let (svc, metrics) = targets::start_pgcausal(env, tag, wrapper, extra, Duration::from_secs(180));
            (svc, Some(metrics))
        };
        let start_pb =
            |tag: &str, wrapper: &[&str]| (targets::start_pgbouncer(env, tag, wrapper, Duration::from_secs(180)), None);
        let start_floor =
            |tag: &str, wrapper: &[&str]| (floor::start(env, tag, wrapper, Duration::from_secs(180)), None);
        let runs: [(&str, cost::StartProxy); 3] =
            [("pgcausal", &start_pc), ("pgbouncer", &start_pb), ("tokio-floor", &start_floor)];
        let mut per = Vec::new();
        for (name, start) in runs {
            match cost::callgrind(env, name, counts, &o.cost_mode, start, o.keep_callgrind.as_deref()) {
                Ok(r) => {
                    println!(
                        "  {name:<11} {:>9.0} Ir/query   (Ir {} = {}, Ir {} = {}, window {:.1}s, counted {})",
                        r.per_query(),
                        r.large.0,
                        r.large.1,
                        r.small.0,
                        r.small.1,
                        r.window.as_secs_f64(),
                        if r.whole_run { "from process start" } else { "after the warm-up" }
                    );
                    if let (Some(a), Some(b)) = r.logins {
                        println!(
                            "             server logins during the windows: {a} ({} queries), {b} ({} queries)",
                            r.large.0, r.small.0
                        );
                    }
                    let adjusted = r.per_query() - r.login_per_query;
                    if r.login_per_query.abs() >= 100.0 {
                        println!(
                            "  {name:<11} {adjusted:>9.0} Ir/query   without SCRAM key derivation ({:.0} Ir/query: a login in one \
                             window and not the other, not per-query work)",
                            r.login_per_query
                        );
                    }
                    for (f, ir) in r.top.iter().filter(|(_, ir)| *ir >= 50.0) {
                        let f: String = f.chars().take(110).collect();
                        println!("      {ir:>8.0}  {f}");
                    }
                    per.push((name, adjusted));
                }
                Err(e) => println!("  {name:<11} FAILED: {e}"),
            }
        }
        let ir = |name: &str| per.iter().find(|(n, _)| *n == name).map(|(_, ir)| *ir);
        if let (Some(a), Some(b)) = (ir("pgcausal"), ir("pgbouncer")) {
            println!("  pgcausal / PgBouncer instructions per query: {:.2}x", a / b);
        }
        if let (Some(a), Some(f), Some(b)) = (ir("pgcausal"), ir("tokio-floor"), ir("pgbouncer")) {
            println!(
                "  tokio-floor / PgBouncer: {:.2}x; pgcausal above the floor (framing, routing, pooling, \
                 consistency): {:.0} Ir/query",
                f / b,
                a - f
            );
        }
    }

    if !o.rss {
        return;
    }
    let n = 1000;
    println!("\nmemory: VmRSS from /proc/PID/status; fresh proxy, then {n} clients log in (SCRAM) and stay idle, then each runs SELECT 1 once and stays connected");
    println!(
        "  {:<10} {:>9} {:>11} {:>13} {:>11} {:>14}",
        "proxy", "start MiB", "idle MiB", "after query", "peak MiB", "KiB/client"
    );
    let mut pc = targets::start_pgcausal(env, "rss", &[], "", Duration::from_secs(60)).0;
    let a = cost::idle_rss(&pc, n);
    pc.stop_within(Duration::from_secs(30));
    let mut pb = targets::start_pgbouncer(env, "rss", &[], Duration::from_secs(30));
    let b = cost::idle_rss(&pb, n);
    pb.stop_within(Duration::from_secs(30));
    for (name, r) in [("pgcausal", a), ("pgbouncer", b)] {
        let mib = |k: u64| k as f64 / 1024.0;
        println!(
            "  {name:<10} {:>9.1} {:>11.1} {:>13.1} {:>11.1} {:>14.1}{}",
            mib(r.base),
            mib(r.idle),
            mib(r.after_query),
            mib(r.peak),
            (r.after_query as f64 - r.base as f64) / r.connected.max(1) as f64,
            if r.connected < r.clients || r.error.is_some() {
                format!("   only {}/{} connected; {}", r.connected, r.clients, r.error.unwrap_or_default())
            } else {
                String::new()
            }
        );
    }
    println!(
        "  Pgpool-II: not measured (one process per client; 1000 clients need num_init_children = 1000 processes)"
    );
}

fn tool_version(bin: &str, flag: &str) -> String {
    std::process::Command::new(bin)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "not installed".into())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The sum of every series of one counter on pgcausal's /metrics.
pub fn counter_sum(port: u16, name: &str) -> f64 {
    scrape(port).iter().filter(|(k, _)| k == name || k.starts_with(&format!("{name}{{"))).map(|(_, v)| v).sum()
}

/// pgcausal's /metrics as (series, value).
fn scrape(port: u16) -> Vec<(String, f64)> {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return Vec::new() };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| l.starts_with("pgcausal_") && !l.contains("_bucket"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// What pgcausal counted during each workload's runs: where units went, waits for a follower
/// to reach the session's floor, fallbacks to the leader, errors, retries, pool timeouts.
fn pgcausal_counters(workloads: &[Workload], cells: &[Vec<Cell>], pc: usize) {
    println!("\npgcausal counters per workload (increase of /metrics over its runs):");
    println!(
        "  {:<28} {:>10} {:>9} {:>8} {:>11} {:>10} {:>7} {:>8} {:>9}",
        "workload", "units", "follower", "waits", "wait ms avg", "fallbacks", "errors", "retries", "pool t/o"
    );
    for (wi, w) in workloads.iter().enumerate() {
        let c = &cells[wi][pc];
        let follower = c.counter("pgcausal_routed_total", "target=\"follower\"");
        let leader = c.counter("pgcausal_routed_total", "target=\"leader\"");
        let waits = c.counter("pgcausal_consistency_wait_seconds_count", "");
        let wait_sum = c.counter("pgcausal_consistency_wait_seconds_sum", "");
        println!(
            "  {:<28} {:>10.0} {:>8.1}% {:>8.0} {:>11.3} {:>10.0} {:>7.0} {:>8.0} {:>9.0}",
            w.label,
            follower + leader,
            100.0 * follower / (follower + leader).max(1.0),
            waits,
            if waits > 0.0 { 1000.0 * wait_sum / waits } else { 0.0 },
            c.counter("pgcausal_consistency_fallbacks_total", ""),
            c.counter("pgcausal_errors_total", ""),
            c.counter("pgcausal_route_retries_total", ""),
            c.counter("pgcausal_pool_timeouts_total", ""),
        );
    }
    let mut other: std::collections::BTreeMap<&str, f64> = Default::default();
    for row in cells {
        for (k, v) in &row[pc].counters {
            let interesting = [
                "pgcausal_errors_total",
                "pgcausal_consistency_fallbacks_total",
                "pgcausal_route_retries_total",
                "pgcausal_session_pins_total",
                "pgcausal_unparsed_statements_total",
            ];
            if *v != 0.0 && interesting.iter().any(|p| k.starts_with(p)) {
                *other.entry(k.as_str()).or_default() += v;
            }
        }
    }
    for (k, v) in other {
        println!("  {k} {v}");
    }
}
