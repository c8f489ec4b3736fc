//! A local PostgreSQL streaming-replication cluster (leader + followers) on loopback ports, for `pgcausal demo` and the tests.
//!
//! Layout under `root`: `cluster.state` (ports and topology), `nodeN/data` (PGDATA) and
//! `nodeN/postgres.log` (the postmaster's stdout/stderr). `node0` is the initial leader.
//! Every node's settings live in `data/pgcausal.conf`, included from `postgresql.conf`.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, Once, TryLockError};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

const STATE_FILE: &str = "cluster.state";
const CONF_FILE: &str = "pgcausal.conf";
const SUPERUSER: &str = "postgres";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const BIND_ATTEMPTS: usize = 5;
const POLL: Duration = Duration::from_millis(25);
const TOOLS: &str = "initdb postgres pg_ctl pg_basebackup psql pg_isready";

/// Settings every node gets; small enough for a 2-core machine running several clusters.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("unix_socket_directories", ""),
    ("shared_buffers", "16MB"),
    ("max_connections", "200"),
    ("fsync", "off"),
    ("synchronous_commit", "on"),
    ("wal_level", "replica"),
    ("max_wal_senders", "10"),
    ("wal_keep_size", "256MB"),
    ("hot_standby", "on"),
    ("hot_standby_feedback", "on"),
    ("wal_log_hints", "on"),
    ("logging_collector", "off"),
];

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// How a role's password is stored in `pg_authid`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PasswordEncryption {
    #[default]
    Scram,
    Md5,
}

impl PasswordEncryption {
    fn guc(self) -> &'static str {
        match self {
            PasswordEncryption::Scram => "scram-sha-256",
            PasswordEncryption::Md5 => "md5",
        }
    }
}

/// An extra LOGIN role created on the leader (and replicated to the followers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    pub name: String,
    pub password: String,
    pub superuser: bool,
    pub password_encryption: PasswordEncryption,
}

impl UserSpec {
    /// A non-superuser with a SCRAM password.
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        UserSpec {
            name: name.into(),
            password: password.into(),
            superuser: false,
            password_encryption: PasswordEncryption::Scram,
        }
    }
}

/// What to build. Only `root` and `superuser_password` matter when an existing cluster is reused.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Node dirs: root/node0 (initial leader), root/node1.. (followers).
    pub root: PathBuf,
    /// Number of streaming followers (default 2).
    pub followers: usize,
    /// Password of the superuser "postgres" (default "postgres").
    pub superuser_password: String,
    /// Extra LOGIN roles; md5 ones also get a `host all <name> 127.0.0.1/32 md5` hba line.
    pub users: Vec<UserSpec>,
    /// Extra postgresql.conf settings per follower index (0 = node1); may be shorter than `followers`.
    pub follower_conf: Vec<Vec<(String, String)>>,
    /// pg_hba.conf lines inserted before the defaults.
    pub hba_extra: Vec<String>,
}

impl ClusterSpec {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ClusterSpec {
            root: root.into(),
            followers: 2,
            superuser_password: "postgres".into(),
            users: Vec::new(),
            follower_conf: Vec::new(),
            hba_extra: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub port: u16,
    pub data_dir: PathBuf,
}

/// PostgreSQL shutdown modes, sent as signals to the postmaster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Smart,
    Fast,
    Immediate,
}

impl StopMode {
    fn signal(self) -> libc::c_int {
        match self {
            StopMode::Smart => libc::SIGTERM,
            StopMode::Fast => libc::SIGINT,
            StopMode::Immediate => libc::SIGQUIT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL binaries not found: {0}")]
    NoBinaries(String),
    #[error("cluster setup failed: {0}")]
    Setup(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("command `{command}` failed ({status}): {detail}")]
    Command {
        command: String,
        status: String,
        detail: String,
    },
    #[error("{node} {what} (log {log})\n--- log tail ---\n{tail}")]
    Node {
        node: String,
        what: String,
        log: PathBuf,
        tail: String,
    },
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("no node {0} in this cluster")]
    NoSuchNode(usize),
}

type Result<T, E = ClusterError> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

// ---------------------------------------------------------------------------------------------
// Binaries and the OS user the servers run as
// ---------------------------------------------------------------------------------------------

/// Finds the PostgreSQL bin directory: `pg_config --bindir`, then `initdb` on PATH, then the
/// highest `/usr/lib/postgresql/*/bin`.
pub fn find_pg_bindir() -> Result<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&dir) {
            return Ok(dir);
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let initdb = dir.join("initdb");
        if !initdb.is_file() {
            continue;
        }
        // Resolve symlinks (/usr/local/bin/initdb -> .../15/bin/initdb) so sibling tools are found.
        if let Some(real) = fs::canonicalize(&initdb)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            if usable(&real) {
                return Ok(real);
            }
        }
        if usable(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| usable(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        ClusterError::NoBinaries(
            "no initdb via `pg_config --bindir`, on PATH, or in /usr/lib/postgresql/*/bin".into(),
        )
    })
}

/// The unprivileged account the servers run as when we are root (PostgreSQL refuses root).
#[derive(Debug, Clone)]
struct PgUser {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

fn lookup_user(name: &str) -> Option<PgUser> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getpwnam_r writes only into the buffers we pass; zeroed passwd is a valid init.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then(|| PgUser {
        name: name.into(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    })
}

fn resolve_run_as() -> Result<Option<PgUser>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if let Some(user) = lookup_user("postgres").or_else(|| lookup_user("pgcausal")) {
        return Ok(Some(user));
    }
    info!("creating system user pgcausal to run PostgreSQL (it refuses to run as root)");
    let out = Command::new("useradd")
        .args("--system --no-create-home --shell /usr/sbin/nologin pgcausal".split(' '))
        .output()
        .map_err(io_err("cannot run useradd"))?;
    // A parallel caller may have created it first, so look it up whatever useradd said.
    lookup_user("pgcausal").map(Some).ok_or_else(|| {
        ClusterError::Setup(format!(
            "useradd pgcausal failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })
}

fn traversable_by(meta: &fs::Metadata, user: &PgUser) -> bool {
    let mode = meta.mode();
    if meta.uid() == user.uid {
        mode & 0o100 != 0
    } else if meta.gid() == user.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

// ---------------------------------------------------------------------------------------------
// Process registry: postmasters still running at process exit get SIGQUIT (statics never drop)
// ---------------------------------------------------------------------------------------------

static LIVE_PIDS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());
static ATEXIT: Once = Once::new();

fn register_pid(pid: u32) {
    ATEXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" fn that never unwinds.
        unsafe { libc::atexit(kill_registered_at_exit) };
    });
    LIVE_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(pid as libc::pid_t);
}

fn deregister_pid(pid: u32) {
    LIVE_PIDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid as libc::pid_t);
}

extern "C" fn kill_registered_at_exit() {
    let mut pids = match LIVE_PIDS.try_lock() {
        Ok(guard) => guard.clone(),
        Err(TryLockError::Poisoned(e)) => e.into_inner().clone(),
        Err(TryLockError::WouldBlock) => return,
    };
    for &pid in &pids {
        // SAFETY: these are our own unreaped children, so the PIDs cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.is_empty() && Instant::now() < deadline {
        // SAFETY: non-blocking waitpid on our own children; 0 means still running.
        pids.retain(|&pid| unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) } == 0);
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pid in &pids {
        // SAFETY: as above; last resort for a postmaster that ignored SIGQUIT.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: pid is an unreaped child of ours.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Polls until the child exits; returns its status text, or None on timeout.
fn wait_exit(child: &mut Child, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status.to_string()),
            Ok(None) => {}
            Err(e) => return Some(format!("not waitable: {e}")),
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

struct Node {
    name: String,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    child: Option<Child>,
}

enum Startup {
    Ready,
    Exited(String),
    TimedOut,
}

pub struct Cluster {
    bindir: PathBuf,
    root: PathBuf,
    password: String,
    run_as: Option<PgUser>,
    nodes: Vec<Node>,
    /// Set once cluster.state describes a complete cluster; port changes are persisted from then on.
    initialized: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("root", &self.root)
            .field("nodes", &self.nodes())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Initialises a new cluster under `spec.root`, or reuses (starts) the one already there.
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        let started = Instant::now();
        let bindir = find_pg_bindir()?;
        if let Some(missing) = TOOLS.split(' ').find(|t| !bindir.join(t).is_file()) {
            return Err(ClusterError::NoBinaries(format!(
                "{missing} missing in {}",
                bindir.display()
            )));
        }
        let run_as = resolve_run_as()?;
        let root = prepare_root(&spec.root, run_as.as_ref())?;
        let mut cluster = Cluster {
            bindir,
            root,
            password: spec.superuser_password.clone(),
            run_as,
            nodes: Vec::new(),
            initialized: false,
        };
        if cluster.root.join(STATE_FILE).exists() {
            cluster.reuse(&spec)?;
        } else {
            if let Err(e) = cluster.init(&spec) {
                // Remove what this attempt created so the next start can init afresh.
                cluster.stop();
                for node in &cluster.nodes {
                    let _ = fs::remove_dir_all(&node.dir);
                }
                let _ = fs::remove_file(cluster.root.join(STATE_FILE));
                return Err(e);
            }
        }
        info!(root = %cluster.root.display(), nodes = cluster.nodes.len(), elapsed_ms = started.elapsed().as_millis() as u64, "cluster ready");
        Ok(cluster)
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes
            .iter()
            .map(|n| NodeInfo {
                name: n.name.clone(),
                port: n.port,
                data_dir: n.data.clone(),
            })
            .collect()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Port of node `i`; panics if there is no such node.
    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// The file the node's postmaster writes its stdout/stderr to.
    pub fn log_path(&self, i: usize) -> Result<PathBuf> {
        Ok(self.node(i)?.dir.join("postgres.log"))
    }

    /// PID of the node's postmaster if this `Cluster` started it and has not seen it exit.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes.get(i)?.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.pid(i).is_some()
    }

    /// Index of the first running node that is not in recovery.
    pub fn leader(&self) -> Result<usize> {
        self.running()
            .into_iter()
            .find(|&i| {
                self.psql(i, "postgres", "select pg_is_in_recovery()")
                    .is_ok_and(|r| r == "f")
            })
            .ok_or_else(|| ClusterError::Setup("no running node is out of recovery".into()))
    }

    /// Signals the postmaster (smart=SIGTERM, fast=SIGINT, immediate=SIGQUIT) and waits for it to exit.
    pub fn stop_node(&mut self, i: usize, mode: StopMode) -> Result<()> {
        let node = self.nodes.get_mut(i).ok_or(ClusterError::NoSuchNode(i))?;
        let Some(child) = node.child.as_mut() else {
            debug!(node = %node.name, "already stopped");
            return Ok(());
        };
        let pid = child.id();
        send_signal(pid, mode.signal());
        let status = wait_exit(child, STOP_TIMEOUT).ok_or_else(|| ClusterError::Timeout {
            what: format!("{} (pid {pid}) to stop ({mode:?})", node.name),
            waited: STOP_TIMEOUT,
        })?;
        deregister_pid(pid);
        node.child = None;
        info!(node = %node.name, ?mode, %status, "postgres stopped");
        Ok(())
    }

    /// Starts a stopped node again and waits until it accepts connections; if its port was taken
    /// meanwhile it moves to a new one (followers are re-pointed and reloaded).
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let node = self.nodes.get_mut(i).ok_or(ClusterError::NoSuchNode(i))?;
        if let Some(child) = node.child.as_mut() {
            if let Ok(None) = child.try_wait() {
                debug!(node = %node.name, "already running");
                return Ok(());
            }
            deregister_pid(child.id());
            node.child = None;
        }
        self.spawn_node(i)
    }

    /// `pg_ctl promote -w`: the node leaves recovery and accepts writes.
    pub fn promote(&self, i: usize) -> Result<()> {
        let node = self.node(i)?;
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("promote")
            .arg("-D")
            .arg(&node.data)
            .args(["-w", "-t", "60"]);
        self.run(cmd, Some(i))?;
        info!(node = %node.name, "promoted");
        Ok(())
    }

    /// Runs `sql` with psql as the superuser over TCP; returns trimmed unaligned tuples-only output.
    pub fn psql(&self, i: usize, db: &str, sql: &str) -> Result<String> {
        let shown = if sql.to_ascii_lowercase().contains("password") {
            "<statement mentioning a password, not shown>"
        } else {
            sql
        };
        self.run_psql(i, db, sql, shown)
    }

    /// Waits until every running follower has replayed the leader's current WAL position.
    pub fn wait_replicated(&self, timeout: Duration) -> Result<()> {
        let leader = self.leader()?;
        let lsn = self.psql(leader, "postgres", "select pg_current_wal_lsn()")?;
        let check = format!(
            "select coalesce(pg_last_wal_replay_lsn() >= {}::pg_lsn, false)",
            quote_literal(&lsn)
        );
        self.wait_followers(timeout, &format!("followers to replay up to {lsn}"), &check)
    }

    /// Waits until every running follower's WAL receiver is streaming.
    pub fn wait_streaming(&self, timeout: Duration) -> Result<()> {
        let check = "select exists (select 1 from pg_stat_wal_receiver where status = 'streaming')";
        self.wait_followers(timeout, "followers to stream from their leader", check)
    }

    /// Stops all nodes (fast, then immediate after 10 s); idempotent.
    pub fn stop(&mut self) {
        let running = self.running();
        if running.is_empty() {
            return;
        }
        let escalation = [(libc::SIGINT, 10), (libc::SIGQUIT, 5), (libc::SIGKILL, 5)];
        for (signal, secs) in escalation {
            for &i in &running {
                if let Some(child) = &self.nodes[i].child {
                    send_signal(child.id(), signal);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(secs);
            while !self.running().is_empty() && Instant::now() < deadline {
                for &i in &running {
                    self.reap(i);
                }
                std::thread::sleep(POLL);
            }
            if self.running().is_empty() {
                break;
            }
            warn!(signal, "postgres nodes still running; escalating");
        }
        info!(root = %self.root.display(), "cluster stopped");
    }

    // ----- setup ---------------------------------------------------------------------------------

    fn init(&mut self, spec: &ClusterSpec) -> Result<()> {
        validate(spec)?;
        let count = 1 + spec.followers;
        let mut taken = HashSet::new();
        for i in 0..count {
            let dir = self.root.join(format!("node{i}"));
            if dir.exists() {
                return Err(ClusterError::Setup(format!(
                    "{} exists but {} does not (an earlier init failed?); remove it",
                    dir.display(),
                    self.root.join(STATE_FILE).display()
                )));
            }
            let port = pick_port(&taken)?;
            taken.insert(port);
            let data = dir.join("data");
            self.nodes.push(Node {
                name: format!("node{i}"),
                dir,
                data,
                port,
                child: None,
            });
        }
        info!(root = %self.root.display(), followers = spec.followers, "initialising cluster");
        self.init_leader(spec)?;
        for f in 0..spec.followers {
            self.init_follower(
                f + 1,
                spec.follower_conf.get(f).map(Vec::as_slice).unwrap_or(&[]),
            )?;
        }
        self.save_state()?;
        self.initialized = true;
        self.wait_streaming(READY_TIMEOUT)?;
        self.wait_replicated(READY_TIMEOUT)
    }

    fn init_leader(&mut self, spec: &ClusterSpec) -> Result<()> {
        self.make_node_dirs(0)?;
        let data = self.nodes[0].data.clone();
        let pwfile = self.root.join(".pgcausal-pwfile");
        self.write_owned(&pwfile, &format!("{}\n", self.password), 0o600)?;
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(&data)
            .arg(format!("--pwfile={}", pwfile.display()));
        cmd.args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"]);
        cmd.args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
        cmd.arg("--no-sync"); // fsync is off anyway; syncing the fresh cluster costs seconds
        let result = self.run(cmd, None);
        let _ = fs::remove_file(&pwfile);
        result?;
        fs::write(data.join("pg_hba.conf"), hba_conf(spec))
            .map_err(io_err("cannot write pg_hba.conf"))?;
        let mut conf = OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(io_err("cannot open postgresql.conf"))?;
        writeln!(
            conf,
            "\n# pgcausal: per-node settings\ninclude_if_exists = '{CONF_FILE}'"
        )
        .map_err(io_err("cannot append to postgresql.conf"))?;
        self.write_owned(
            &data.join(CONF_FILE),
            &node_conf(self.nodes[0].port, &[]),
            0o600,
        )?;
        self.spawn_node(0)?;
        self.create_users(&spec.users)
    }

    fn init_follower(&mut self, i: usize, extra: &[(String, String)]) -> Result<()> {
        self.make_node_dirs(i)?;
        let data = self.nodes[i].data.clone();
        // The password goes into the conninfo so that -R records it in primary_conninfo.
        let conninfo = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} sslmode=disable gssencmode=disable password={}",
            self.nodes[0].port,
            conninfo_quote(&self.password)
        );
        let mut cmd = self.server_command("pg_basebackup");
        cmd.arg("-d").arg(conninfo).arg("-D").arg(&data);
        cmd.args(["-X", "stream", "-R", "-c", "fast", "--no-sync"])
            .env("PGPASSWORD", &self.password);
        self.run(cmd, Some(0))?;
        if !data.join("standby.signal").exists() {
            return Err(ClusterError::Setup(format!(
                "pg_basebackup -R wrote no standby.signal in {}",
                data.display()
            )));
        }
        self.write_owned(
            &data.join(CONF_FILE),
            &node_conf(self.nodes[i].port, extra),
            0o600,
        )?;
        self.spawn_node(i)
    }

    fn create_users(&self, users: &[UserSpec]) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let mut sql = String::new();
        for u in users {
            let superuser = if u.superuser { " SUPERUSER" } else { "" };
            sql.push_str(&format!(
                "SET password_encryption = {};\nCREATE ROLE {} LOGIN{superuser} PASSWORD {};\n",
                quote_literal(u.password_encryption.guc()),
                quote_ident(&u.name),
                quote_literal(&u.password)
            ));
        }
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        self.run_psql(0, "postgres", &sql, &format!("<create roles {names:?}>"))?;
        info!(roles = ?names, "roles created");
        Ok(())
    }

    fn reuse(&mut self, spec: &ClusterSpec) -> Result<()> {
        let state_path = self.root.join(STATE_FILE);
        let text = fs::read_to_string(&state_path)
            .map_err(io_err(format!("cannot read {}", state_path.display())))?;
        let state: BTreeMap<&str, &str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .collect();
        let bad = |what: &str| ClusterError::Setup(format!("{}: {what}", state_path.display()));
        let count: usize = state
            .get("nodes")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("no valid nodes="))?;
        if count != 1 + spec.followers {
            warn!(
                saved = count - 1,
                requested = spec.followers,
                "reusing existing cluster; follower count differs"
            );
        }
        for i in 0..count {
            let key = format!("node{i}.port");
            let port = state
                .get(key.as_str())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(&format!("no valid {key}=")))?;
            let dir = self.root.join(format!("node{i}"));
            let data = dir.join("data");
            if !data.join("PG_VERSION").is_file() {
                return Err(bad(&format!(
                    "{} is not a PostgreSQL data directory",
                    data.display()
                )));
            }
            self.nodes.push(Node {
                name: format!("node{i}"),
                dir,
                data,
                port,
                child: None,
            });
        }
        self.initialized = true;
        info!(root = %self.root.display(), nodes = count, "reusing existing cluster");
        for i in 0..count {
            self.check_no_stale_postmaster(i)?;
            self.ensure_port_free(i)?;
        }
        for i in 0..count {
            self.spawn_node(i)?;
        }
        // Report roles as they are now; an earlier promotion may have changed them and that is not repaired.
        let mut leaders = 0;
        for i in 0..count {
            let role = match self
                .psql(i, "postgres", "select pg_is_in_recovery()")?
                .as_str()
            {
                "f" => "leader",
                _ => "follower",
            };
            leaders += usize::from(role == "leader");
            info!(node = %self.nodes[i].name, port = self.nodes[i].port, role, "node role");
        }
        if leaders == 1 {
            if let Err(e) = self.wait_streaming(Duration::from_secs(30)) {
                warn!(error = %e, "reused cluster: followers not streaming");
            }
        } else {
            warn!(
                leaders,
                "reused cluster does not have exactly one leader; leaving it as it is"
            );
        }
        Ok(())
    }

    // ----- node processes ------------------------------------------------------------------------

    /// Spawns `postgres -D` for node i and waits for readiness, moving to a new port if its port is taken.
    fn spawn_node(&mut self, i: usize) -> Result<()> {
        self.check_no_stale_postmaster(i)?;
        for attempt in 1..=BIND_ATTEMPTS {
            let log_path = self.log_path(i)?;
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(io_err(format!("cannot open {}", log_path.display())))?;
            self.chown(&log_path)?;
            let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
            let stdout = log.try_clone().map_err(io_err("cannot dup log file"))?;
            let mut cmd = self.server_command("postgres");
            cmd.arg("-D")
                .arg(&self.nodes[i].data)
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(log);
            let desc = describe(&cmd);
            debug!(command = %desc, "spawning");
            let child = cmd
                .spawn()
                .map_err(io_err(format!("cannot spawn `{desc}`")))?;
            register_pid(child.id());
            let pid = child.id();
            self.nodes[i].child = Some(child);
            match self.wait_ready(i)? {
                Startup::Ready => {
                    info!(node = %self.nodes[i].name, port = self.nodes[i].port, pid, "postgres started");
                    return Ok(());
                }
                Startup::Exited(status) => {
                    if attempt < BIND_ATTEMPTS && is_bind_failure(&read_from(&log_path, offset)) {
                        let port = pick_port(&self.ports())?;
                        warn!(node = %self.nodes[i].name, old = self.nodes[i].port, new = port, "port taken; retrying");
                        self.set_port(i, port)?;
                        continue;
                    }
                    return Err(
                        self.node_error(i, format!("postgres exited during startup ({status})"))
                    );
                }
                Startup::TimedOut => {
                    self.reap_forcefully(i);
                    return Err(self.node_error(
                        i,
                        format!("did not accept connections within {READY_TIMEOUT:?}"),
                    ));
                }
            }
        }
        Err(ClusterError::Setup(format!(
            "{}: no free port after {BIND_ATTEMPTS} attempts",
            self.nodes[i].name
        )))
    }

    /// Ready when postmaster.pid says ready/standby for our PID (as pg_ctl -w checks) and pg_isready agrees.
    fn wait_ready(&mut self, i: usize) -> Result<Startup> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let pidfile = self.nodes[i].data.join("postmaster.pid");
        loop {
            let node = &mut self.nodes[i];
            let Some(child) = node.child.as_mut() else {
                return Ok(Startup::Exited("not running".into()));
            };
            let pid = child.id();
            if let Some(status) = child.try_wait().map_err(io_err("waitpid failed"))? {
                deregister_pid(pid);
                node.child = None;
                return Ok(Startup::Exited(status.to_string()));
            }
            let pm_ready = fs::read_to_string(&pidfile).is_ok_and(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines.first() == Some(&pid.to_string().as_str())
                    && matches!(lines.get(7).map(|s| s.trim()), Some("ready" | "standby"))
            });
            if pm_ready && self.pg_isready(self.nodes[i].port) {
                return Ok(Startup::Ready);
            }
            if Instant::now() >= deadline {
                return Ok(Startup::TimedOut);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Refuses to start over a postmaster left from an earlier run (e.g. its parent was killed).
    fn check_no_stale_postmaster(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        let pid = fs::read_to_string(node.data.join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
        let alive_postgres = |pid: u32| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("postgres"))
        };
        match pid {
            Some(pid) if alive_postgres(pid) => Err(ClusterError::Setup(format!(
                "{} is still served by postmaster pid {pid} from an earlier run; stop it first \
                 (`pg_ctl stop -D {}` as its owner)",
                node.name,
                node.data.display()
            ))),
            _ => Ok(()),
        }
    }

    fn pg_isready(&self, port: u16) -> bool {
        let mut cmd = self.client_command("pg_isready");
        cmd.args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "5"]);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }

    /// Collects the exit status of node i if it has exited.
    fn reap(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(child) = node.child.as_mut() {
            if !matches!(child.try_wait(), Ok(None)) {
                deregister_pid(child.id());
                node.child = None;
                info!(node = %node.name, "postgres stopped");
            }
        }
    }

    fn reap_forcefully(&mut self, i: usize) {
        if let Some(child) = self.nodes[i].child.as_mut() {
            send_signal(child.id(), libc::SIGQUIT);
            if wait_exit(child, Duration::from_secs(5)).is_none() {
                send_signal(child.id(), libc::SIGKILL);
                wait_exit(child, Duration::from_secs(5));
            }
            deregister_pid(child.id());
            self.nodes[i].child = None;
        }
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect()
    }

    fn wait_followers(&self, timeout: Duration, what: &str, check: &str) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = Vec::new();
        for i in self.running() {
            if self.psql(i, "postgres", "select pg_is_in_recovery()")? == "t" {
                pending.push(i);
            }
        }
        loop {
            pending.retain(|&i| !self.psql(i, "postgres", check).is_ok_and(|r| r == "t"));
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = pending
                    .iter()
                    .map(|&i| self.nodes[i].name.as_str())
                    .collect();
                return Err(ClusterError::Timeout {
                    what: format!("{what} (behind: {names:?})"),
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // ----- ports and state -----------------------------------------------------------------------

    fn ports(&self) -> HashSet<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    fn ensure_port_free(&mut self, i: usize) -> Result<()> {
        if TcpListener::bind(("127.0.0.1", self.nodes[i].port)).is_err() {
            let port = pick_port(&self.ports())?;
            info!(node = %self.nodes[i].name, old = self.nodes[i].port, new = port, "saved port is taken; moving");
            self.set_port(i, port)?;
        }
        Ok(())
    }

    /// Moves node i to `port`: its pgcausal.conf, every follower's primary_conninfo, and cluster.state.
    fn set_port(&mut self, i: usize, port: u16) -> Result<()> {
        let old = self.nodes[i].port;
        rewrite_setting(
            &self.nodes[i].data.join(CONF_FILE),
            "port",
            &port.to_string(),
        )?;
        for j in (0..self.nodes.len()).filter(|&j| j != i) {
            let auto = self.nodes[j].data.join("postgresql.auto.conf");
            if retarget_conninfo(&auto, old, port)? {
                if let Some(child) = &self.nodes[j].child {
                    send_signal(child.id(), libc::SIGHUP); // primary_conninfo is reloadable
                }
            }
        }
        self.nodes[i].port = port;
        if self.initialized {
            self.save_state()?;
        }
        Ok(())
    }

    fn save_state(&self) -> Result<()> {
        let mut text = String::from(
            "# pgcausal local cluster (cluster.rs); node0 was the initial leader\nversion=1\n",
        );
        text.push_str(&format!(
            "nodes={}\ninitial_leader=node0\n",
            self.nodes.len()
        ));
        for (i, node) in self.nodes.iter().enumerate() {
            text.push_str(&format!("node{i}.port={}\n", node.port));
        }
        let tmp = self.root.join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, text).map_err(io_err(format!("cannot write {}", tmp.display())))?;
        fs::rename(&tmp, self.root.join(STATE_FILE)).map_err(io_err("cannot replace cluster.state"))
    }

    // ----- commands, files, errors ---------------------------------------------------------------

    fn node(&self, i: usize) -> Result<&Node> {
        self.nodes.get(i).ok_or(ClusterError::NoSuchNode(i))
    }

    /// A bindir command with a clean, deterministic environment (English messages, no stray PG* vars).
    fn client_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.env_clear().current_dir("/");
        cmd.envs([
            ("LC_ALL", "C"),
            ("LANG", "C"),
            ("PGSSLMODE", "disable"),
            ("PGGSSENCMODE", "disable"),
        ]);
        cmd.env("PGCONNECT_TIMEOUT", "10");
        for key in ["PATH", "TZ"] {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd
    }

    /// Like `client_command`, but as the unprivileged server user when we are root.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = self.client_command(program);
        match &self.run_as {
            Some(user) => {
                cmd.uid(user.uid)
                    .gid(user.gid)
                    .env("HOME", "/tmp")
                    .env("USER", &user.name);
            }
            None => {
                cmd.env(
                    "HOME",
                    std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()),
                );
            }
        }
        cmd
    }

    /// Runs a command to completion; on failure the error has its stderr and, if given, that node's log tail.
    fn run(&self, mut cmd: Command, log_of: Option<usize>) -> Result<Output> {
        let desc = describe(&cmd);
        debug!(command = %desc, "running");
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(format!("cannot run `{desc}`")))?;
        if out.status.success() {
            return Ok(out);
        }
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if detail.is_empty() {
            detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        if let Some(node) = log_of.and_then(|i| self.nodes.get(i)) {
            let log = node.dir.join("postgres.log");
            detail.push_str(&format!(
                "\n--- tail of {} ---\n{}",
                log.display(),
                log_tail(&log)
            ));
        }
        Err(ClusterError::Command {
            command: desc,
            status: out.status.to_string(),
            detail,
        })
    }

    /// psql with SQL on stdin; `shown` is what gets logged instead of the SQL (which may hold passwords).
    fn run_psql(&self, i: usize, db: &str, sql: &str, shown: &str) -> Result<String> {
        let port = self.node(i)?.port.to_string();
        let mut cmd = self.client_command("psql");
        cmd.args("-X -A -t -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -f -".split(' '));
        cmd.args(["-p", &port, "-U", SUPERUSER, "-d", db])
            .env("PGPASSWORD", &self.password);
        let desc = describe(&cmd);
        debug!(node = %self.nodes[i].name, sql = shown, "psql");
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("cannot run `{desc}`")))?;
        let mut stdin = child.stdin.take();
        let sql = sql.to_owned();
        // Feed stdin from a thread so a large result cannot deadlock against our writes.
        let writer =
            std::thread::spawn(move || stdin.as_mut().map(|s| s.write_all(sql.as_bytes())));
        let out = child
            .wait_with_output()
            .map_err(io_err(format!("waiting for `{desc}`")))?;
        let _ = writer.join();
        if !out.status.success() {
            let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(ClusterError::Command {
                command: format!("{desc} <<< {shown}"),
                status: out.status.to_string(),
                detail,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn node_error(&self, i: usize, what: String) -> ClusterError {
        let log = self.nodes[i].dir.join("postgres.log");
        ClusterError::Node {
            node: self.nodes[i].name.clone(),
            what,
            tail: log_tail(&log),
            log,
        }
    }

    fn make_node_dirs(&self, i: usize) -> Result<()> {
        for dir in [&self.nodes[i].dir, &self.nodes[i].data] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
            fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(io_err("chmod"))?;
            self.chown(dir)?;
        }
        Ok(())
    }

    fn write_owned(&self, path: &Path, contents: &str, mode: u32) -> Result<()> {
        fs::write(path, contents).map_err(io_err(format!("cannot write {}", path.display())))?;
        fs::set_permissions(path, Permissions::from_mode(mode)).map_err(io_err("chmod"))?;
        self.chown(path)
    }

    fn chown(&self, path: &Path) -> Result<()> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        let cpath = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| ClusterError::Setup("NUL in path".into()))?;
        // SAFETY: cpath is a valid NUL-terminated path.
        if unsafe { libc::chown(cpath.as_ptr(), user.uid, user.gid) } != 0 {
            return Err(io_err(format!(
                "cannot chown {} to {}",
                path.display(),
                user.name
            ))(io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn validate(spec: &ClusterSpec) -> Result<()> {
    let bad = |msg: String| Err(ClusterError::Setup(msg));
    if spec.superuser_password.is_empty() || spec.superuser_password.contains(['\n', '\r']) {
        return bad("superuser_password must be non-empty and one line (initdb --pwfile)".into());
    }
    if let Some(u) = spec
        .users
        .iter()
        .find(|u| u.name.is_empty() || u.name.contains('\0'))
    {
        return bad(format!("invalid role name {:?}", u.name));
    }
    let valid_key = |k: &str| {
        !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    if let Some((k, _)) = spec
        .follower_conf
        .iter()
        .flatten()
        .find(|(k, _)| !valid_key(k))
    {
        return bad(format!("invalid setting name {k:?} in follower_conf"));
    }
    Ok(())
}

/// Creates the root, makes it traversable for the server user, and checks its ancestors are too.
fn prepare_root(root: &Path, run_as: Option<&PgUser>) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(io_err(format!("cannot create {}", root.display())))?;
    let root =
        fs::canonicalize(root).map_err(io_err(format!("cannot resolve {}", root.display())))?;
    if let Some(user) = run_as {
        fs::set_permissions(&root, Permissions::from_mode(0o755))
            .map_err(io_err("cannot chmod root"))?;
        for dir in root.ancestors().skip(1) {
            let meta =
                fs::metadata(dir).map_err(io_err(format!("cannot stat {}", dir.display())))?;
            if !traversable_by(&meta, user) {
                return Err(ClusterError::Setup(format!(
                    "{} (mode {:o}) is not traversable by user {}; put the cluster root elsewhere or chmod o+x it",
                    dir.display(),
                    meta.mode() & 0o7777,
                    user.name
                )));
            }
        }
    }
    Ok(root)
}

fn pick_port(avoid: &HashSet<u16>) -> Result<u16> {
    for _ in 0..100 {
        let listener =
            TcpListener::bind(("127.0.0.1", 0)).map_err(io_err("cannot bind a loopback port"))?;
        let port = listener.local_addr().map_err(io_err("local_addr"))?.port();
        if !avoid.contains(&port) {
            return Ok(port);
        }
    }
    Err(ClusterError::Setup("no free loopback port found".into()))
}

fn is_bind_failure(log: &str) -> bool {
    [
        "could not bind",
        "Address already in use",
        "could not create any TCP/IP sockets",
    ]
    .iter()
    .any(|m| log.contains(m))
}

fn conf_line(key: &str, value: &str) -> String {
    format!("{key} = '{}'\n", value.replace('\'', "''"))
}

fn node_conf(port: u16, extra: &[(String, String)]) -> String {
    let mut text = String::from("# Written by pgcausal (cluster.rs) for a local test cluster; `port` is rewritten when it moves.\n");
    text.push_str(&conf_line("port", &port.to_string()));
    for (key, value) in BASE_SETTINGS {
        text.push_str(&conf_line(key, value));
    }
    if !extra.is_empty() {
        text.push_str("# node-specific settings\n");
        for (key, value) in extra {
            text.push_str(&conf_line(key, value));
        }
    }
    text
}

fn hba_conf(spec: &ClusterSpec) -> String {
    let mut text = String::from(
        "# Written by pgcausal (cluster.rs); first matching line wins.\nlocal all all trust\n",
    );
    for line in &spec.hba_extra {
        text.push_str(line);
        text.push('\n');
    }
    // An md5-hashed password can never pass scram-sha-256, so md5 roles get an md5 line.
    for user in spec
        .users
        .iter()
        .filter(|u| u.password_encryption == PasswordEncryption::Md5)
    {
        text.push_str(&format!(
            "host all \"{}\" 127.0.0.1/32 md5\n",
            user.name.replace('"', "")
        ));
    }
    text.push_str("host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n");
    text
}

/// Replaces `key = ...` in a conf file we own, or appends it.
fn rewrite_setting(path: &Path, key: &str, value: &str) -> Result<()> {
    let text =
        fs::read_to_string(path).map_err(io_err(format!("cannot read {}", path.display())))?;
    let mut found = false;
    let mut out = String::new();
    for line in text.lines() {
        if !found && line.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            out.push_str(&conf_line(key, value));
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(&conf_line(key, value));
    }
    fs::write(path, out).map_err(io_err(format!("cannot write {}", path.display())))
}

/// Points `port=old` in a primary_conninfo line at `new`; returns whether the file changed.
fn retarget_conninfo(path: &Path, old: u16, new: u16) -> Result<bool> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(false);
    };
    let needle = format!("port={old}");
    let mut changed = false;
    let mut out = String::new();
    for line in text.lines() {
        let mut line = line.to_string();
        if line.trim_start().starts_with("primary_conninfo") {
            if let Some(pos) = line.match_indices(&needle).map(|(p, _)| p).find(|&p| {
                let before = line[..p].chars().last();
                let after = line[p + needle.len()..].chars().next();
                matches!(before, Some(' ' | '\'')) && matches!(after, None | Some(' ' | '\''))
            }) {
                line.replace_range(pos..pos + needle.len(), &format!("port={new}"));
                changed = true;
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    if changed {
        fs::write(path, out).map_err(io_err(format!("cannot write {}", path.display())))?;
    }
    Ok(changed)
}

/// The command line for logs and errors, with anything after `password=` masked.
fn describe(cmd: &Command) -> String {
    let mut text = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        text.push(' ');
        match arg.find("password=") {
            Some(pos) => text.push_str(&format!("\"{}password=***\"", &arg[..pos])),
            None => text.push_str(&arg),
        }
    }
    text
}

fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(8 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_redaction() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(conninfo_quote("a'b\\"), "'a\\'b\\\\'");
        let mut cmd = Command::new("/x/pg_basebackup");
        cmd.args(["-d", "host=h password='secret'", "-D", "/d"]);
        let text = describe(&cmd);
        assert!(
            !text.contains("secret") && text.starts_with("pg_basebackup -d"),
            "{text}"
        );
    }

    #[test]
    fn conninfo_port_rewrite() {
        let dir =
            std::env::temp_dir().join(format!("pgcausal-cluster-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auto.conf");
        fs::write(&path, "primary_conninfo = 'user=postgres host=127.0.0.1 port=5432 sslmode=disable'\nport = 5432\n").unwrap();
        assert!(retarget_conninfo(&path, 5432, 6000).unwrap());
        assert!(!retarget_conninfo(&path, 543, 7000).unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(" port=6000 ") && text.contains("port = 5432"),
            "{text}"
        );
        rewrite_setting(&path, "port", "7001").unwrap();
        assert!(fs::read_to_string(&path).unwrap().contains("port = '7001'"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
