//! A local PostgreSQL streaming-replication cluster (leader + followers) on loopback ports, for `pgcausal demo` and the tests.
//!
//! Layout under `root`: `cluster.state` (ports and topology), `nodeN/data` (PGDATA) and
//! `nodeN/postgres.log` (the postmaster's stdout/stderr). `node0` is the initial leader.
//! Every node's settings live in `data/pgcausal.conf`, included from `postgresql.conf`.
//!
//! The rest of the module, by concern: `error` (the error type), `os` (PostgreSQL binaries, the
//! unprivileged OS user and file ownership), `process` (spawning postmasters, readiness, signals,
//! the atexit PID registry), `setup` (initdb, pg_hba, roles, pg_basebackup, conf files), `state`
//! (cluster.state, ports, reusing an existing cluster, the nodes another process added to it),
//! `command` (running the client tools) and `faults` (killing or freezing a node's whole process
//! tree, for failover tests).

mod command;
mod error;
mod faults;
mod os;
mod process;
mod setup;
mod state;

pub use error::ClusterError;
pub use faults::thaw;
pub use os::find_pg_bindir;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use command::quote_literal;
use error::{io_err, Result};
use os::{prepare_root, resolve_run_as, PgUser};
use process::{deregister_pid, send_signal, wait_exit};

const STATE_FILE: &str = "cluster.state";
const CONF_FILE: &str = "pgcausal.conf";
const SUPERUSER: &str = "postgres";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(25);
const TOOLS: &str = "initdb postgres pg_ctl pg_basebackup psql pg_isready";

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

pub struct Cluster {
    bindir: PathBuf,
    root: PathBuf,
    password: String,
    run_as: Option<PgUser>,
    nodes: Vec<Node>,
    /// Set once cluster.state describes a complete cluster; port changes are persisted from then on.
    initialized: bool,
    /// False for a cluster another process runs (`attach`): this one stops only the servers it
    /// started, and leaves them running when dropped.
    owns_servers: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("root", &self.root).field("nodes", &self.nodes()).finish_non_exhaustive()
    }
}

impl Cluster {
    /// Initialises a new cluster under `spec.root`, or reuses (starts) the one already there.
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        let started = Instant::now();
        let bindir = bindir_with_tools()?;
        let run_as = resolve_run_as()?;
        let root = prepare_root(&spec.root, run_as.as_ref())?;
        let mut cluster = Cluster {
            bindir,
            root,
            password: spec.superuser_password.clone(),
            run_as,
            nodes: Vec::new(),
            initialized: false,
            owns_servers: true,
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

    /// Opens the cluster under `spec.root` that another process runs (`pgcausal demo`), to add
    /// nodes to it: loads cluster.state and starts, stops and checks no server. A server it starts
    /// (`add_follower`) runs in its own process group and is left running when it is dropped:
    /// the owner stops it with the rest (`stop` adopts nodes added to cluster.state).
    pub fn attach(spec: &ClusterSpec) -> Result<Cluster> {
        let state = spec.root.join(STATE_FILE);
        if !state.is_file() {
            return Err(ClusterError::Setup(format!(
                "no cluster in {}: {} is missing",
                spec.root.display(),
                state.display()
            )));
        }
        let root = fs::canonicalize(&spec.root).map_err(io_err(format!("cannot resolve {}", spec.root.display())))?;
        let mut cluster = Cluster {
            bindir: bindir_with_tools()?,
            root,
            password: spec.superuser_password.clone(),
            run_as: resolve_run_as()?,
            nodes: Vec::new(),
            initialized: true,
            owns_servers: false,
        };
        cluster.load_nodes()?;
        info!(root = %cluster.root.display(), nodes = cluster.nodes.len(), "attached to a running cluster");
        Ok(cluster)
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.iter().map(|n| NodeInfo { name: n.name.clone(), port: n.port, data_dir: n.data.clone() }).collect()
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
            .find(|&i| self.psql(i, "postgres", "select pg_is_in_recovery()").is_ok_and(|r| r == "f"))
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
        cmd.arg("promote").arg("-D").arg(&node.data).args(["-w", "-t", "60"]);
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
        let check = format!("select coalesce(pg_last_wal_replay_lsn() >= {}::pg_lsn, false)", quote_literal(&lsn));
        self.wait_followers(timeout, &format!("followers to replay up to {lsn}"), &check)
    }

    /// Waits until every running follower's WAL receiver is streaming.
    pub fn wait_streaming(&self, timeout: Duration) -> Result<()> {
        let check = "select exists (select 1 from pg_stat_wal_receiver where status = 'streaming')";
        self.wait_followers(timeout, "followers to stream from their leader", check)
    }

    /// Stops all nodes (fast, then immediate after 10 s); idempotent. An attached cluster stops
    /// only the servers it started.
    pub fn stop(&mut self) {
        let running = self.running();
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
        if !self.owns_servers {
            return;
        }
        // A node another process added (`pgcausal demo add-follower`) is in cluster.state.
        if self.initialized && self.root.join(STATE_FILE).is_file() {
            if let Err(e) = self.load_nodes() {
                warn!(error = %e, "cannot read the nodes added to cluster.state; only the known ones are stopped");
            }
        }
        // A node restarted by someone else on its data directory (pgcausal's rejoin hook) is
        // this cluster's too.
        if let Err(e) = self.stop_leftover_postmasters() {
            warn!(error = %e, "a server on this cluster's data directories could not be stopped");
        }
        info!(root = %self.root.display(), "cluster stopped");
    }

    fn node(&self, i: usize) -> Result<&Node> {
        self.nodes.get(i).ok_or(ClusterError::NoSuchNode(i))
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].child.is_some()).collect()
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
                let names: Vec<&str> = pending.iter().map(|&i| self.nodes[i].name.as_str()).collect();
                return Err(ClusterError::Timeout { what: format!("{what} (behind: {names:?})"), waited: timeout });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match self.owns_servers {
            true => self.stop(),
            false => self.leave_running(),
        }
    }
}

/// The PostgreSQL bin directory, checked to hold every tool the cluster runs.
fn bindir_with_tools() -> Result<PathBuf> {
    let bindir = find_pg_bindir()?;
    if let Some(missing) = TOOLS.split(' ').find(|t| !bindir.join(t).is_file()) {
        return Err(ClusterError::NoBinaries(format!("{missing} missing in {}", bindir.display())));
    }
    Ok(bindir)
}
