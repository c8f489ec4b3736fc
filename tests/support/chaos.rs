//! Faults and their witnesses, for tests/failover.rs: nodes killed or frozen behind guards that
//! undo it on drop, a TCP relay that can be cut, writers that count every acknowledged write by
//! id, a login loop, console tables, polling with deadlines and a per-test watchdog.

use super::*;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_postgres::{Client, NoTls};

/// A multi-threaded runtime for a test's clients (2 workers: the machine has 2 cores).
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The cluster, also when an earlier panic poisoned its lock (guards run while unwinding).
pub fn lock(tc: &TestCluster) -> MutexGuard<'_, pgcausal::cluster::Cluster> {
    tc.cluster.lock().unwrap_or_else(|e| e.into_inner())
}

/// SQL as superuser on node `i` (psql -At), or its error.
pub fn try_sql(tc: &TestCluster, i: usize, db: &str, sql: &str) -> Result<String, String> {
    lock(tc).psql(i, db, sql).map_err(|e| e.to_string())
}

/// A direct connection to a node by port, as the test user (a superuser), bypassing the proxy.
pub async fn connect_node(port: u16, db: &str) -> Result<Client, String> {
    let mut config = tokio_postgres::Config::new();
    config.host("127.0.0.1").port(port).user(USER).password(PASSWORD).dbname(db);
    config.connect_timeout(Duration::from_secs(3));
    let (client, conn) = match tokio::time::timeout(Duration::from_secs(5), config.connect(NoTls)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(format!("connect to port {port}: {}", pg_error(&e))),
        Err(_) => return Err(format!("connect to port {port}: no answer within 5 s")),
    };
    tokio::spawn(conn);
    Ok(client)
}

/// Polls `f` every 100 ms until it returns Some, for at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if started.elapsed() >= timeout {
            return Err(format!("{what}: not within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Guards: whatever a test breaks is repaired when the guard drops, also when the test panics
// ---------------------------------------------------------------------------------------------

/// PIDs stopped with SIGSTOP and not yet continued: the watchdog continues them before exiting.
static FROZEN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Node `i`'s processes, stopped with SIGSTOP until [`Frozen::thaw`] or drop (SIGCONT).
pub struct Frozen {
    pids: Vec<u32>,
    pub at: Instant,
}

pub fn freeze(tc: &TestCluster, i: usize) -> Frozen {
    let pids = lock(tc).freeze_node(i).unwrap_or_else(|e| panic!("freeze node{i}: {e}"));
    FROZEN.lock().unwrap_or_else(|e| e.into_inner()).extend(&pids);
    Frozen { pids, at: Instant::now() }
}

impl Frozen {
    pub fn thaw(mut self) {
        self.thaw_now();
    }

    fn thaw_now(&mut self) {
        pgcausal::cluster::thaw(&self.pids);
        FROZEN.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| !self.pids.contains(p));
        self.pids.clear();
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw_now();
    }
}

/// Node `i` killed (SIGKILL to its postmaster and every child); started again on drop unless
/// the test brought it back itself ([`Killed::restored`]).
pub struct Killed<'a> {
    tc: &'a TestCluster,
    pub node: usize,
    pub at: Instant,
    armed: bool,
}

pub fn kill(tc: &TestCluster, i: usize) -> Killed<'_> {
    lock(tc).kill_node(i).unwrap_or_else(|e| panic!("kill node{i}: {e}"));
    Killed { tc, node: i, at: Instant::now(), armed: true }
}

/// SIGKILL to node `i`'s postmaster alone (its backends exit on their own); the time is the kill's.
pub fn kill_postmaster(tc: &TestCluster, i: usize) -> Killed<'_> {
    let at = Instant::now();
    lock(tc).kill_postmaster(i).unwrap_or_else(|e| panic!("kill node{i}'s postmaster: {e}"));
    Killed { tc, node: i, at, armed: true }
}

impl Killed<'_> {
    /// The test restarted or rebuilt the node: nothing to undo.
    pub fn restored(mut self) {
        self.armed = false;
    }
}

impl Drop for Killed<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut cluster = lock(self.tc);
            if !cluster.is_running(self.node) {
                if let Err(e) = cluster.start_node(self.node) {
                    eprintln!("restarting killed node{}: {e}", self.node);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A TCP relay that can be cut
// ---------------------------------------------------------------------------------------------

/// A TCP relay on 127.0.0.1 in front of one port, on its own runtime. Cut, it drops every live
/// connection and closes new ones as soon as they are accepted (the far side sees a reset or
/// EOF at once); restored, it relays again.
pub struct Relay {
    pub port: u16,
    cut: watch::Sender<bool>,
    rt: Option<Runtime>,
}

impl Relay {
    pub fn start(target: u16) -> Relay {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("relay binds");
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(false);
        let state = cut.subscribe();
        rt.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                if *state.borrow() {
                    drop(client);
                    continue;
                }
                let mut state = state.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else { return };
                    let mut client = client;
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Relay { port, cut, rt: Some(rt) }
    }

    /// Cuts the relay until the guard drops (or [`RelayCut::restore`]).
    pub fn cut(&self) -> RelayCut<'_> {
        self.cut.send_replace(true);
        RelayCut { relay: self, at: Instant::now() }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub struct RelayCut<'a> {
    relay: &'a Relay,
    pub at: Instant,
}

impl RelayCut<'_> {
    pub fn restore(self) {}
}

impl Drop for RelayCut<'_> {
    fn drop(&mut self) {
        self.relay.cut.send_replace(false);
    }
}

// ---------------------------------------------------------------------------------------------
// Writers that count their writes by id
// ---------------------------------------------------------------------------------------------

/// The table the writers insert into, on node 0 (the initial leader), replicated everywhere.
pub fn create_acks_table(tc: &TestCluster, db: &str) {
    tc.sql(0, db, "CREATE TABLE acks (id bigint PRIMARY KEY, writer int NOT NULL)");
    lock(tc).wait_replicated(Duration::from_secs(30)).expect("replicated");
}

/// One acknowledged write: its id, when it was sent, when its COMMIT was acknowledged and the
/// port of the server that acknowledged it (`inet_server_port()`).
#[derive(Clone, Debug)]
pub struct Ack {
    pub id: i64,
    pub started: Instant,
    pub acked: Instant,
    pub port: u16,
}

/// A write that got an error (it may or may not have committed: never counted either way).
#[derive(Clone, Debug)]
pub struct Failure {
    pub id: i64,
    pub started: Instant,
    pub at: Instant,
    pub error: String,
}

#[derive(Default)]
pub struct WriteLog {
    pub acks: Vec<Ack>,
    pub failures: Vec<Failure>,
    pub reconnects: usize,
}

impl WriteLog {
    /// The first write sent at or after `t` that was acknowledged (by acknowledgement time).
    pub fn first_ack_started_after(&self, t: Instant) -> Option<&Ack> {
        self.acks.iter().filter(|a| a.started >= t).min_by_key(|a| a.acked)
    }

    /// Errors by SQLSTATE class or kind, for the report.
    pub fn failure_kinds(&self) -> BTreeMapCount {
        let mut kinds = BTreeMapCount::new();
        for f in &self.failures {
            *kinds.entry(error_kind(&f.error)).or_default() += 1;
        }
        kinds
    }

    pub fn ids(&self) -> Vec<i64> {
        self.acks.iter().map(|a| a.id).collect()
    }
}

pub type BTreeMapCount = std::collections::BTreeMap<String, usize>;

/// "ERROR 57P03" from "... ERROR 57P03: message", else the first words of the error.
pub fn error_kind(e: &str) -> String {
    let words: Vec<&str> = e.split_whitespace().collect();
    for pair in words.windows(2) {
        if matches!(pair[0], "ERROR" | "FATAL") && pair[1].len() == 6 {
            return format!("{} {}", pair[0], pair[1].trim_end_matches(':'));
        }
    }
    e.chars().take(60).collect()
}

/// `n` writers inserting (id, writer) rows through the proxy, each id recorded only after its
/// COMMIT was acknowledged; a writer whose connection closes opens a new one.
pub struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<WriteLog>>,
    /// Every acknowledged write so far, for tests that wait on progress.
    live: Arc<Mutex<Vec<Ack>>>,
}

impl Writers {
    pub fn start(rt: &Runtime, conn_str: &str, n: i64) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let tasks = (0..n).map(|w| rt.spawn(writer(conn_str.to_string(), w, stop.clone(), live.clone()))).collect();
        Writers { stop, tasks, live }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.live.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Writes acknowledged so far that were sent at or after `t` by a server on `port` (any
    /// port if None).
    pub fn acked_since(&self, t: Instant, port: Option<u16>) -> Vec<Ack> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.iter().filter(|a| a.started >= t && port.is_none_or(|p| a.port == p)).cloned().collect()
    }

    /// The first write sent at or after `t` that was acknowledged, so far.
    pub fn first_ack_started_after(&self, t: Instant) -> Option<Ack> {
        self.acked_since(t, None).into_iter().min_by_key(|a| a.acked)
    }

    pub fn stop(self, rt: &Runtime) -> WriteLog {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(async {
            let mut log = WriteLog::default();
            for task in self.tasks {
                match tokio::time::timeout(Duration::from_secs(30), task).await {
                    Ok(Ok(l)) => {
                        log.acks.extend(l.acks);
                        log.failures.extend(l.failures);
                        log.reconnects += l.reconnects;
                    }
                    Ok(Err(e)) => panic!("writer task failed: {e}"),
                    Err(_) => panic!("writer task did not finish within 30 s of being stopped"),
                }
            }
            log
        })
    }
}

async fn connect_proxy(conn_str: &str) -> Result<Client, String> {
    let mut config: tokio_postgres::Config = conn_str.parse().map_err(|e| format!("{e}"))?;
    config.connect_timeout(Duration::from_secs(10));
    match tokio::time::timeout(Duration::from_secs(15), config.connect(NoTls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            Ok(client)
        }
        Ok(Err(e)) => Err(format!("connect: {}", pg_error(&e))),
        Err(_) => Err("connect: no answer within 15 s".into()),
    }
}

/// A statement bounded in time (above the proxy's 15 s hold of writes without a leader).
async fn bounded<T>(f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(20), f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(pg_error(&e)),
        Err(_) => Err("no answer within 20 s".into()),
    }
}

async fn writer(conn_str: String, w: i64, stop: Arc<AtomicBool>, live: Arc<Mutex<Vec<Ack>>>) -> WriteLog {
    let mut log = WriteLog::default();
    let mut client: Option<Client> = None;
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let c = match client.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => match connect_proxy(&conn_str).await {
                Ok(c) => {
                    log.reconnects += usize::from(n > 0);
                    c
                }
                Err(e) => {
                    log.failures.push(Failure { id: -1, started: Instant::now(), at: Instant::now(), error: e });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        n += 1;
        let id = w * 1_000_000_000 + n;
        let sql = format!("INSERT INTO acks (id, writer) VALUES ({id}, {w}) RETURNING inet_server_port()");
        let started = Instant::now();
        let result = bounded(c.simple_query(&sql)).await;
        let at = Instant::now();
        match result.map(|m| simple_query_rows(&m)) {
            Ok(rows) => {
                let port = rows.first().and_then(|r| r[0].as_deref()).and_then(|p| p.parse().ok()).unwrap_or(0);
                let ack = Ack { id, started, acked: at, port };
                live.lock().unwrap_or_else(|e| e.into_inner()).push(ack.clone());
                log.acks.push(ack);
            }
            Err(error) => {
                log.failures.push(Failure { id, started, at, error });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        client = Some(c);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    log
}

/// Which acknowledged ids a node holds (read on it directly, by port).
pub struct Lost {
    pub acked: usize,
    pub lost: Vec<i64>,
    /// Rows present whose writes got an error (committed, acknowledgement lost).
    pub unacknowledged_present: usize,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acknowledged writes, {} lost (acknowledged, absent on the new leader){}, {} present without an acknowledgement",
            self.acked,
            self.lost.len(),
            if self.lost.is_empty() { String::new() } else { format!(" e.g. ids {:?}", &self.lost[..self.lost.len().min(5)]) },
            self.unacknowledged_present
        )
    }
}

use std::fmt;

pub async fn count_lost(port: u16, db: &str, log: &WriteLog) -> Result<Lost, String> {
    let c = connect_node(port, db).await?;
    let rows = bounded(c.simple_query("SELECT id FROM acks")).await?;
    let present: HashSet<i64> =
        simple_query_rows(&rows).iter().filter_map(|r| r[0].as_deref().and_then(|v| v.parse().ok())).collect();
    let acked: HashSet<i64> = log.ids().into_iter().collect();
    let mut lost: Vec<i64> = acked.iter().copied().filter(|id| !present.contains(id)).collect();
    lost.sort();
    Ok(Lost {
        acked: acked.len(),
        lost,
        unacknowledged_present: present.iter().filter(|id| !acked.contains(id)).count(),
    })
}

// ---------------------------------------------------------------------------------------------
// Logins
// ---------------------------------------------------------------------------------------------

/// New sessions through the proxy, one after another (every 100 ms): log in, `SELECT 1`, leave.
pub struct Logins {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Login>>,
}

#[derive(Debug)]
pub struct Login {
    pub started: Instant,
    pub took: Duration,
    pub result: Result<(), String>,
}

impl Logins {
    pub fn start(rt: &Runtime, conn_str: &str) -> Logins {
        let stop = Arc::new(AtomicBool::new(false));
        let (conn_str, flag) = (conn_str.to_string(), stop.clone());
        let task = rt.spawn(async move {
            let mut logins = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                let result = async {
                    let c = connect_proxy(&conn_str).await?;
                    bounded(c.simple_query("SELECT 1")).await.map(drop)
                }
                .await;
                logins.push(Login { started, took: started.elapsed(), result });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            logins
        });
        Logins { stop, task }
    }

    pub fn stop(self, rt: &Runtime) -> Vec<Login> {
        self.stop.store(true, Ordering::Relaxed);
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), self.task).await })
            .expect("login loop ends within 30 s")
            .expect("login loop task")
    }
}

// ---------------------------------------------------------------------------------------------
// The console
// ---------------------------------------------------------------------------------------------

/// A console answer: column names and rows.
#[derive(Debug, Clone)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn get<'a>(&'a self, row: &'a [String], column: &str) -> Option<&'a str> {
        let i = self.columns.iter().position(|c| c == column)?;
        row.get(i).map(String::as_str)
    }

    /// The first row whose `column` is `value`.
    pub fn find(&self, column: &str, value: &str) -> Option<&Vec<String>> {
        self.rows.iter().find(|r| self.get(r, column) == Some(value))
    }

    /// `column` of the row whose `key` is `value`.
    pub fn value(&self, key: &str, value: &str, column: &str) -> Option<&str> {
        self.get(self.find(key, value)?, column)
    }

    /// One line per row, `column=value` pairs, for reports.
    pub fn describe(&self) -> String {
        self.rows
            .iter()
            .map(|r| self.columns.iter().zip(r).map(|(c, v)| format!("{c}={v}")).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A console command (without waiting for followers), as a table.
pub fn show(proxy: &ProxyProcess, command: &str) -> Result<Table, String> {
    let mut rows = proxy.admin_now(command)?;
    if rows.is_empty() {
        return Err(format!("{command}: no header"));
    }
    let columns = rows.remove(0);
    Ok(Table { columns, rows })
}

// ---------------------------------------------------------------------------------------------
// The watchdog
// ---------------------------------------------------------------------------------------------

/// Ends the test process if a test overruns its time limit: continues every frozen process,
/// prints the proxy's log tail and exits (atexit handlers stop the servers).
pub struct Watchdog {
    done: Option<std::sync::mpsc::Sender<()>>,
    log: Arc<Mutex<Option<PathBuf>>>,
    test: &'static str,
    started: Instant,
}

impl Watchdog {
    pub fn start(test: &'static str, limit: Duration) -> Watchdog {
        let (done, rx) = std::sync::mpsc::channel::<()>();
        let log: Arc<Mutex<Option<PathBuf>>> = Arc::default();
        let path = log.clone();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("{test}: still running after {limit:?}: giving up");
                let frozen = FROZEN.lock().unwrap_or_else(|e| e.into_inner()).clone();
                pgcausal::cluster::thaw(&frozen);
                if let Some(p) = path.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    eprint_log_tail("pgcausal", &std::fs::read_to_string(p).unwrap_or_default(), 60);
                }
                std::process::exit(101);
            }
        });
        Watchdog { done: Some(done), log, test, started: Instant::now() }
    }

    /// The proxy whose log to print.
    pub fn watch(&self, proxy: &ProxyProcess) {
        *self.log.lock().unwrap_or_else(|e| e.into_inner()) = Some(proxy.log_path());
        *WATCHED.lock().unwrap_or_else(|e| e.into_inner()) = Some(proxy.log_path());
    }
}

/// The log of the proxy the running test's watchdog watches.
static WATCHED: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The last `lines` lines of the watched proxy's log, without the console's own logins and
/// commands (the tests poll the console), to stderr.
pub fn eprint_proxy_log(lines: usize) {
    let Some(path) = WATCHED.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let quiet: Vec<&str> =
        log.lines().filter(|l| !l.contains("admin console session") && !l.contains("admin command")).collect();
    eprint_log_tail("pgcausal (console lines left out)", &quiet.join("\n"), lines);
}

impl Drop for Watchdog {
    /// Stops watching and prints the test's wall time.
    fn drop(&mut self) {
        self.done.take();
        eprintln!(
            "{}: {:.1?}{}",
            self.test,
            self.started.elapsed(),
            if std::thread::panicking() { " (failed)" } else { "" }
        );
    }
}
