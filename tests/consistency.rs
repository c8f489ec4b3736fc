//! Consistency checker: many concurrent sessions through the proxy against a real cluster whose
//! followers replay late (`recovery_min_apply_delay`), counting violations of each guarantee.
//!
//! - read-your-writes: a session inserts its own row and immediately reads back the highest
//!   sequence number it wrote; seeing less than the last acknowledged write is a violation.
//! - monotonic reads: one session increments a counter; readers must never see it go down.
//! - consistent prefix: Q asks questions, A answers only questions it has read; an observer that
//!   sees an answer must, in a later statement, see its question.
//!
//! Which server answered each read is taken from the read itself (`inet_server_port()`), never
//! from the proxy's own reports; the proxy's routing counters are printed alongside.
//! The checker can fail: at level `eventual` it must find read-your-writes violations.

mod support;
use support::*;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, ToStatement};

/// No single statement should take this long; a hang fails instead of blocking.
const QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one checker run drives its workload.
const RUN_FOR: Duration = Duration::from_secs(5);
/// Sessions that write and read back their own rows (half simple, half extended protocol).
const RYW_SESSIONS: i32 = 8;
/// Sessions that read the counter.
const COUNTER_READERS: usize = 4;
/// Sessions that read answers, then questions.
const OBSERVERS: usize = 3;
/// Violations of each guarantee described in a report.
const EXAMPLES: usize = 6;
/// The replay delay of the delayed followers.
const DELAY: &str = "300ms";

/// One workload at a time: they compete for 2 cores, and their numbers should not depend on
/// what another test runs meanwhile.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn delayed() -> Vec<(String, String)> {
    vec![("recovery_min_apply_delay".into(), DELAY.into())]
}

/// Leader + 2 followers; node1 replays 300 ms late, node2 at once. Tests on it only add databases.
fn one_delayed_cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    static_cluster(&CLUSTER, || TestCluster::start(2, |spec| spec.follower_conf = vec![delayed(), vec![]]))
}

/// Leader + 2 followers that both replay 300 ms late.
fn both_delayed_cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    static_cluster(&CLUSTER, || TestCluster::start(2, |spec| spec.follower_conf = vec![delayed(), delayed()]))
}

// ---------------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------------

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(QUERY_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", pg_error(&e))),
        Err(_) => Err(format!("{what}: no answer within {QUERY_TIMEOUT:?}")),
    }
}

/// All rows of a simple-protocol query, as text.
async fn simple_rows(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let messages = timed(sql, c.simple_query(sql)).await?;
    Ok(simple_query_rows(&messages))
}

/// The first row of a simple-protocol query.
async fn simple_row(c: &Client, sql: &str) -> Result<Vec<Option<String>>, String> {
    simple_rows(c, sql).await?.into_iter().next().ok_or_else(|| format!("{sql}: no row"))
}

async fn simple_exec(c: &Client, sql: &str) -> Result<(), String> {
    timed(sql, c.batch_execute(sql)).await
}

/// Column `i` of a simple-protocol row as an integer.
fn int(sql: &str, row: &[Option<String>], i: usize) -> Result<i64, String> {
    row.get(i)
        .and_then(|v| v.as_deref())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{sql}: column {i} is not an integer: {row:?}"))
}

/// The single row of an extended-protocol query (a prepared statement or SQL text).
async fn ext_row<T>(
    c: &Client,
    what: &str,
    stmt: &T,
    params: &[&(dyn ToSql + Sync)],
) -> Result<tokio_postgres::Row, String>
where
    T: ?Sized + ToStatement,
{
    timed(what, c.query_one(stmt, params)).await
}

fn col<'a, V: tokio_postgres::types::FromSql<'a>>(
    what: &str,
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<V, String> {
    row.try_get(i).map_err(|e| format!("{what}: column {i}: {e}"))
}

/// How a session gets its consistency level.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// Nothing: the proxy's default (causal unless the config says otherwise).
    Default,
    /// `SET pgcausal.consistency = <level>` after connecting.
    Set,
    /// Startup packet `options=-c pgcausal.consistency=<level>`.
    StartupOption,
    /// `[consistency] level = "<level>"` in the proxy's config (the caller starts the proxy so).
    Config,
}

/// A connection at `level`, checked with `SHOW pgcausal.consistency`.
async fn session(conn_str: &str, level: &str, via: Via) -> Result<Client, String> {
    let mut config: tokio_postgres::Config = conn_str.parse().map_err(|e| format!("{conn_str}: {e}"))?;
    config.connect_timeout(Duration::from_secs(10));
    if let Via::StartupOption = via {
        config.options(format!("-c pgcausal.consistency={level}"));
    }
    let (client, conn) = timed("connect", config.connect(NoTls)).await?;
    tokio::spawn(conn);
    if let Via::Set = via {
        simple_exec(&client, &format!("SET pgcausal.consistency = {level}")).await?;
    }
    let shown = simple_row(&client, "SHOW pgcausal.consistency").await?;
    let shown = shown.first().cloned().flatten().unwrap_or_default();
    if shown != level {
        return Err(format!("SHOW pgcausal.consistency says {shown:?} after {via:?}, expected {level:?}"));
    }
    Ok(client)
}

/// "node1:54321" for a port of the cluster.
fn node_name(ports: &[u16], port: u16) -> String {
    match ports.iter().position(|&p| p == port) {
        Some(i) => format!("node{i}:{port}"),
        None => format!("unknown:{port}"),
    }
}

/// The proxy has just started; the monitors may not have probed the followers yet. Reads at
/// level eventual until every follower has answered once, or 15 s.
async fn warm_up(cluster: &TestCluster, conn_str: &str) {
    let c = session(conn_str, "eventual", Via::Set).await.unwrap_or_else(|e| panic!("warm-up session: {e}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = BTreeMap::<String, usize>::new();
    while Instant::now() < deadline {
        let row = simple_row(&c, "SELECT inet_server_port()").await.unwrap_or_else(|e| panic!("warm-up: {e}"));
        let port = int("warm-up", &row, 0).unwrap() as u16;
        *seen.entry(node_name(&cluster.ports, port)).or_default() += 1;
        if cluster.ports[1..].iter().all(|&f| seen.contains_key(&node_name(&cluster.ports, f))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("warm-up: not every follower answered within 15 s: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Every sample of a counter, by its label set.
fn counter_samples(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let Some(rest) = rest.strip_prefix('{') else { continue };
        let Some((labels, value)) = rest.split_once('}') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        *samples.entry(labels.to_string()).or_default() += value;
    }
    samples
}

fn counter_delta(before: &str, after: &str, name: &str) -> BTreeMap<String, f64> {
    let before = counter_samples(before, name);
    counter_samples(after, name)
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------------

/// What one session (or a whole run) saw.
#[derive(Default)]
struct Tally {
    ryw_reads: usize,
    ryw_violations: usize,
    /// Read-your-writes (reads, violations) by how the session writes.
    ryw_by_style: BTreeMap<String, (usize, usize)>,
    monotonic_reads: usize,
    monotonic_violations: usize,
    prefix_checks: usize,
    prefix_violations: usize,
    /// Acknowledged writes of every kind.
    writes: usize,
    questions: usize,
    answers: usize,
    /// Reads per answering server port.
    reads_by_port: BTreeMap<u16, usize>,
    errors: Vec<String>,
    /// The first few violations of each guarantee, with the statements and nodes involved.
    examples: BTreeMap<&'static str, Vec<String>>,
}

impl Tally {
    fn read_on(&mut self, port: u16) {
        *self.reads_by_port.entry(port).or_default() += 1;
    }

    fn error(&mut self, e: String) {
        eprintln!("checker error: {e}");
        self.errors.push(e);
    }

    fn example(&mut self, guarantee: &'static str, e: String) {
        let examples = self.examples.entry(guarantee).or_default();
        if examples.len() < EXAMPLES {
            examples.push(e);
        }
    }

    fn merge(&mut self, o: Tally) {
        self.ryw_reads += o.ryw_reads;
        self.ryw_violations += o.ryw_violations;
        for (style, (reads, violations)) in o.ryw_by_style {
            let e = self.ryw_by_style.entry(style).or_default();
            e.0 += reads;
            e.1 += violations;
        }
        self.monotonic_reads += o.monotonic_reads;
        self.monotonic_violations += o.monotonic_violations;
        self.prefix_checks += o.prefix_checks;
        self.prefix_violations += o.prefix_violations;
        self.writes += o.writes;
        self.questions += o.questions;
        self.answers += o.answers;
        for (p, n) in o.reads_by_port {
            *self.reads_by_port.entry(p).or_default() += n;
        }
        self.errors.extend(o.errors);
        for (guarantee, examples) in o.examples {
            for e in examples {
                self.example(guarantee, e);
            }
        }
    }
}

/// Everything the sessions of one run share.
struct Workload {
    conn_str: String,
    level: String,
    via: Via,
    ports: Vec<u16>,
    t0: Instant,
    deadline: Instant,
}

impl Workload {
    async fn connect(&self) -> Result<Client, String> {
        session(&self.conn_str, &self.level, self.via).await
    }

    fn node(&self, port: u16) -> String {
        node_name(&self.ports, port)
    }

    /// Milliseconds since the workload started, for examples.
    fn at(&self, t: Instant) -> String {
        format!("t0+{}ms", t.saturating_duration_since(self.t0).as_millis())
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }
}

/// The result of one checker run.
struct Report {
    level: String,
    via: Via,
    elapsed: Duration,
    tally: Tally,
    ports: Vec<u16>,
    routed: BTreeMap<String, f64>,
    fallbacks: BTreeMap<String, f64>,
    /// `pgcausal_position_probes_total` delta by labels.
    probes: BTreeMap<String, f64>,
}

impl Report {
    fn reads(&self) -> usize {
        self.tally.reads_by_port.values().sum()
    }

    /// Share of reads answered by a follower (any port but the leader's).
    fn follower_share(&self) -> f64 {
        let leader = self.ports[0];
        let on_followers: usize = self.tally.reads_by_port.iter().filter(|(p, _)| **p != leader).map(|(_, n)| n).sum();
        on_followers as f64 / self.reads().max(1) as f64
    }

    /// Share of units the proxy ran on followers, from `pgcausal_routed_total`.
    fn routed_follower_share(&self) -> f64 {
        let follower: f64 = self.routed.iter().filter(|(k, _)| k.contains("target=\"follower\"")).map(|(_, v)| v).sum();
        let all: f64 = self.routed.values().sum();
        if all == 0.0 {
            0.0
        } else {
            follower / all
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tally;
        let by_node: BTreeMap<String, usize> =
            t.reads_by_port.iter().map(|(p, n)| (node_name(&self.ports, *p), *n)).collect();
        writeln!(f, "level {} (via {:?}), workload ran {:.1?}:", self.level, self.via, self.elapsed)?;
        writeln!(f, "  read-your-writes: {} violations in {} reads", t.ryw_violations, t.ryw_reads)?;
        writeln!(f, "    (reads, violations) by write style: {:?}", t.ryw_by_style)?;
        writeln!(f, "  monotonic reads:  {} violations in {} reads", t.monotonic_violations, t.monotonic_reads)?;
        writeln!(
            f,
            "  consistent prefix: {} violations in {} answer/question checks ({} questions, {} answers)",
            t.prefix_violations, t.prefix_checks, t.questions, t.answers
        )?;
        writeln!(
            f,
            "  {} reads, {:.1}% on followers, by node {by_node:?}; {} writes",
            self.reads(),
            100.0 * self.follower_share(),
            t.writes
        )?;
        writeln!(
            f,
            "  pgcausal_routed_total delta ({:.1}% follower units): {:?}",
            100.0 * self.routed_follower_share(),
            self.routed
        )?;
        writeln!(f, "  pgcausal_consistency_fallbacks_total delta: {:?}", self.fallbacks)?;
        writeln!(f, "  pgcausal_position_probes_total delta: {:?}", self.probes)?;
        writeln!(f, "  {} errors{}", t.errors.len(), if t.errors.is_empty() { "" } else { ", first ones:" })?;
        for e in t.errors.iter().take(10) {
            writeln!(f, "    {e}")?;
        }
        for (guarantee, examples) in &t.examples {
            writeln!(f, "  first {} {guarantee} violations:", examples.len())?;
            for e in examples {
                writeln!(f, "    {e}")?;
            }
        }
        Ok(())
    }
}

/// Creates `db` with the checker's tables, on the leader, replicated everywhere.
fn prepare_database(cluster: &TestCluster, db: &str) {
    cluster.create_database(db);
    cluster.sql(
        0,
        db,
        "CREATE TABLE rows (session int, seq int, PRIMARY KEY (session, seq)); \
         CREATE TABLE counter (id int PRIMARY KEY, v bigint NOT NULL); INSERT INTO counter VALUES (1, 0); \
         CREATE TABLE questions (id int PRIMARY KEY); CREATE TABLE answers (qid int PRIMARY KEY)",
    );
    cluster.cluster.lock().unwrap().wait_replicated(Duration::from_secs(30)).expect("replicated");
}

/// Starts a proxy (pool size 4, transaction pooling) for `level` given `via`, creates `db`, runs
/// the workload and returns its report.
fn check_level(cluster: &TestCluster, db: &str, level: &str, via: Via) -> Report {
    check_level_with(cluster, db, level, via, "")
}

/// `check_level` with `extra` TOML in the proxy's config.
fn check_level_with(cluster: &TestCluster, db: &str, level: &str, via: Via, extra: &str) -> Report {
    prepare_database(cluster, db);
    let mut options = ProxyOptions { pool_size: 4, pool_mode: "transaction", ..Default::default() };
    options.extra = extra.to_string();
    if let Via::Config = via {
        options.extra += &format!("[consistency]\nlevel = \"{level}\"\n");
    }
    let proxy = ProxyProcess::start(cluster, options);
    let report = runtime().block_on(check(cluster, &proxy, db, level, via));
    println!("{report}");
    report
}

/// Runs the workload through `proxy` at `level`: 8 read-your-writes sessions, 1 counter writer,
/// 4 counter readers, a questioner, an answerer and 3 observers (18 concurrent sessions) for
/// `RUN_FOR`, and counts violations of each guarantee.
async fn check(cluster: &TestCluster, proxy: &ProxyProcess, db: &str, level: &str, via: Via) -> Report {
    let conn_str = proxy.conn_str(db);
    warm_up(cluster, &conn_str).await;
    let before = proxy.metrics();
    let t0 = Instant::now();
    let w = Arc::new(Workload {
        conn_str,
        level: level.to_string(),
        via,
        ports: cluster.ports.clone(),
        t0,
        deadline: t0 + RUN_FOR,
    });
    let mut tasks = Vec::new();
    for id in 0..RYW_SESSIONS {
        tasks.push(tokio::spawn(ryw_session(w.clone(), id)));
    }
    tasks.push(tokio::spawn(counter_writer(w.clone())));
    for r in 0..COUNTER_READERS {
        tasks.push(tokio::spawn(counter_reader(w.clone(), r)));
    }
    tasks.push(tokio::spawn(questioner(w.clone())));
    tasks.push(tokio::spawn(answerer(w.clone())));
    for o in 0..OBSERVERS {
        tasks.push(tokio::spawn(observer(w.clone(), o)));
    }
    let mut tally = Tally::default();
    for task in tasks {
        match tokio::time::timeout(RUN_FOR + QUERY_TIMEOUT + Duration::from_secs(10), task).await {
            Ok(Ok(t)) => tally.merge(t),
            Ok(Err(e)) => tally.error(format!("session task failed: {e}")),
            Err(_) => tally.error("session task did not finish".into()),
        }
    }
    let elapsed = t0.elapsed();
    let after = proxy.metrics();
    Report {
        level: level.to_string(),
        via,
        elapsed,
        tally,
        ports: cluster.ports.clone(),
        routed: counter_delta(&before, &after, "pgcausal_routed_total"),
        fallbacks: counter_delta(&before, &after, "pgcausal_consistency_fallbacks_total"),
        probes: counter_delta(&before, &after, "pgcausal_position_probes_total"),
    }
}

/// Session `id` writes (id, 1), (id, 2), ... and after each acknowledged write reads back
/// `max(seq)` of its rows. Its protocol and write style depend on `id % 8`:
/// 0, 6 simple autocommit; 1 extended, statements prepared once; 2 simple BEGIN / INSERT / COMMIT
/// as three messages; 3, 7 extended in a transaction; 4 simple `BEGIN; INSERT; COMMIT` in one
/// Query; 5 extended with SQL text each time.
async fn ryw_session(w: Arc<Workload>, id: i32) -> Tally {
    let mut t = Tally::default();
    let mut c = match w.connect().await {
        Ok(c) => c,
        Err(e) => {
            t.error(format!("ryw session {id}: {e}"));
            return t;
        }
    };
    const INSERT: &str = "INSERT INTO rows (session, seq) VALUES ($1, $2)";
    const READ: &str = "SELECT coalesce(max(seq), 0), inet_server_port() FROM rows WHERE session = $1";
    let mode = id % 8;
    let simple = mode % 2 == 0;
    let style = match mode {
        0 | 6 => "simple autocommit",
        1 => "extended prepared-once autocommit",
        2 => "simple BEGIN/INSERT/COMMIT",
        3 | 7 => "extended transaction",
        4 => "simple one-message BEGIN; INSERT; COMMIT",
        _ => "extended autocommit",
    };
    let prepared = if mode == 1 {
        match (timed("prepare", c.prepare(INSERT)).await, timed("prepare", c.prepare(READ)).await) {
            (Ok(i), Ok(r)) => Some((i, r)),
            (Err(e), _) | (_, Err(e)) => {
                t.error(format!("ryw session {id}: {e}"));
                return t;
            }
        }
    } else {
        None
    };
    let mut seq = 0i32;
    while w.running() {
        seq += 1;
        let insert_sql = format!("INSERT INTO rows (session, seq) VALUES ({id}, {seq})");
        let wrote: Result<(), String> = match mode {
            0 | 6 => simple_exec(&c, &insert_sql).await,
            2 => {
                let r = async {
                    simple_exec(&c, "BEGIN").await?;
                    simple_exec(&c, &insert_sql).await?;
                    simple_exec(&c, "COMMIT").await
                }
                .await;
                if r.is_err() {
                    let _ = simple_exec(&c, "ROLLBACK").await;
                }
                r
            }
            4 => simple_exec(&c, &format!("BEGIN; {insert_sql}; COMMIT")).await,
            1 => {
                let (insert, _) = prepared.as_ref().unwrap();
                timed("prepared insert", c.execute(insert, &[&id, &seq])).await.map(drop)
            }
            3 | 7 => {
                let r = async {
                    let tx = timed("BEGIN", c.transaction()).await?;
                    timed(INSERT, tx.execute(INSERT, &[&id, &seq])).await?;
                    timed("COMMIT", tx.commit()).await
                }
                .await;
                if r.is_err() {
                    let _ = simple_exec(&c, "ROLLBACK").await;
                }
                r
            }
            _ => timed(INSERT, c.execute(INSERT, &[&id, &seq])).await.map(drop),
        };
        match wrote {
            Ok(()) => t.writes += 1,
            Err(e) => {
                // A failed write is no promise: nothing to check (it may or may not be there).
                t.error(format!("ryw session {id} ({style}) write seq {seq}: {e}"));
                continue;
            }
        }
        // The highest seq whose write was acknowledged.
        let acked = seq;
        let started = Instant::now();
        let read: Result<(i32, u16), String> = if simple {
            let sql = format!("SELECT coalesce(max(seq), 0), inet_server_port() FROM rows WHERE session = {id}");
            match simple_row(&c, &sql).await {
                Ok(row) => int(&sql, &row, 0).and_then(|s| Ok((s as i32, int(&sql, &row, 1)? as u16))),
                Err(e) => Err(e),
            }
        } else {
            let row = match &prepared {
                Some((_, read)) => ext_row(&c, READ, read, &[&id]).await,
                None => ext_row(&c, READ, READ, &[&id]).await,
            };
            row.and_then(|r| Ok((col::<i32>(READ, &r, 0)?, col::<i32>(READ, &r, 1)? as u16)))
        };
        match read {
            Ok((seen, port)) => {
                t.read_on(port);
                t.ryw_reads += 1;
                let by_style = t.ryw_by_style.entry(format!("{mode}: {style}")).or_default();
                by_style.0 += 1;
                if seen < acked {
                    by_style.1 += 1;
                    t.ryw_violations += 1;
                    t.example(
                        "read-your-writes",
                        format!(
                            "session {id} ({style}) had INSERT ({id}, {acked}) acknowledged, then \
                         SELECT max(seq) started at {} on {} returned {seen} after {:?}",
                            w.at(started),
                            w.node(port),
                            started.elapsed()
                        ),
                    );
                }
            }
            Err(e) => t.error(format!("ryw session {id} ({style}) read: {e}")),
        }
    }
    t
}

/// Increments the counter as fast as it can, on its own connection.
async fn counter_writer(w: Arc<Workload>) -> Tally {
    let mut t = Tally::default();
    let c = match w.connect().await {
        Ok(c) => c,
        Err(e) => {
            t.error(format!("counter writer: {e}"));
            return t;
        }
    };
    while w.running() {
        match simple_exec(&c, "UPDATE counter SET v = v + 1 WHERE id = 1").await {
            Ok(()) => t.writes += 1,
            Err(e) => t.error(format!("counter writer: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t
}

/// Reads the counter over and over; it must never go down. Even readers use the simple protocol,
/// odd ones the extended protocol.
async fn counter_reader(w: Arc<Workload>, r: usize) -> Tally {
    let mut t = Tally::default();
    let c = match w.connect().await {
        Ok(c) => c,
        Err(e) => {
            t.error(format!("counter reader {r}: {e}"));
            return t;
        }
    };
    const READ: &str = "SELECT v, inet_server_port() FROM counter WHERE id = 1";
    // (value, node, when) of the highest value seen so far.
    let mut last: Option<(i64, u16, Instant)> = None;
    while w.running() {
        let started = Instant::now();
        let read: Result<(i64, u16), String> = if r.is_multiple_of(2) {
            simple_row(&c, READ).await.and_then(|row| Ok((int(READ, &row, 0)?, int(READ, &row, 1)? as u16)))
        } else {
            ext_row(&c, READ, READ, &[])
                .await
                .and_then(|row| Ok((col::<i64>(READ, &row, 0)?, col::<i32>(READ, &row, 1)? as u16)))
        };
        match read {
            Ok((v, port)) => {
                t.read_on(port);
                t.monotonic_reads += 1;
                match last {
                    Some((prev, prev_port, prev_at)) if v < prev => {
                        t.monotonic_violations += 1;
                        t.example(
                            "monotonic",
                            format!(
                                "counter reader {r} read v = {prev} on {} at {}, then v = {v} on {} at {}",
                                w.node(prev_port),
                                w.at(prev_at),
                                w.node(port),
                                w.at(started)
                            ),
                        );
                    }
                    Some((prev, _, _)) if v == prev => {}
                    _ => last = Some((v, port, started)),
                }
            }
            Err(e) => t.error(format!("counter reader {r}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t
}

/// Q: asks questions 1, 2, 3, ... (extended protocol, autocommit, in order).
async fn questioner(w: Arc<Workload>) -> Tally {
    let mut t = Tally::default();
    let c = match w.connect().await {
        Ok(c) => c,
        Err(e) => {
            t.error(format!("questioner: {e}"));
            return t;
        }
    };
    const ASK: &str = "INSERT INTO questions (id) VALUES ($1)";
    let mut next = 1i32;
    while w.running() {
        match timed(ASK, c.execute(ASK, &[&next])).await {
            Ok(_) => {
                t.writes += 1;
                t.questions += 1;
                next += 1;
            }
            // Retrying the same id: a lost acknowledgement shows as a duplicate key, then move on.
            Err(e) if e.contains("23505") => next += 1,
            Err(e) => t.error(format!("questioner: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t
}

/// A: reads the questions it has not answered yet (simple protocol, through the proxy's routing)
/// and answers exactly those.
async fn answerer(w: Arc<Workload>) -> Tally {
    let mut t = Tally::default();
    let c = match w.connect().await {
        Ok(c) => c,
        Err(e) => {
            t.error(format!("answerer: {e}"));
            return t;
        }
    };
    let mut answered = 0i64;
    while w.running() {
        let sql = format!(
            "SELECT string_agg(id::text, ',' ORDER BY id), inet_server_port() FROM questions WHERE id > {answered}"
        );
        let row = match simple_row(&c, &sql).await {
            Ok(row) => row,
            Err(e) => {
                t.error(format!("answerer: {e}"));
                continue;
            }
        };
        match int(&sql, &row, 1) {
            Ok(port) => t.read_on(port as u16),
            Err(e) => t.error(e),
        }
        let ids: Vec<i64> = row[0].as_deref().unwrap_or("").split(',').filter_map(|s| s.parse().ok()).collect();
        if ids.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let values: Vec<String> = ids.iter().map(|id| format!("({id})")).collect();
        let insert = format!("INSERT INTO answers (qid) VALUES {} ON CONFLICT DO NOTHING", values.join(","));
        match simple_exec(&c, &insert).await {
            Ok(()) => {
                t.writes += 1;
                t.answers += ids.len();
                answered = *ids.last().unwrap();
            }
            Err(e) => t.error(format!("answerer: {e}")),
        }
    }
    t
}

/// Reads the highest answer, then (in a later statement) the questions: the answered question
/// must be there. Questions are asked in order by one session, so every snapshot holds a prefix
/// 1..=max of them (checked: count = max). Both maxima must also never go down (monotonic).
/// Even observers use the simple protocol, odd ones the extended protocol.
async fn observer(w: Arc<Workload>, o: usize) -> Tally {
    let mut t = Tally::default();
    let c = match w.connect().await {
        Ok(c) => c,
        Err(e) => {
            t.error(format!("observer {o}: {e}"));
            return t;
        }
    };
    const ANSWERS: &str = "SELECT coalesce(max(qid), 0), count(*)::int4, inet_server_port() FROM answers";
    const QUESTIONS: &str = "SELECT coalesce(max(id), 0), count(*)::int4, inet_server_port() FROM questions";
    async fn read(c: &Client, sql: &str, simple: bool) -> Result<(i64, i64, u16), String> {
        if simple {
            let row = simple_row(c, sql).await?;
            Ok((int(sql, &row, 0)?, int(sql, &row, 1)?, int(sql, &row, 2)? as u16))
        } else {
            let row = ext_row(c, sql, sql, &[]).await?;
            Ok((col::<i32>(sql, &row, 0)? as i64, col::<i32>(sql, &row, 1)? as i64, col::<i32>(sql, &row, 2)? as u16))
        }
    }
    let simple = o.is_multiple_of(2);
    let (mut last_answer, mut last_question) = (0i64, 0i64);
    while w.running() {
        let a_at = Instant::now();
        let (answer, _, a_port) = match read(&c, ANSWERS, simple).await {
            Ok(r) => r,
            Err(e) => {
                t.error(format!("observer {o}: {e}"));
                continue;
            }
        };
        t.read_on(a_port);
        let q_at = Instant::now();
        let (question, count, q_port) = match read(&c, QUESTIONS, simple).await {
            Ok(r) => r,
            Err(e) => {
                t.error(format!("observer {o}: {e}"));
                continue;
            }
        };
        t.read_on(q_port);
        if count != question {
            t.error(format!(
                "observer {o}: questions are not a prefix: count {count}, max {question} on {}",
                w.node(q_port)
            ));
        }
        t.prefix_checks += 1;
        if answer > question {
            t.prefix_violations += 1;
            t.example(
                "consistent prefix",
                format!(
                    "observer {o} saw the answer to question {answer} on {} at {}, then only questions \
                 up to {question} on {} at {}",
                    w.node(a_port),
                    w.at(a_at),
                    w.node(q_port),
                    w.at(q_at)
                ),
            );
        }
        t.monotonic_reads += 2;
        for (what, prev, now, port, at) in
            [("answers", last_answer, answer, a_port, a_at), ("questions", last_question, question, q_port, q_at)]
        {
            if now < prev {
                t.monotonic_violations += 1;
                t.example(
                    "monotonic",
                    format!(
                        "observer {o} had seen {what} up to {prev}, then up to {now} on {} at {}",
                        w.node(port),
                        w.at(at)
                    ),
                );
            }
        }
        last_answer = last_answer.max(answer);
        last_question = last_question.max(question);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t
}

/// Every guarantee of `level` held, the workload did enough to mean something, and nothing failed.
fn assert_sound(r: &Report, ryw: bool, monotonic: bool, prefix: bool) {
    let t = &r.tally;
    assert!(
        t.ryw_reads >= 50 && t.monotonic_reads >= 50 && t.prefix_checks >= 10 && t.answers >= 10,
        "the workload did too little to judge: {} read-your-writes reads, {} monotonic reads, {} prefix checks, \
         {} answers\n{r}",
        t.ryw_reads,
        t.monotonic_reads,
        t.prefix_checks,
        t.answers
    );
    if ryw {
        assert_eq!(
            t.ryw_violations, 0,
            "read-your-writes violated {} times in {} reads\n{r}",
            t.ryw_violations, t.ryw_reads
        );
    }
    if monotonic {
        assert_eq!(
            t.monotonic_violations, 0,
            "monotonic reads violated {} times in {} reads\n{r}",
            t.monotonic_violations, t.monotonic_reads
        );
    }
    if prefix {
        assert_eq!(
            t.prefix_violations, 0,
            "consistent prefix violated {} times in {} checks\n{r}",
            t.prefix_violations, t.prefix_checks
        );
    }
    assert!(t.errors.is_empty(), "{} statements failed on a healthy cluster\n{r}", t.errors.len());
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn causal_level_has_zero_violations_with_one_delayed_follower() {
    let _serial = serial();
    let cluster = one_delayed_cluster();
    let r = check_level(cluster, "cc_causal", "causal", Via::Default);
    assert_sound(&r, true, true, true);
    let share = r.follower_share();
    println!("causal, node1 delayed {DELAY}: {:.1}% of {} reads on followers", 100.0 * share, r.reads());
    assert!(share > 0.3, "only {:.1}% of {} reads ran on a follower (expected > 30%)\n{r}", 100.0 * share, r.reads());
}

#[test]
fn read_your_writes_and_monotonic_levels_hold_their_guarantee() {
    let _serial = serial();
    let cluster = one_delayed_cluster();
    let ryw = check_level(cluster, "cc_ryw", "read_your_writes", Via::Set);
    let monotonic = check_level(cluster, "cc_monotonic", "monotonic", Via::StartupOption);
    assert_sound(&ryw, true, false, false);
    assert_sound(&monotonic, false, true, false);
}

#[test]
fn both_followers_delayed_still_zero_violations() {
    let _serial = serial();
    let cluster = both_delayed_cluster();
    let r = check_level(cluster, "cc_both_delayed", "causal", Via::Config);
    println!(
        "causal, both followers delayed {DELAY}: {:.1}% of {} reads on followers",
        100.0 * r.follower_share(),
        r.reads()
    );
    assert_sound(&r, true, true, true);
}

/// With `routing.leader_reads = always` the leader serves every read no follower could serve
/// yet: still zero violations, and no read waits for replay or asks for a position probe.
#[test]
fn a_sharing_leader_keeps_every_guarantee_without_waiting() {
    let _serial = serial();
    let cluster = one_delayed_cluster();
    let r =
        check_level_with(cluster, "cc_leader_shares", "causal", Via::Default, "[routing]\nleader_reads = \"always\"\n");
    assert_sound(&r, true, true, true);
    let wanted: f64 = r.probes.iter().filter(|(k, _)| k.contains("cause=\"wanted\"")).map(|(_, v)| v).sum();
    assert_eq!(wanted, 0.0, "reads asked for position probes although the leader could serve them\n{r}");
    assert!(r.fallbacks.is_empty(), "reads fell back to the leader instead of taking its share\n{r}");
    assert!(r.follower_share() > 0.1, "too few reads ran on the followers\n{r}");
}

#[test]
fn eventual_level_shows_violations() {
    let _serial = serial();
    let cluster = one_delayed_cluster();
    let r = check_level(cluster, "cc_eventual", "eventual", Via::Config);
    let t = &r.tally;
    assert!(t.ryw_reads >= 50, "only {} read-your-writes reads\n{r}", t.ryw_reads);
    assert!(
        t.ryw_violations > 0,
        "at level eventual with node1 {DELAY} behind, the checker found no read-your-writes violation in {} reads\n{r}",
        t.ryw_reads
    );
}

/// Parses `timeline/hi/lo` into a comparable triple.
fn parse_token(token: &str) -> Option<(u32, u64)> {
    let parts: Vec<&str> = token.split('/').collect();
    match parts.as_slice() {
        [tl, hi, lo] => {
            Some((tl.parse().ok()?, (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?))
        }
        _ => None,
    }
}

#[test]
fn token_carries_causality_across_connections() {
    let _serial = serial();
    let cluster = one_delayed_cluster();
    let db = "cc_token";
    cluster.create_database(db);
    cluster.sql(0, db, "CREATE TABLE t (id int PRIMARY KEY)");
    cluster.cluster.lock().unwrap().wait_replicated(Duration::from_secs(30)).expect("replicated");
    let proxy = ProxyProcess::start(cluster, ProxyOptions { pool_size: 4, ..Default::default() });
    let conn_str = proxy.conn_str(db);
    let ports = cluster.ports.clone();
    const ROUNDS: i32 = 50;
    let started = Instant::now();
    let (failures, tokens, with_token, controls) = runtime().block_on(async {
        warm_up(cluster, &conn_str).await;
        let connect = |level: &'static str, via: Via| {
            let conn_str = conn_str.clone();
            async move { session(&conn_str, level, via).await.unwrap_or_else(|e| panic!("{level} session: {e}")) }
        };
        let a = connect("causal", Via::Default).await;
        // A long-lived session that never writes: its own floor says nothing about A's writes.
        let b_long = connect("read_your_writes", Via::Set).await;
        let control_long = connect("read_your_writes", Via::Set).await;
        let mut failures = Vec::new();
        let mut tokens: Vec<String> = Vec::new();
        // (saw the row, port) per reader kind.
        let mut with_token: BTreeMap<&str, Vec<(bool, u16)>> = BTreeMap::new();
        let mut controls: BTreeMap<&str, Vec<(bool, u16)>> = BTreeMap::new();
        for id in 1..=ROUNDS {
            // Fresh sessions, connected before the write so that the read follows it at once.
            let b_fresh = connect("causal", Via::Default).await;
            let control_fresh = connect("eventual", Via::StartupOption).await;
            let control_fresh_causal = connect("causal", Via::Default).await;
            simple_exec(&a, &format!("INSERT INTO t VALUES ({id})")).await.unwrap_or_else(|e| panic!("{e}"));
            let token = simple_row(&a, "SHOW pgcausal.lsn").await.unwrap_or_else(|e| panic!("{e}"));
            let token = token.first().cloned().flatten().unwrap_or_default();
            assert!(parse_token(&token).is_some(), "SHOW pgcausal.lsn returned {token:?}, not timeline/hi/lo");
            if let Some(prev) = tokens.last() {
                assert!(
                    parse_token(prev) < parse_token(&token),
                    "A's token did not advance over its write: {prev} then {token}"
                );
            }
            tokens.push(token.clone());
            // Controls first (closest to the write): no token.
            controls.entry("fresh eventual session").or_default().push(read_row(&control_fresh, id).await);
            controls.entry("fresh causal session").or_default().push(read_row(&control_fresh_causal, id).await);
            controls.entry("long-lived read_your_writes session").or_default().push(read_row(&control_long, id).await);
            // With the token: must see the row.
            for (kind, c) in [("fresh causal session", &b_fresh), ("long-lived read_your_writes session", &b_long)] {
                let set = format!("SET pgcausal.min_lsn = '{token}'");
                simple_exec(c, &set).await.unwrap_or_else(|e| panic!("{e}"));
                let (saw, port) = read_row(c, id).await;
                with_token.entry(kind).or_default().push((saw, port));
                if !saw {
                    failures.push(format!(
                        "{kind}: after `{set}` (A inserted id {id}, then SHOW pgcausal.lsn = {token}), \
                         SELECT ... WHERE id = {id} on {} did not see the row",
                        node_name(&ports, port)
                    ));
                }
            }
        }
        (failures, tokens, with_token, controls)
    });
    let summarize = |m: &BTreeMap<&str, Vec<(bool, u16)>>| {
        m.iter()
            .map(|(kind, reads)| {
                let missed = reads.iter().filter(|(saw, _)| !saw).count();
                let mut by_node = BTreeMap::<String, (usize, usize)>::new();
                for (saw, port) in reads {
                    let e = by_node.entry(node_name(&ports, *port)).or_default();
                    e.0 += 1;
                    e.1 += usize::from(!saw);
                }
                format!("  {kind}: missed {missed} of {} (reads, misses by node: {by_node:?})", reads.len())
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let report = format!(
        "token test, {ROUNDS} rounds in {:.1?}, tokens {} .. {}:\n with SET pgcausal.min_lsn:\n{}\n without a token \
         (controls, not asserted):\n{}",
        started.elapsed(),
        tokens.first().map_or("-", String::as_str),
        tokens.last().map_or("-", String::as_str),
        summarize(&with_token),
        summarize(&controls)
    );
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{} reads with a token missed the write:\n{}\n{report}",
        failures.len(),
        failures.join("\n")
    );
}

/// Whether row `id` of `t` is visible, and which server answered.
async fn read_row(c: &Client, id: i32) -> (bool, u16) {
    let sql = format!("SELECT count(*), inet_server_port() FROM t WHERE id = {id}");
    let row = simple_row(c, &sql).await.unwrap_or_else(|e| panic!("{e}"));
    (int(&sql, &row, 0).unwrap() == 1, int(&sql, &row, 1).unwrap() as u16)
}
