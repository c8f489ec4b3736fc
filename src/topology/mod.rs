//! Node roles, health and WAL positions as the monitors see them, published as a lock-free
//! snapshot for sessions (which followers may serve reads, which node is the leader).

pub mod catalog;
pub mod monitor;

use crate::backend::failures::FailureLog;
use arc_swap::ArcSwap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Never probed successfully.
    Unknown,
    /// Not in recovery: accepts writes.
    Primary,
    /// In recovery: a streaming follower.
    Standby,
}

impl Role {
    /// The role as log lines name it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// What the last probe learned about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub up: bool,
    pub role: Role,
    /// Timeline of a primary's current WAL (primaries on older timelines are fenced), or of the
    /// WAL a standby last received (`pg_stat_wal_receiver.received_tli`); 0 when unknown (a
    /// standby without a WAL receiver, or a monitor role that may not read its details).
    pub timeline: u32,
    /// A primary's current WAL position, a standby's replay position.
    pub lsn: u64,
    /// How long a standby has had received WAL it has not replayed (0 when caught up).
    pub replay_lag_ms: u64,
    /// pg_postmaster_start_time in microseconds: a restart is a new incarnation.
    pub incarnation: i64,
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState { up: false, role: Role::Unknown, timeline: 0, lsn: 0, replay_lag_ms: 0, incarnation: 0 }
    }
}

impl NodeState {
    /// Role or reachability differ (WAL positions move all the time and are not a change).
    pub fn changed_from(&self, other: &NodeState) -> bool {
        self.up != other.up
            || self.role != other.role
            || self.timeline != other.timeline
            || self.incarnation != other.incarnation
    }
}

/// When a follower is fresh enough to serve reads.
#[derive(Debug, Clone, Copy)]
pub struct LagLimits {
    pub max_bytes: u64,
    pub max_ms: u64,
}

/// One consistent view of the cluster; replaced as a whole, never mutated.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeState>,
    /// The node writes go to: an up primary on the newest timeline.
    pub leader: Option<usize>,
    /// Followers that may serve reads now: up, streaming, within the lag limits.
    pub followers: Vec<usize>,
}

impl Snapshot {
    fn elect(nodes: Vec<NodeState>, previous: Option<usize>, limits: LagLimits) -> Snapshot {
        let primaries = || nodes.iter().enumerate().filter(|(_, n)| n.up && n.role == Role::Primary);
        let newest = primaries().map(|(_, n)| n.timeline).max();
        // Keep the current leader when it still qualifies, so two primaries never flap.
        let leader = newest.and_then(|tl| {
            previous
                .filter(|&p| nodes.get(p).is_some_and(|n| n.up && n.role == Role::Primary && n.timeline == tl))
                .or_else(|| primaries().find(|(_, n)| n.timeline == tl).map(|(i, _)| i))
        });
        // Without a known leader (it is down) byte lag cannot be measured: reads keep going on
        // followers that replay what they receive.
        let leader_lsn = leader.map(|l| nodes[l].lsn);
        let followers = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.up && n.role == Role::Standby && n.replay_lag_ms <= limits.max_ms)
            .filter(|(_, n)| leader_lsn.is_none_or(|l| l.saturating_sub(n.lsn) <= limits.max_bytes))
            .map(|(i, _)| i)
            .collect();
        Snapshot { nodes, leader, followers }
    }
}

impl Snapshot {
    /// Publishes every node's position, timeline and lag (`metrics` in config order, like the
    /// snapshot's nodes). A down node keeps its last position and timeline; its lag is NaN.
    pub fn publish_metrics<'a>(&self, metrics: impl Iterator<Item = &'a crate::metrics::NodeMetrics>) {
        let leader_lsn = self.leader.map(|l| self.nodes[l].lsn);
        for (state, node) in self.nodes.iter().zip(metrics) {
            let known = |v: u64| Some(v).filter(|_| state.up);
            let timeline = known(u64::from(state.timeline)).filter(|&t| t > 0).map(|t| t as u32);
            let (bytes, seconds) = match (state.up, state.role) {
                (true, Role::Primary) => (0.0, 0.0),
                (true, Role::Standby) => (
                    leader_lsn.map_or(f64::NAN, |l| l.saturating_sub(state.lsn) as f64),
                    state.replay_lag_ms as f64 / 1000.0,
                ),
                _ => (f64::NAN, f64::NAN),
            };
            node.node_state(known(state.lsn), timeline, bytes, seconds);
        }
    }
}

pub struct Topology {
    current: ArcSwap<Snapshot>,
    limits: LagLimits,
    /// Serialises monitor updates (sessions never take it); holds the last leader known, so a
    /// leader that went down and came back is not counted as a change.
    write: Mutex<Option<usize>>,
    changed: Notify,
    /// Per node: failures of the control-plane connections (monitor and position probes), so
    /// that the two tasks probing a node log a failure once between them.
    control_failures: Vec<FailureLog>,
    /// Node names, for log lines.
    names: Vec<String>,
}

impl Topology {
    /// A topology of the nodes named `names` (indexed like `config.nodes`), none probed yet.
    pub fn new(names: Vec<String>, limits: LagLimits) -> Topology {
        let nodes = names.len();
        let snapshot = Snapshot { nodes: vec![NodeState::default(); nodes], leader: None, followers: Vec::new() };
        Topology {
            current: ArcSwap::from_pointee(snapshot),
            limits,
            write: Mutex::new(None),
            changed: Notify::new(),
            control_failures: (0..nodes).map(|_| FailureLog::default()).collect(),
            names,
        }
    }

    /// The control-plane connection failures of `node`.
    pub fn control_failures(&self, node: usize) -> &FailureLog {
        &self.control_failures[node]
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Records a probe result; returns the previous state of that node.
    pub fn update(&self, node: usize, state: NodeState) -> NodeState {
        let mut last_leader = self.write.lock().expect("topology lock poisoned");
        let current = self.current.load();
        let previous = current.nodes[node].clone();
        if previous == state {
            return previous;
        }
        let mut nodes = current.nodes.clone();
        nodes[node] = state;
        let next = Snapshot::elect(nodes, current.leader, self.limits);
        if next.followers != current.followers {
            let followers = self.list(&next.followers);
            tracing::info!(followers = %followers, "followers in rotation changed");
        }
        if next.leader != current.leader {
            let (from, to) = (self.list(current.leader.as_slice()), self.list(next.leader.as_slice()));
            tracing::info!(%from, %to, "leader changed");
        }
        if let Some(leader) = next.leader {
            if last_leader.replace(leader).is_some_and(|last| last != leader) {
                metrics::counter!(crate::metrics::LEADER_CHANGES).increment(1);
            }
        }
        self.current.store(Arc::new(next));
        self.changed.notify_waiters();
        previous
    }

    /// Node names separated by commas, "none" for no node.
    fn list(&self, nodes: &[usize]) -> String {
        if nodes.is_empty() {
            return "none".into();
        }
        nodes.iter().map(|&n| self.names[n].as_str()).collect::<Vec<_>>().join(",")
    }

    /// The leader, waiting up to `timeout` for one to be known.
    pub async fn leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(l) = self.current.load().leader {
                return Some(l);
            }
            if crate::control::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LagLimits = LagLimits { max_bytes: 1000, max_ms: 500 };

    fn primary(timeline: u32) -> NodeState {
        NodeState { up: true, role: Role::Primary, timeline, lsn: 10_000, ..Default::default() }
    }

    fn standby(lsn: u64, replay_lag_ms: u64) -> NodeState {
        NodeState { up: true, role: Role::Standby, lsn, replay_lag_ms, ..Default::default() }
    }

    #[test]
    fn elects_the_newest_timeline_and_keeps_a_qualifying_leader() {
        let s = Snapshot::elect(vec![primary(1), standby(10_000, 0), primary(2)], None, LIMITS);
        assert_eq!(s.leader, Some(2));
        let s = Snapshot::elect(vec![primary(2), standby(10_000, 0), primary(2)], Some(2), LIMITS);
        assert_eq!(s.leader, Some(2));
        let down = NodeState { up: false, ..primary(3) };
        let s = Snapshot::elect(vec![down, standby(10_000, 0), primary(2)], Some(0), LIMITS);
        assert_eq!(s.leader, Some(2));
        assert_eq!(Snapshot::elect(vec![standby(0, 0)], None, LIMITS).leader, None);
    }

    #[test]
    fn followers_in_rotation_are_up_standbys_within_lag_limits() {
        let down = NodeState { up: false, ..standby(10_000, 0) };
        let nodes = vec![primary(1), standby(9_500, 0), standby(8_000, 0), standby(10_000, 900), down];
        assert_eq!(Snapshot::elect(nodes.clone(), None, LIMITS).followers, vec![1]);
        // With the leader gone, byte lag is unknown: time lag alone decides.
        let mut leaderless = nodes;
        leaderless[0].up = false;
        assert_eq!(Snapshot::elect(leaderless, None, LIMITS).followers, vec![1, 2]);
    }
}
