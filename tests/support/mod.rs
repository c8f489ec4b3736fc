//! Test harness: real PostgreSQL clusters (src/cluster/) and a real `pgcausal` process in front.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod chaos;
pub mod checker;

use pgcausal::cluster::{Cluster, ClusterSpec, PasswordEncryption, UserSpec};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const USER: &str = "app";
pub const PASSWORD: &str = "secret";
pub const MD5_USER: &str = "md5user";
pub const MD5_PASSWORD: &str = "md5secret";
pub const TRUST_USER: &str = "trusty";
pub const TRUST_PASSWORD: &str = "trusty-server-password";

/// A cluster owned by a test binary (or a single test); removed from disk when dropped.
pub struct TestCluster {
    pub cluster: Mutex<Cluster>,
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

fn spec(root: PathBuf, followers: usize) -> ClusterSpec {
    let mut spec = ClusterSpec::new(root);
    spec.followers = followers;
    let mut app = UserSpec::new(USER, PASSWORD);
    app.superuser = true;
    let mut md5 = UserSpec::new(MD5_USER, MD5_PASSWORD);
    md5.password_encryption = PasswordEncryption::Md5;
    md5.superuser = true;
    let mut trusty = UserSpec::new(TRUST_USER, TRUST_PASSWORD);
    trusty.superuser = true;
    spec.users = vec![app, md5, trusty];
    spec.hba_extra = vec![format!("host all {MD5_USER} 127.0.0.1/32 md5")];
    spec
}

impl TestCluster {
    /// A new leader + `followers` cluster; `tweak` may adjust the spec (e.g. follower delays).
    pub fn start(followers: usize, tweak: impl FnOnce(&mut ClusterSpec)) -> TestCluster {
        let dir = tempfile::Builder::new().prefix("pgcausal-test-").tempdir().expect("tempdir");
        let mut spec = spec(dir.path().join("cluster"), followers);
        tweak(&mut spec);
        let cluster = Cluster::start(spec).expect("cluster starts");
        let ports = cluster.nodes().iter().map(|n| n.port).collect();
        TestCluster { cluster: Mutex::new(cluster), ports, _dir: dir }
    }

    /// Runs SQL as superuser on node `i` (psql -At) and returns its output.
    pub fn sql(&self, i: usize, db: &str, sql: &str) -> String {
        self.cluster.lock().unwrap().psql(i, db, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// A fresh database for one test, present on every follower before returning.
    pub fn create_database(&self, name: &str) {
        self.sql(0, "postgres", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        self.sql(0, "postgres", &format!("CREATE DATABASE {name}"));
        self.cluster.lock().unwrap().wait_replicated(Duration::from_secs(30)).expect("replicated");
    }
}

/// One cluster shared by every test of a binary (each test uses its own database).
pub fn shared_cluster() -> &'static TestCluster {
    static SHARED: OnceLock<TestCluster> = OnceLock::new();
    static_cluster(&SHARED, || TestCluster::start(2, |_| {}))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Settings for a proxy under test.
#[derive(Clone)]
pub struct ProxyOptions {
    pub pool_mode: &'static str,
    pub pool_size: usize,
    /// Extra lines for the [proxy] table.
    pub proxy_section: String,
    /// Extra lines for the [pool] table (acquire_timeout defaults to 10s unless set here).
    pub pool_section: String,
    /// Extra lines for the [monitor] table.
    pub monitor_section: String,
    /// Each [[nodes]] entry names its data directory (for the rejoin hook).
    pub node_data_dirs: bool,
    /// Extra TOML appended verbatim.
    pub extra: String,
    /// The port the config names for each node (e.g. a relay's in front of one); default the
    /// cluster's own ports.
    pub node_ports: Option<Vec<u16>>,
    /// Extra lines for every [[nodes]] entry (e.g. `tls = "verify-full"`).
    pub node_extra: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            pool_mode: "transaction",
            pool_size: 4,
            proxy_section: String::new(),
            pool_section: String::new(),
            monitor_section: String::new(),
            node_data_dirs: false,
            extra: String::new(),
            node_ports: None,
            node_extra: String::new(),
        }
    }
}

/// A `pgcausal serve` child process; killed (by PID) when dropped.
pub struct ProxyProcess {
    child: Child,
    /// The cluster's node ports (leader first as started), for waiting on replication.
    node_ports: Vec<u16>,
    pub port: u16,
    pub metrics_port: u16,
    pub config_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProxyProcess {
    pub fn start(cluster: &TestCluster, options: ProxyOptions) -> ProxyProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, metrics_port) = (free_port(), free_port());
        let mut pool_section = options.pool_section.clone();
        if !pool_section.contains("acquire_timeout") {
            pool_section += "\nacquire_timeout = \"10s\"";
        }
        let mut config = format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\npool_mode = \"{}\"\n{}\n\
             [pool]\nsize = {}\n{pool_section}\n\
             [metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [monitor]\ninterval = \"100ms\"\n{}\n",
            options.pool_mode, options.proxy_section, options.pool_size, options.monitor_section
        );
        let data_dirs: Vec<PathBuf> = cluster.cluster.lock().unwrap().nodes().into_iter().map(|n| n.data_dir).collect();
        for (i, p) in options.node_ports.as_ref().unwrap_or(&cluster.ports).iter().enumerate() {
            config += &format!("[[nodes]]\nname = \"node{i}\"\nhost = \"127.0.0.1\"\nport = {p}\n");
            if options.node_data_dirs {
                config += &format!("data_dir = {:?}\n", data_dirs[i].display().to_string());
            }
            config += &options.node_extra;
        }
        config += &format!(
            "[[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
             [[users]]\nname = \"{MD5_USER}\"\npassword = \"{MD5_PASSWORD}\"\nauth = \"md5\"\n\
             [[users]]\nname = \"{TRUST_USER}\"\npassword = \"{TRUST_PASSWORD}\"\nauth = \"trust\"\n"
        );
        config += &options.extra;
        let config_path = dir.path().join("pgcausal.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("pgcausal.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pgcausal"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("PGCAUSAL_LOG", std::env::var("PGCAUSAL_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pgcausal starts");
        let node_ports = cluster.ports.clone();
        let proxy = ProxyProcess { child, node_ports, port, metrics_port, config_path, _dir: dir };
        proxy.wait_ready();
        proxy
    }

    /// Waits until a client can log in and run a query (the monitors have found the leader).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.psql("postgres", &["-c", "select 1"], None);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxy not ready: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> PathBuf {
        self._dir.path().join("pgcausal.log")
    }

    /// psql through the proxy as the main test user, with -X -v ON_ERROR_STOP=1 -At.
    pub fn psql(&self, db: &str, args: &[&str], stdin: Option<&str>) -> Output {
        self.psql_as(USER, PASSWORD, db, args, stdin)
    }

    /// Waits until every reachable follower has replayed what the primary has flushed. Each psql
    /// call is a new session, and pgcausal promises causality within a session (or through
    /// `pgcausal.min_lsn`), not across unrelated sessions: tests that read in one psql what another
    /// wrote wait for replication first.
    pub fn wait_for_followers(&self) {
        let query = |port: u16, sql: &str| -> Option<String> {
            let out = Command::new(pg_bin("psql"))
                .args([
                    "-X",
                    "-At",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    sql,
                ])
                .env("PGPASSWORD", "postgres")
                .env("PGCONNECT_TIMEOUT", "2")
                .output()
                .ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let Some(primary) =
            self.node_ports.iter().copied().find(|&p| query(p, "SELECT pg_is_in_recovery()").as_deref() == Some("f"))
        else {
            return;
        };
        let Some(target) = query(primary, "SELECT pg_current_wal_flush_lsn()") else { return };
        let deadline = Instant::now() + Duration::from_secs(30);
        for &port in self.node_ports.iter().filter(|&&p| p != primary) {
            let caught_up = format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn");
            while Instant::now() < deadline {
                match query(port, &caught_up).as_deref() {
                    Some("t") | None => break, // caught up, or down (not serving reads)
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }

    pub fn psql_as(&self, user: &str, password: &str, db: &str, args: &[&str], stdin: Option<&str>) -> Output {
        self.wait_for_followers();
        self.psql_as_now(user, password, db, args, stdin)
    }

    /// `psql_as` without waiting for the followers first (for tests whose nodes are down,
    /// frozen or forked on purpose).
    pub fn psql_as_now(&self, user: &str, password: &str, db: &str, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(pg_bin("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                db,
            ])
            .args(args)
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql runs");
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// Sends a signal to the proxy process.
    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits up to `timeout` for the proxy to exit; its status, or None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A console command through psql as `user` (an admin), with the column names as the first
    /// row; each row's values split on `|`.
    pub fn admin_as(&self, user: &str, password: &str, command: &str) -> Result<Vec<Vec<String>>, String> {
        self.wait_for_followers();
        self.admin_as_now(user, password, command)
    }

    /// `admin_as` without waiting for the followers first.
    pub fn admin_as_now(&self, user: &str, password: &str, command: &str) -> Result<Vec<Vec<String>>, String> {
        let out = self.psql_as_now(
            user,
            password,
            "pgcausal",
            &["-P", "tuples_only=off", "-P", "footer=off", "-c", command],
            None,
        );
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text.lines().map(|l| l.split('|').map(str::to_string).collect()).collect())
    }

    /// A console command as the main test user (which the test made an admin).
    pub fn admin(&self, command: &str) -> Vec<Vec<String>> {
        self.admin_as(USER, PASSWORD, command).unwrap_or_else(|e| panic!("{command}: {e}\n{}", self.log()))
    }

    /// A console command as the main test user, without waiting for the followers first.
    pub fn admin_now(&self, command: &str) -> Result<Vec<Vec<String>>, String> {
        self.admin_as_now(USER, PASSWORD, command)
    }

    /// A libpq/tokio-postgres connection string through the proxy.
    pub fn conn_str(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={db}", self.port)
    }

    /// A connection string through the proxy as the trust user (`auth = "trust"` in the proxy:
    /// no SCRAM exchange, which costs a debug build ~0.1 s of CPU on each side per login).
    pub fn trust_conn_str(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={TRUST_USER} dbname={db}", self.port)
    }

    /// The /metrics page.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The proxy's own account of a failed test, before its directory goes away.
            eprint_log_tail("pgcausal", &self.log(), 40);
        }
        if let Ok(Some(_)) = self.child.try_wait() {
            return; // exited (and reaped) already: its pid may belong to another process now
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Prints the last `lines` lines of a server's log to stderr (for a failed test).
pub fn eprint_log_tail(what: &str, log: &str, lines: usize) {
    let tail: Vec<&str> = log.lines().rev().take(lines).collect();
    eprintln!("--- {what} log (last {} lines)", tail.len());
    tail.iter().rev().for_each(|l| eprintln!("{l}"));
}

/// A PostgreSQL client program from the same installation as the servers.
pub fn pg_bin(name: &str) -> PathBuf {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| pgcausal::cluster::find_pg_bindir().expect("PostgreSQL binaries")).join(name)
}

/// stdout of a successful command, or a panic with its stderr.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A cluster kept in a static (statics never drop): started once by `start`, and at process
/// exit its servers get a fast shutdown and its directory is removed, instead of leaving the
/// servers to the kill-at-exit registry and the data directories on disk.
pub fn static_cluster(
    cell: &'static OnceLock<TestCluster>,
    start: impl FnOnce() -> TestCluster,
) -> &'static TestCluster {
    let mut started = false;
    let cluster = cell.get_or_init(|| {
        started = true;
        start()
    });
    if started {
        clean_up_at_exit(cluster);
    }
    cluster
}

/// Stops `cluster` and removes its directory when the process exits. Registered after the
/// cluster's servers were started, so it runs before the kill-at-exit registry (atexit is LIFO).
pub fn clean_up_at_exit(cluster: &'static TestCluster) {
    static CLUSTERS: Mutex<Vec<&'static TestCluster>> = Mutex::new(Vec::new());
    static REGISTER: std::sync::Once = std::sync::Once::new();
    extern "C" fn clean_up() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let clusters = match CLUSTERS.try_lock() {
                Ok(guard) => guard.clone(),
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().clone(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            for c in clusters {
                match c.cluster.try_lock() {
                    Ok(mut guard) => guard.stop(),
                    Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().stop(),
                    // Still in use (a test thread was cut off): leave it to the kill registry.
                    Err(std::sync::TryLockError::WouldBlock) => continue,
                }
                let _ = std::fs::remove_dir_all(c._dir.path());
            }
        }));
    }
    REGISTER.call_once(|| {
        // SAFETY: registering a plain extern "C" fn that catches every panic.
        unsafe { libc::atexit(clean_up) };
    });
    CLUSTERS.lock().unwrap_or_else(|e| e.into_inner()).push(cluster);
}

/// A tokio-postgres error with its cause: SQLSTATE and the server's message, or the I/O error.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}: {}", db.severity(), db.code().code(), db.message());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}

/// The rows of a simple-query answer, as optional text values.
pub fn simple_query_rows(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// A StartupMessage (length included) for raw-protocol tests: `version`, then name/value pairs.
pub fn startup_packet(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend([k.as_bytes(), &[0], v.as_bytes(), &[0]].concat());
    }
    body.push(0);
    [((body.len() + 4) as u32).to_be_bytes().to_vec(), body].concat()
}

/// The sum of the samples in a /metrics page whose series (name and labels) contains `series`.
pub fn metric_sum(page: &str, series: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#') && l.contains(series))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .sum()
}
