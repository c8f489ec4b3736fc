//! Faults for failover tests: a node's postmaster and all its children killed with SIGKILL (a
//! lost machine), its postmaster alone killed, or all stopped with SIGSTOP (a frozen one), by PID.

use std::fs;
use std::time::{Duration, Instant};

use tracing::info;

use super::error::Result;
use super::process::{deregister_pid, send_signal, wait_exit};
use super::{Cluster, ClusterError, POLL};

/// The children of `pid` (backends, WAL senders, background processes of a postmaster).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&child| parent_of(child) == Some(pid))
        .collect()
}

/// (parent, state) of `pid` from /proc/pid/stat; comm may hold spaces, so split after the last ')'.
fn stat_of(pid: u32) -> Option<(u32, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((fields.next()?.parse().ok()?, state))
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_of(pid).map(|(parent, _)| parent)
}

/// Gone, or a zombie (it holds no socket, memory or lock any more).
fn is_gone(pid: u32) -> bool {
    stat_of(pid).is_none_or(|(_, state)| matches!(state, 'Z' | 'X'))
}

/// Waits until `pid` is stopped (state T) or gone.
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && stat_of(pid).is_some_and(|(_, state)| !matches!(state, 'T' | 't' | 'Z' | 'X')) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// SIGCONT to every PID that still exists (a frozen node's processes, from [`Cluster::freeze_node`]).
pub fn thaw(pids: &[u32]) {
    for &pid in pids {
        if !is_gone(pid) {
            send_signal(pid, libc::SIGCONT);
        }
    }
}

impl Cluster {
    /// Stops node `i` like a frozen machine: SIGSTOP to its postmaster (so it forks no more), then
    /// to each of its children until no running child is left. Returns the stopped PIDs,
    /// postmaster first, for [`thaw`]. Errors if this `Cluster` does not run the node.
    pub fn freeze_node(&self, i: usize) -> Result<Vec<u32>> {
        let node = self.node(i)?;
        let pid = node
            .child
            .as_ref()
            .map(|c| c.id())
            .ok_or_else(|| ClusterError::Setup(format!("{} is not running", node.name)))?;
        send_signal(pid, libc::SIGSTOP);
        wait_stopped(pid);
        let mut stopped = vec![pid];
        // A child forked just before the postmaster stopped appears on a later listing.
        loop {
            let new: Vec<u32> = children_of(pid).into_iter().filter(|c| !stopped.contains(c)).collect();
            if new.is_empty() {
                break;
            }
            for &child in &new {
                send_signal(child, libc::SIGSTOP);
            }
            for &child in &new {
                wait_stopped(child);
            }
            stopped.extend(new);
        }
        info!(node = %node.name, pids = ?stopped, "node frozen (SIGSTOP)");
        Ok(stopped)
    }

    /// Kills node `i` like a lost machine: every process of it frozen first (nothing of it can
    /// react, send WAL or answer), then SIGKILL to all of them; returns once all are gone and the
    /// postmaster is reaped. No shutdown checkpoint, no last WAL sent. A no-op when it is stopped.
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        if self.node(i)?.child.is_none() {
            return Ok(());
        }
        let pids = self.freeze_node(i)?;
        for &pid in pids.iter().rev() {
            send_signal(pid, libc::SIGKILL);
        }
        let node = &mut self.nodes[i];
        let child = node.child.as_mut().expect("running");
        let status = wait_exit(child, Duration::from_secs(10)).ok_or_else(|| ClusterError::Timeout {
            what: format!("{} (pid {}) to die of SIGKILL", node.name, pids[0]),
            waited: Duration::from_secs(10),
        })?;
        deregister_pid(pids[0]);
        node.child = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids[1..].iter().any(|&p| !is_gone(p)) {
            if Instant::now() >= deadline {
                return Err(ClusterError::Setup(format!("{}: children {pids:?} outlive SIGKILL", node.name)));
            }
            std::thread::sleep(POLL);
        }
        info!(node = %node.name, %status, processes = pids.len(), "node killed (SIGKILL to the postmaster and its children)");
        Ok(())
    }

    /// SIGKILL to node `i`'s postmaster alone: its backends live on until they notice (a commit
    /// in flight may still be acknowledged by a backend of a dead postmaster, which is the
    /// hazard synchronous replication closes). Returns once the postmaster is reaped and every
    /// child has exited on its own; a child still there after 10 s is killed too and reported.
    pub fn kill_postmaster(&mut self, i: usize) -> Result<()> {
        let Some(child) = self.node(i)?.child.as_ref() else { return Ok(()) };
        let pid = child.id();
        let children = children_of(pid);
        send_signal(pid, libc::SIGKILL);
        let node = &mut self.nodes[i];
        let child = node.child.as_mut().expect("running");
        let status = wait_exit(child, Duration::from_secs(10)).ok_or_else(|| ClusterError::Timeout {
            what: format!("{} (pid {pid}) to die of SIGKILL", node.name),
            waited: Duration::from_secs(10),
        })?;
        deregister_pid(pid);
        node.child = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        while children.iter().any(|&p| !is_gone(p)) {
            if Instant::now() >= deadline {
                let left: Vec<u32> = children.iter().copied().filter(|&p| !is_gone(p)).collect();
                left.iter().for_each(|&p| send_signal(p, libc::SIGKILL));
                return Err(ClusterError::Setup(format!(
                    "{}: children {left:?} outlived their postmaster by 10 s",
                    node.name
                )));
            }
            std::thread::sleep(POLL);
        }
        info!(node = %node.name, %status, children = children.len(), "postmaster killed (SIGKILL); its children exited on their own");
        Ok(())
    }
}
