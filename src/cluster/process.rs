//! Postmaster processes: spawning `postgres -D`, waiting for readiness, signals and reaping, and
//! the atexit registry that stops postmasters still running when the process exits.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Mutex, Once, TryLockError};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::command::{describe, log_tail};
use super::error::{io_err, Result};
use super::{Cluster, ClusterError, POLL, READY_TIMEOUT};

const BIND_ATTEMPTS: usize = 5;

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
    LIVE_PIDS.lock().unwrap_or_else(|e| e.into_inner()).push(pid as libc::pid_t);
}

pub(super) fn deregister_pid(pid: u32) {
    LIVE_PIDS.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| *p != pid as libc::pid_t);
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

pub(super) fn send_signal(pid: u32, signal: libc::c_int) {
    // SAFETY: pid is an unreaped child of ours.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Polls until the child exits; returns its status text, or None on timeout.
pub(super) fn wait_exit(child: &mut Child, timeout: Duration) -> Option<String> {
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

enum Startup {
    Ready,
    Exited(String),
    TimedOut,
}

impl Cluster {
    /// Spawns `postgres -D` for node i and waits for readiness, moving to a new port if its port is taken.
    pub(super) fn spawn_node(&mut self, i: usize) -> Result<()> {
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
            cmd.arg("-D").arg(&self.nodes[i].data).stdin(Stdio::null()).stdout(stdout).stderr(log);
            if !self.owns_servers {
                // It outlives this process: the Ctrl-C of this one's terminal is not for it.
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            }
            let desc = describe(&cmd);
            debug!(command = %desc, "spawning");
            let child = cmd.spawn().map_err(io_err(format!("cannot spawn `{desc}`")))?;
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
                    return Err(self.node_error(i, format!("postgres exited during startup ({status})")));
                }
                Startup::TimedOut => {
                    self.reap_forcefully(i);
                    return Err(self.node_error(i, format!("did not accept connections within {READY_TIMEOUT:?}")));
                }
            }
        }
        Err(ClusterError::Setup(format!("{}: no free port after {BIND_ATTEMPTS} attempts", self.nodes[i].name)))
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
    pub(super) fn check_no_stale_postmaster(&self, i: usize) -> Result<()> {
        let node = &self.nodes[i];
        match leftover_postmaster(&node.data) {
            Some(pid) => Err(ClusterError::Setup(format!(
                "{} is still served by postmaster pid {pid} from an earlier run; stop it first \
                 (`pg_ctl stop -D {}` as its owner)",
                node.name,
                node.data.display()
            ))),
            None => Ok(()),
        }
    }

    /// Stops every postmaster still serving one of this cluster's data directories after an
    /// earlier run ended without stopping them (it was killed with SIGKILL), all of them before
    /// returning: a fast shutdown, then immediate, then SIGKILL. A postmaster whose parent is a
    /// live pgcausal (another run using the same directory) is left alone, and is an error.
    pub(super) fn stop_leftover_postmasters(&self) -> Result<()> {
        let leftovers: Vec<(usize, u32)> =
            (0..self.nodes.len()).filter_map(|i| Some((i, leftover_postmaster(&self.nodes[i].data)?))).collect();
        for &(i, pid) in &leftovers {
            if let Some(owner) = live_pgcausal_parent(pid) {
                return Err(ClusterError::Setup(format!(
                    "{} (postmaster pid {pid}) belongs to a pgcausal that is still running (pid {owner}); stop that first",
                    self.nodes[i].name
                )));
            }
            warn!(node = %self.nodes[i].name, pid, data = %self.nodes[i].data.display(), "stopping a server this process did not start (left by an earlier run, started by a rejoin hook, or added by `pgcausal demo add-follower`)");
        }
        let alive = |leftovers: &[(usize, u32)]| -> Vec<(usize, u32)> {
            leftovers.iter().copied().filter(|&(i, pid)| is_postmaster_of(pid, &self.nodes[i].data)).collect()
        };
        let mut running = leftovers;
        for (signal, secs) in [(libc::SIGINT, 20), (libc::SIGQUIT, 5), (libc::SIGKILL, 5)] {
            for &(_, pid) in &running {
                send_signal(pid, signal);
            }
            let deadline = Instant::now() + Duration::from_secs(secs);
            while !running.is_empty() && Instant::now() < deadline {
                std::thread::sleep(POLL);
                running = alive(&running);
            }
            if running.is_empty() {
                return Ok(());
            }
            warn!(signal, pids = ?running.iter().map(|&(_, pid)| pid).collect::<Vec<_>>(), "leftover servers still running; escalating");
        }
        let (i, pid) = running[0];
        Err(ClusterError::Setup(format!(
            "{} (postmaster pid {pid} from an earlier run) does not stop",
            self.nodes[i].name
        )))
    }

    fn pg_isready(&self, port: u16) -> bool {
        let mut cmd = self.client_command("pg_isready");
        cmd.args(["-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-t", "5"]);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }

    /// Collects the exit status of node i if it has exited.
    pub(super) fn reap(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(child) = node.child.as_mut() {
            if !matches!(child.try_wait(), Ok(None)) {
                deregister_pid(child.id());
                node.child = None;
                info!(node = %node.name, "postgres stopped");
            }
        }
    }

    /// Reaps every node whose postmaster exited (killed from outside, say), so that no zombie
    /// keeps its postmaster.pid looking alive to pg_ctl (a rejoin hook's `pg_ctl stop` would wait
    /// on it). Returns the nodes reaped.
    pub fn reap_exited(&mut self) -> Vec<usize> {
        let exited: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.as_mut().is_some_and(|c| !matches!(c.try_wait(), Ok(None))))
            .collect();
        exited.iter().for_each(|&i| self.reap(i));
        exited
    }

    /// Forgets the servers this `Cluster` started without stopping them: they are not stopped at
    /// exit either (an attached cluster's servers are its owner's to stop).
    pub(super) fn leave_running(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.take() {
                deregister_pid(child.id());
                info!(node = %node.name, pid = child.id(), "left running");
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

    fn node_error(&self, i: usize, what: String) -> ClusterError {
        let log = self.nodes[i].dir.join("postgres.log");
        ClusterError::Node { node: self.nodes[i].name.clone(), what, tail: log_tail(&log), log }
    }
}

/// The PID in `data`'s postmaster.pid when that process is a postmaster of `data` (not a
/// reused PID): a server left running, by this or an earlier run.
fn leftover_postmaster(data: &Path) -> Option<u32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid = text.lines().next()?.trim().parse::<u32>().ok()?;
    is_postmaster_of(pid, data).then_some(pid)
}

/// True while `pid` runs `postgres` with `-D data` (as `spawn_node` starts it; an exited or
/// zombie process has an empty command line).
fn is_postmaster_of(pid: u32, data: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let program = args.first().map(|a| Path::new(std::ffi::OsStr::from_bytes(a)));
    program.is_some_and(|p| p.file_name().is_some_and(|n| n == "postgres"))
        && args.windows(2).any(|w| w[0] == b"-D" && Path::new(std::ffi::OsStr::from_bytes(w[1])) == data)
}

/// The parent of `pid` when it is a running pgcausal other than this process.
fn live_pgcausal_parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'.
    let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
    let comm = fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
    (comm.trim() == "pgcausal" && ppid != std::process::id()).then_some(ppid)
}

fn is_bind_failure(log: &str) -> bool {
    ["could not bind", "Address already in use", "could not create any TCP/IP sockets"].iter().any(|m| log.contains(m))
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut buf = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A free loopback port, none of `avoid`.
pub(super) fn pick_port(avoid: &HashSet<u16>) -> Result<u16> {
    for _ in 0..100 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(io_err("cannot bind a loopback port"))?;
        let port = listener.local_addr().map_err(io_err("local_addr"))?.port();
        if !avoid.contains(&port) {
            return Ok(port);
        }
    }
    Err(ClusterError::Setup("no free loopback port found".into()))
}
