//! The consistency checker: many concurrent sessions through the proxy, counting violations of
//! each guarantee (used by tests/consistency.rs on a healthy cluster, and by tests/failover.rs
//! through a failover).
//!
//! - read-your-writes: a session inserts its own row and immediately reads back the highest
//!   sequence number it wrote; seeing less than the last acknowledged write is a violation.
//! - monotonic reads: one session increments a counter; readers must never see it go down.
//! - consistent prefix: Q asks questions, A answers only questions it has read; an observer that
//!   sees an answer must, in a later statement, see its question.
//!
//! Which server answered each read is taken from the read itself (`inet_server_port()`), never
//! from the proxy's own reports; the proxy's routing counters are printed alongside.
//!
//! Through a failover (`Shape::through_failover`) sessions reconnect when the proxy closes their
//! connection (a new session: its guarantees start afresh), errors are counted rather than
//! fatal, and every violation is kept as a [`Suspect`] that [`Report::judge`] later checks
//! against what the new leader holds: a violation whose earlier observation was of a write the
//! new leader lacks (lost in the asynchronous failover, counted by id) is explained by that loss;
//! any other is a real violation.

use super::chaos::connect_node;
use super::*;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, ToStatement};

/// No single statement should take this long; a hang fails instead of blocking (above the
/// proxy's default hold of 15 s for writes while no leader is known).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Violations of each guarantee described in a report.
const EXAMPLES: usize = 6;
/// Error texts kept (and printed as they happen) per session; more are only counted.
const ERRORS_KEPT: usize = 20;

// ---------------------------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------------------------

pub async fn timed<T>(
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
pub async fn simple_rows(c: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let messages = timed(sql, c.simple_query(sql)).await?;
    Ok(simple_query_rows(&messages))
}

/// The first row of a simple-protocol query.
pub async fn simple_row(c: &Client, sql: &str) -> Result<Vec<Option<String>>, String> {
    simple_rows(c, sql).await?.into_iter().next().ok_or_else(|| format!("{sql}: no row"))
}

pub async fn simple_exec(c: &Client, sql: &str) -> Result<(), String> {
    timed(sql, c.batch_execute(sql)).await
}

/// Column `i` of a simple-protocol row as an integer.
pub fn int(sql: &str, row: &[Option<String>], i: usize) -> Result<i64, String> {
    row.get(i)
        .and_then(|v| v.as_deref())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("{sql}: column {i} is not an integer: {row:?}"))
}

/// The single row of an extended-protocol query (a prepared statement or SQL text).
pub async fn ext_row<T>(
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

pub fn col<'a, V: tokio_postgres::types::FromSql<'a>>(
    what: &str,
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<V, String> {
    row.try_get(i).map_err(|e| format!("{what}: column {i}: {e}"))
}

/// How a session gets its consistency level.
#[derive(Clone, Copy, Debug)]
pub enum Via {
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
pub async fn session(conn_str: &str, level: &str, via: Via) -> Result<Client, String> {
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
pub fn node_name(ports: &[u16], port: u16) -> String {
    match ports.iter().position(|&p| p == port) {
        Some(i) => format!("node{i}:{port}"),
        None => format!("unknown:{port}"),
    }
}

/// The proxy has just started; the monitors may not have probed the followers yet. Reads at
/// level eventual until every follower (nodes 1.. as the cluster was started) has answered
/// once, or 15 s.
pub async fn warm_up(cluster: &TestCluster, conn_str: &str) {
    warm_up_followers(cluster, &cluster.ports[1..], conn_str).await
}

/// `warm_up` until each of the followers on `followers` has answered once.
pub async fn warm_up_followers(cluster: &TestCluster, followers: &[u16], conn_str: &str) {
    let c = session(conn_str, "eventual", Via::Set).await.unwrap_or_else(|e| panic!("warm-up session: {e}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = BTreeMap::<String, usize>::new();
    while Instant::now() < deadline {
        let row = simple_row(&c, "SELECT inet_server_port()").await.unwrap_or_else(|e| panic!("warm-up: {e}"));
        let port = int("warm-up", &row, 0).unwrap() as u16;
        *seen.entry(node_name(&cluster.ports, port)).or_default() += 1;
        if followers.iter().all(|&f| seen.contains_key(&node_name(&cluster.ports, f))) {
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
pub fn counter_samples(metrics: &str, name: &str) -> BTreeMap<String, f64> {
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

pub fn counter_delta(before: &str, after: &str, name: &str) -> BTreeMap<String, f64> {
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

/// How many sessions of each kind, for how long, and whether a failover is expected meanwhile.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Sessions that write and read back their own rows (half simple, half extended protocol).
    pub ryw_sessions: i32,
    /// Sessions that read the counter.
    pub counter_readers: usize,
    /// Sessions that read answers, then questions.
    pub observers: usize,
    /// The workload's longest run; [`Running::stop`] ends it earlier.
    pub run_for: Duration,
    /// Reconnect closed sessions, count errors instead of failing on them, keep suspects.
    pub through_failover: bool,
    /// The followers' ports the warm-up waits for (empty: nodes 1.. as the cluster was started).
    pub followers: Vec<u16>,
}

/// What a violation saw first, for [`Report::judge`] to check against the new leader's data.
#[derive(Clone, Debug)]
pub enum Suspect {
    /// Session `session` had row `seq` acknowledged and then did not read it.
    Ryw { session: i32, seq: i32 },
    /// A counter reader read `prev`, then less.
    Counter { prev: i64 },
    /// An observer saw question `prev` as the highest, then a lower highest.
    Questions { prev: i64 },
    /// An observer saw answer `prev` as the highest, then a lower highest.
    Answers { prev: i64 },
    /// An observer saw answer `answer`, then not its question.
    Prefix { answer: i64 },
}

/// What one session (or a whole run) saw.
#[derive(Default)]
pub struct Tally {
    pub ryw_reads: usize,
    pub ryw_violations: usize,
    /// Read-your-writes (reads, violations) by how the session writes.
    pub ryw_by_style: BTreeMap<String, (usize, usize)>,
    pub monotonic_reads: usize,
    pub monotonic_violations: usize,
    pub prefix_checks: usize,
    pub prefix_violations: usize,
    /// Acknowledged writes of every kind.
    pub writes: usize,
    pub questions: usize,
    pub answers: usize,
    /// Reads per answering server port.
    pub reads_by_port: BTreeMap<u16, usize>,
    /// The first errors (see `error_count` for all of them).
    pub errors: Vec<String>,
    pub error_count: usize,
    /// New sessions opened after the proxy closed one.
    pub reconnects: usize,
    /// Observer reads whose questions were not 1..=max (a question lost in a failover).
    pub gaps: usize,
    /// Every violation's first observation.
    pub suspects: Vec<Suspect>,
    /// The counter writer's acknowledged values and the port that acknowledged each, in order.
    pub counter_acks: Vec<(i64, u16)>,
    /// The first few violations of each guarantee, with the statements and nodes involved.
    pub examples: BTreeMap<&'static str, Vec<String>>,
}

impl Tally {
    fn read_on(&mut self, port: u16) {
        *self.reads_by_port.entry(port).or_default() += 1;
    }

    fn error(&mut self, e: String) {
        self.error_count += 1;
        if self.errors.len() < ERRORS_KEPT {
            eprintln!("checker error: {e}");
            self.errors.push(e);
        }
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
        self.error_count += o.error_count;
        self.reconnects += o.reconnects;
        self.gaps += o.gaps;
        self.suspects.extend(o.suspects);
        self.counter_acks.extend(o.counter_acks);
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
    stop: AtomicBool,
    through_failover: bool,
}

impl Workload {
    async fn connect(&self) -> Result<Client, String> {
        session(&self.conn_str, &self.level, self.via).await
    }

    /// The session's first connection; through a failover it is retried until the run ends.
    async fn first_connection(&self, t: &mut Tally, who: &str) -> Option<Client> {
        loop {
            match self.connect().await {
                Ok(c) => return Some(c),
                Err(e) => t.error(format!("{who}: {e}")),
            }
            if !self.through_failover || !self.running() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new session when the proxy has closed `c`'s connection (None when the run is over).
    /// True in the second field when it is a new session.
    async fn keep(&self, c: Client, t: &mut Tally, who: &str) -> Option<(Client, bool)> {
        if !c.is_closed() {
            return Some((c, false));
        }
        drop(c);
        t.reconnects += 1;
        loop {
            if !self.running() {
                return None;
            }
            match self.connect().await {
                Ok(c) => return Some((c, true)),
                Err(e) => t.error(format!("{who} reconnecting: {e}")),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn node(&self, port: u16) -> String {
        node_name(&self.ports, port)
    }

    /// Milliseconds since the workload started, for examples.
    fn at(&self, t: Instant) -> String {
        format!("t0+{}ms", t.saturating_duration_since(self.t0).as_millis())
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }

    /// After a failed statement: a short pause through a failover (no busy loop on errors).
    async fn after_error(&self) {
        if self.through_failover {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The result of one checker run.
pub struct Report {
    pub level: String,
    pub via: Via,
    pub elapsed: Duration,
    pub tally: Tally,
    pub ports: Vec<u16>,
    pub routed: BTreeMap<String, f64>,
    pub fallbacks: BTreeMap<String, f64>,
    /// `pgcausal_position_probes_total` delta by labels.
    pub probes: BTreeMap<String, f64>,
}

impl Report {
    pub fn reads(&self) -> usize {
        self.tally.reads_by_port.values().sum()
    }

    /// Share of reads answered by a follower (any port but the initial leader's).
    pub fn follower_share(&self) -> f64 {
        let leader = self.ports[0];
        let on_followers: usize = self.tally.reads_by_port.iter().filter(|(p, _)| **p != leader).map(|(_, n)| n).sum();
        on_followers as f64 / self.reads().max(1) as f64
    }

    /// Share of units the proxy ran on followers, from `pgcausal_routed_total`.
    pub fn routed_follower_share(&self) -> f64 {
        let follower: f64 = self.routed.iter().filter(|(k, _)| k.contains("target=\"follower\"")).map(|(_, v)| v).sum();
        let all: f64 = self.routed.values().sum();
        if all == 0.0 {
            0.0
        } else {
            follower / all
        }
    }

    /// Sorts every violation into explained by a lost write (its first observation was of data
    /// the new leader lacks) or not.
    pub fn judge(&self, s: &Survivors) -> Verdict {
        let counter_floor = s.counter_floor(&self.tally.counter_acks);
        let mut v = Verdict { counter_floor, ..Default::default() };
        for suspect in &self.tally.suspects {
            let (explained, slot) = match *suspect {
                Suspect::Ryw { session, seq } => (!s.rows.contains(&(session, seq)), 0),
                Suspect::Counter { prev } => (counter_floor.is_some_and(|f| prev > f), 1),
                Suspect::Questions { prev } => (!s.questions.contains(&prev), 1),
                Suspect::Answers { prev } => (!s.answers.contains(&prev), 1),
                Suspect::Prefix { answer } => (!s.questions.contains(&answer), 2),
            };
            let counts = if explained { &mut v.explained } else { &mut v.unexplained };
            counts[slot] += 1;
            if !explained && v.examples.len() < EXAMPLES {
                v.examples.push(format!("{suspect:?}"));
            }
        }
        v
    }
}

/// [`Report::judge`]'s answer: (read-your-writes, monotonic, prefix) violations.
#[derive(Default, Debug)]
pub struct Verdict {
    pub unexplained: [usize; 3],
    pub explained: [usize; 3],
    /// The counter's value on the new leader when it took over, if the writer reached it.
    pub counter_floor: Option<i64>,
    pub examples: Vec<String>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, m, p] = self.unexplained;
        let [er, em, ep] = self.explained;
        write!(
            f,
            "violations not explained by lost writes: read-your-writes {r}, monotonic {m}, prefix {p}; \
             explained by lost writes: {er}, {em}, {ep} (counter on the new leader at takeover: {:?})",
            self.counter_floor
        )?;
        if !self.examples.is_empty() {
            write!(f, "; unexplained: {:?}", self.examples)?;
        }
        Ok(())
    }
}

/// What the new leader holds of the checker's tables after a failover (read on it directly).
pub struct Survivors {
    pub rows: HashSet<(i32, i32)>,
    pub questions: HashSet<i64>,
    pub answers: HashSet<i64>,
    /// The new leader's port: its first counter acknowledgement tells its value at takeover.
    pub port: u16,
}

impl Survivors {
    pub async fn read(port: u16, db: &str) -> Result<Survivors, String> {
        let c = connect_node(port, db).await?;
        let rows = simple_rows(&c, "SELECT session, seq FROM rows").await?;
        let rows = rows
            .iter()
            .map(|r| Ok((int("rows", r, 0)? as i32, int("rows", r, 1)? as i32)))
            .collect::<Result<_, String>>()?;
        let ids = |rows: Vec<Vec<Option<String>>>| {
            rows.iter().map(|r| int("ids", r, 0)).collect::<Result<HashSet<i64>, String>>()
        };
        let questions = ids(simple_rows(&c, "SELECT id FROM questions").await?)?;
        let answers = ids(simple_rows(&c, "SELECT qid FROM answers").await?)?;
        Ok(Survivors { rows, questions, answers, port })
    }

    /// The counter's value on the new leader before its first increment there.
    fn counter_floor(&self, acks: &[(i64, u16)]) -> Option<i64> {
        acks.iter().find(|(_, port)| *port == self.port).map(|(v, _)| v - 1)
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
        if t.reconnects > 0 || t.gaps > 0 {
            writeln!(f, "  {} reconnects, {} observer reads with questions not 1..=max", t.reconnects, t.gaps)?;
        }
        writeln!(f, "  {} errors{}", t.error_count, if t.errors.is_empty() { "" } else { ", first ones:" })?;
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
pub fn prepare_database(cluster: &TestCluster, db: &str) {
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

/// A workload under way: stop it, then finish it for its report.
pub struct Running {
    w: Arc<Workload>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
    before: String,
    run_for: Duration,
}

/// Starts the workload through `proxy` at `level` (after a warm-up), its sessions logging in
/// with `conn_str`: `shape.ryw_sessions` read-your-writes sessions, 1 counter writer,
/// `shape.counter_readers` counter readers, a questioner, an answerer and `shape.observers`
/// observers.
pub async fn start(
    cluster: &TestCluster,
    proxy: &ProxyProcess,
    conn_str: &str,
    level: &str,
    via: Via,
    shape: &Shape,
) -> Running {
    let conn_str = conn_str.to_string();
    let followers = if shape.followers.is_empty() { &cluster.ports[1..] } else { &shape.followers[..] };
    warm_up_followers(cluster, followers, &conn_str).await;
    let before = proxy.metrics();
    let t0 = Instant::now();
    let w = Arc::new(Workload {
        conn_str,
        level: level.to_string(),
        via,
        ports: cluster.ports.clone(),
        t0,
        deadline: t0 + shape.run_for,
        stop: AtomicBool::new(false),
        through_failover: shape.through_failover,
    });
    let mut tasks = Vec::new();
    for id in 0..shape.ryw_sessions {
        tasks.push(tokio::spawn(ryw_session(w.clone(), id)));
    }
    tasks.push(tokio::spawn(counter_writer(w.clone())));
    for r in 0..shape.counter_readers {
        tasks.push(tokio::spawn(counter_reader(w.clone(), r)));
    }
    tasks.push(tokio::spawn(questioner(w.clone())));
    tasks.push(tokio::spawn(answerer(w.clone())));
    for o in 0..shape.observers {
        tasks.push(tokio::spawn(observer(w.clone(), o)));
    }
    Running { w, tasks, before, run_for: shape.run_for }
}

impl Running {
    /// Asks every session to finish its current step and end.
    pub fn stop(&self) {
        self.w.stop.store(true, Ordering::Relaxed);
    }

    /// Time since the workload started.
    pub fn elapsed(&self) -> Duration {
        self.w.t0.elapsed()
    }

    /// Waits for every session (bounded) and reports.
    pub async fn finish(self, proxy: &ProxyProcess) -> Report {
        let mut tally = Tally::default();
        let limit = self.run_for.saturating_sub(self.w.t0.elapsed()) + QUERY_TIMEOUT + Duration::from_secs(10);
        for task in self.tasks {
            match tokio::time::timeout(limit, task).await {
                Ok(Ok(t)) => tally.merge(t),
                Ok(Err(e)) => tally.error(format!("session task failed: {e}")),
                Err(_) => tally.error("session task did not finish".into()),
            }
        }
        let elapsed = self.w.t0.elapsed();
        let after = proxy.metrics();
        Report {
            level: self.w.level.clone(),
            via: self.w.via,
            elapsed,
            tally,
            ports: self.w.ports.clone(),
            routed: counter_delta(&self.before, &after, "pgcausal_routed_total"),
            fallbacks: counter_delta(&self.before, &after, "pgcausal_consistency_fallbacks_total"),
            probes: counter_delta(&self.before, &after, "pgcausal_position_probes_total"),
        }
    }
}

/// Runs the workload through `proxy` at `level` for `shape.run_for` and reports.
pub async fn check(
    cluster: &TestCluster,
    proxy: &ProxyProcess,
    db: &str,
    level: &str,
    via: Via,
    shape: &Shape,
) -> Report {
    start(cluster, proxy, &proxy.conn_str(db), level, via, shape).await.finish(proxy).await
}

/// Session `id` writes (id, 1), (id, 2), ... and after each acknowledged write reads back
/// `max(seq)` of its rows. Its protocol and write style depend on `id % 8`:
/// 0, 6 simple autocommit; 1 extended, statements prepared once per session; 2 simple BEGIN /
/// INSERT / COMMIT as three messages; 3, 7 extended in a transaction; 4 simple
/// `BEGIN; INSERT; COMMIT` in one Query; 5 extended with SQL text each time.
async fn ryw_session(w: Arc<Workload>, id: i32) -> Tally {
    let mut t = Tally::default();
    let who = format!("ryw session {id}");
    let Some(mut c) = w.first_connection(&mut t, &who).await else { return t };
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
    let mut prepared = None;
    let mut seq = 0i32;
    while w.running() {
        let Some((kept, new)) = w.keep(c, &mut t, &who).await else { return t };
        c = kept;
        if new {
            prepared = None;
        }
        if mode == 1 && prepared.is_none() {
            match (timed("prepare", c.prepare(INSERT)).await, timed("prepare", c.prepare(READ)).await) {
                (Ok(i), Ok(r)) => prepared = Some((i, r)),
                (Err(e), _) | (_, Err(e)) => {
                    t.error(format!("{who}: {e}"));
                    if !w.through_failover {
                        return t;
                    }
                    w.after_error().await;
                    continue;
                }
            }
        }
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
                t.error(format!("{who} ({style}) write seq {seq}: {e}"));
                w.after_error().await;
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
                    t.suspects.push(Suspect::Ryw { session: id, seq: acked });
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
            Err(e) => {
                t.error(format!("{who} ({style}) read: {e}"));
                w.after_error().await;
            }
        }
    }
    t
}

/// Increments the counter as fast as it can, on its own connection, noting each acknowledged
/// value and where it was acknowledged.
async fn counter_writer(w: Arc<Workload>) -> Tally {
    let mut t = Tally::default();
    let who = "counter writer";
    let Some(mut c) = w.first_connection(&mut t, who).await else { return t };
    const INCREMENT: &str = "UPDATE counter SET v = v + 1 WHERE id = 1 RETURNING v, inet_server_port()";
    while w.running() {
        let Some((kept, _)) = w.keep(c, &mut t, who).await else { return t };
        c = kept;
        match simple_row(&c, INCREMENT)
            .await
            .and_then(|row| Ok((int(INCREMENT, &row, 0)?, int(INCREMENT, &row, 1)? as u16)))
        {
            Ok(ack) => {
                t.writes += 1;
                t.counter_acks.push(ack);
            }
            Err(e) => {
                t.error(format!("{who}: {e}"));
                w.after_error().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t
}

/// Reads the counter over and over; it must never go down within a session. Even readers use
/// the simple protocol, odd ones the extended protocol.
async fn counter_reader(w: Arc<Workload>, r: usize) -> Tally {
    let mut t = Tally::default();
    let who = format!("counter reader {r}");
    let Some(mut c) = w.first_connection(&mut t, &who).await else { return t };
    const READ: &str = "SELECT v, inet_server_port() FROM counter WHERE id = 1";
    // (value, node, when) of the highest value seen so far in this session.
    let mut last: Option<(i64, u16, Instant)> = None;
    while w.running() {
        let Some((kept, new)) = w.keep(c, &mut t, &who).await else { return t };
        c = kept;
        if new {
            last = None;
        }
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
                        t.suspects.push(Suspect::Counter { prev });
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
            Err(e) => {
                t.error(format!("{who}: {e}"));
                w.after_error().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    t
}

/// Q: asks questions 1, 2, 3, ... (extended protocol, autocommit, in order).
async fn questioner(w: Arc<Workload>) -> Tally {
    let mut t = Tally::default();
    let who = "questioner";
    let Some(mut c) = w.first_connection(&mut t, who).await else { return t };
    const ASK: &str = "INSERT INTO questions (id) VALUES ($1)";
    let mut next = 1i32;
    while w.running() {
        let Some((kept, _)) = w.keep(c, &mut t, who).await else { return t };
        c = kept;
        match timed(ASK, c.execute(ASK, &[&next])).await {
            Ok(_) => {
                t.writes += 1;
                t.questions += 1;
                next += 1;
            }
            // Retrying the same id: a lost acknowledgement shows as a duplicate key, then move on.
            Err(e) if e.contains("23505") => next += 1,
            Err(e) => {
                t.error(format!("{who}: {e}"));
                w.after_error().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t
}

/// A: reads the questions it has not answered yet (simple protocol, through the proxy's routing)
/// and answers exactly those.
async fn answerer(w: Arc<Workload>) -> Tally {
    let mut t = Tally::default();
    let who = "answerer";
    let Some(mut c) = w.first_connection(&mut t, who).await else { return t };
    let mut answered = 0i64;
    while w.running() {
        let Some((kept, _)) = w.keep(c, &mut t, who).await else { return t };
        c = kept;
        let sql = format!(
            "SELECT string_agg(id::text, ',' ORDER BY id), inet_server_port() FROM questions WHERE id > {answered}"
        );
        let row = match simple_row(&c, &sql).await {
            Ok(row) => row,
            Err(e) => {
                t.error(format!("{who}: {e}"));
                w.after_error().await;
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
            Err(e) => {
                t.error(format!("{who}: {e}"));
                w.after_error().await;
            }
        }
    }
    t
}

/// Reads the highest answer, then (in a later statement) the questions: the answered question
/// must be there. Questions are asked in order by one session, so every snapshot holds a prefix
/// 1..=max of them (checked: count = max; through a failover a lost question leaves a gap, only
/// counted). Both maxima must also never go down within a session (monotonic).
/// Even observers use the simple protocol, odd ones the extended protocol.
async fn observer(w: Arc<Workload>, o: usize) -> Tally {
    let mut t = Tally::default();
    let who = format!("observer {o}");
    let Some(mut c) = w.first_connection(&mut t, &who).await else { return t };
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
        let Some((kept, new)) = w.keep(c, &mut t, &who).await else { return t };
        c = kept;
        if new {
            (last_answer, last_question) = (0, 0);
        }
        let a_at = Instant::now();
        let (answer, _, a_port) = match read(&c, ANSWERS, simple).await {
            Ok(r) => r,
            Err(e) => {
                t.error(format!("{who}: {e}"));
                w.after_error().await;
                continue;
            }
        };
        t.read_on(a_port);
        let q_at = Instant::now();
        let (question, count, q_port) = match read(&c, QUESTIONS, simple).await {
            Ok(r) => r,
            Err(e) => {
                t.error(format!("{who}: {e}"));
                w.after_error().await;
                continue;
            }
        };
        t.read_on(q_port);
        if count != question {
            if w.through_failover {
                t.gaps += 1;
            } else {
                t.error(format!(
                    "{who}: questions are not a prefix: count {count}, max {question} on {}",
                    w.node(q_port)
                ));
            }
        }
        t.prefix_checks += 1;
        if answer > question {
            t.prefix_violations += 1;
            t.suspects.push(Suspect::Prefix { answer });
            t.example(
                "consistent prefix",
                format!(
                    "{who} saw the answer to question {answer} on {} at {}, then only questions \
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
                t.suspects.push(if what == "answers" {
                    Suspect::Answers { prev }
                } else {
                    Suspect::Questions { prev }
                });
                t.example(
                    "monotonic",
                    format!("{who} had seen {what} up to {prev}, then up to {now} on {} at {}", w.node(port), w.at(at)),
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
pub fn assert_sound(r: &Report, ryw: bool, monotonic: bool, prefix: bool) {
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
    assert!(t.error_count == 0, "{} statements failed on a healthy cluster\n{r}", t.error_count);
}
