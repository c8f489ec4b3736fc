//! Node roles, health and WAL positions as the monitors see them, published as a lock-free
//! snapshot for sessions (which followers may serve reads, which node is the leader).

pub mod actions;
pub mod catalog;
pub mod election;
pub mod failover;
pub mod monitor;
pub mod sync_standbys;

pub use election::{Idle, Intent};
pub use failover::Phase;

use crate::backend::failures::FailureLog;
use crate::config::NodeConfig;
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

/// What the last probe learned about one node. A node that stops answering keeps its last
/// role, timeline and position with `up = false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub up: bool,
    pub role: Role,
    /// Timeline of a primary's current WAL, or of the WAL a standby last received
    /// (`pg_stat_wal_receiver.received_tli`, kept while its receiver reconnects); 0 when unknown
    /// (never seen, or a monitor role without pg_read_all_stats).
    pub timeline: u32,
    /// A primary's current WAL position, a standby's replay position.
    pub lsn: u64,
    /// A standby's received (flushed) position; 0 for a primary.
    pub receive_lsn: u64,
    /// How long a standby has had received WAL it has not replayed (0 when caught up).
    pub replay_lag_ms: u64,
    /// pg_postmaster_start_time in microseconds: a restart is a new incarnation.
    pub incarnation: i64,
    /// A standby's WAL receiver is streaming now.
    pub streaming: bool,
    /// The configured node a standby streams from (by sender host and port), kept while its
    /// receiver reconnects; None when its sender is no configured address (a relay, a VIP).
    pub upstream: Option<usize>,
    /// A standby's last restartpoint's timeline (0: unknown, or a primary): its timeline when
    /// it has had no WAL receiver since it started.
    pub checkpoint_timeline: u32,
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState {
            up: false,
            role: Role::Unknown,
            timeline: 0,
            lsn: 0,
            receive_lsn: 0,
            replay_lag_ms: 0,
            incarnation: 0,
            streaming: false,
            upstream: None,
            checkpoint_timeline: 0,
        }
    }
}

impl NodeState {
    /// Role, reachability, timeline or upstream differ (WAL positions move all the time and are
    /// not a change).
    pub fn changed_from(&self, other: &NodeState) -> bool {
        self.up != other.up
            || self.role != other.role
            || self.timeline != other.timeline
            || self.incarnation != other.incarnation
            || self.upstream != other.upstream
    }

    /// Fills in what this probe could not see from the node's previous state: a down node keeps
    /// its last role, timeline and position; a standby between WAL receivers keeps its timeline
    /// and upstream (same incarnation only: a restarted node starts afresh).
    fn carry_from(&mut self, previous: &NodeState) {
        if !self.up {
            let up = false;
            *self = NodeState { up, streaming: false, ..previous.clone() };
            return;
        }
        if self.role == Role::Standby && previous.role == Role::Standby && self.incarnation == previous.incarnation {
            if self.timeline == 0 {
                self.timeline = previous.timeline;
            }
            if !self.streaming && self.upstream.is_none() {
                self.upstream = previous.upstream;
            }
        }
        // Nothing received since it started: it replays the history of its last restartpoint
        // (a fork is then seen as one, and repointed, instead of an unknown timeline forever).
        if self.role == Role::Standby && self.timeline == 0 {
            self.timeline = self.checkpoint_timeline;
        }
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
    /// The node writes go to: an up, unfenced primary on the newest timeline.
    pub leader: Option<usize>,
    /// Followers that may serve reads now: up, replaying the leader's history, within the lag limits.
    pub followers: Vec<usize>,
    /// Per node, why it takes no work (None for the leader and followers in rotation).
    pub idle: Vec<Option<Idle>>,
    /// Epoch, the leader of the epoch, the current timeline and fenced nodes.
    pub intent: Intent,
    /// More than one primary is up.
    pub split_brain: bool,
    /// The failover driver's phase.
    pub phase: Phase,
}

impl Snapshot {
    /// The snapshot the election makes of `nodes` after `previous`.
    pub(crate) fn elect(nodes: Vec<NodeState>, previous: &Intent, phase: Phase, limits: LagLimits) -> Snapshot {
        let e = election::elect(&nodes, previous, limits);
        Snapshot {
            nodes,
            leader: e.leader,
            followers: e.followers,
            idle: e.idle,
            intent: e.intent,
            split_brain: e.split_brain,
            phase,
        }
    }

    /// True once a reload took `node` out of the config.
    pub fn removed(&self, node: usize) -> bool {
        self.intent.removed.get(node).copied().unwrap_or(false)
    }

    /// True while `node` is fenced (never routed to until it rejoins).
    pub fn fenced(&self, node: usize) -> bool {
        self.intent.fenced.get(node).copied().unwrap_or(false)
    }
}

impl Snapshot {
    /// Publishes every node's position, timeline and lag (`metrics` in config order, like the
    /// snapshot's nodes). A down node keeps its last position and timeline; its lag is NaN.
    pub fn publish_metrics<'a>(&self, metrics: impl Iterator<Item = &'a crate::metrics::NodeMetrics>) {
        let leader_lsn = self.leader.map(|l| self.nodes[l].lsn);
        for (i, (state, node)) in self.nodes.iter().zip(metrics).enumerate() {
            if self.removed(i) {
                continue; // its gauges were set to NaN when it was removed
            }
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
            node.fenced(self.fenced(i));
        }
        metrics::gauge!(crate::metrics::SPLIT_BRAIN).set(if self.split_brain { 1.0 } else { 0.0 });
    }
}

pub struct Topology {
    current: ArcSwap<Snapshot>,
    limits: LagLimits,
    /// Serialises updates from the monitors, the failover driver and reloads (sessions never take it).
    write: Mutex<()>,
    changed: Notify,
    /// Per node (append-only, like every per-node table: a reload adds slots, never moves
    /// them): name and address as configured when the slot was made.
    nodes: boxcar::Vec<NodeConfig>,
    /// Per node: failures of the control-plane connections (monitor and position probes), so
    /// that the two tasks probing a node log a failure once between them.
    control_failures: boxcar::Vec<FailureLog>,
}

impl Topology {
    /// A topology of `nodes` (indexed like `config.nodes`), none probed yet.
    pub fn new(nodes: &[NodeConfig], limits: LagLimits) -> Topology {
        let topology = Topology {
            current: ArcSwap::from_pointee(Snapshot::default()),
            limits,
            write: Mutex::new(()),
            changed: Notify::new(),
            nodes: boxcar::Vec::new(),
            control_failures: boxcar::Vec::new(),
        };
        nodes.iter().for_each(|n| {
            topology.add_node(n);
        });
        topology
    }

    /// A new node slot (a reload added the node), not probed yet; returns its index.
    pub fn add_node(&self, node: &NodeConfig) -> usize {
        let _serial = self.write.lock().expect("topology lock poisoned");
        let index = self.nodes.push(node.clone());
        self.control_failures.push(FailureLog::default());
        let current = self.current.load_full();
        let mut next = (*current).clone();
        next.nodes.push(NodeState::default());
        next.idle.push(Some(Idle::NeverProbed));
        next.intent.fenced.resize(index + 1, false);
        next.intent.removed.resize(index + 1, false);
        debug_assert_eq!(next.nodes.len(), index + 1, "node slots and snapshot nodes in step");
        self.publish(&current, Snapshot::elect(next.nodes, &next.intent, next.phase, self.limits));
        index
    }

    /// A reload took `node` out of the config: it leaves rotation for good (its monitors are
    /// stopped by the caller; a late probe result is ignored).
    pub fn remove_node(&self, node: usize) {
        let _serial = self.write.lock().expect("topology lock poisoned");
        let current = self.current.load_full();
        let (mut nodes, mut intent) = (current.nodes.clone(), current.intent.clone());
        nodes[node] = NodeState::default();
        intent.removed[node] = true;
        self.publish(&current, Snapshot::elect(nodes, &intent, current.phase, self.limits));
    }

    /// The configured, not removed node a WAL receiver's sender address names.
    pub fn node_at(&self, host: Option<&str>, port: Option<i32>) -> Option<usize> {
        let (host, port) = (host?, port?);
        let snapshot = self.current.load();
        self.nodes.iter().find_map(|(i, n)| {
            let removed = snapshot.intent.removed.get(i).copied().unwrap_or(false);
            (!removed && n.host == host && i32::from(n.port) == port).then_some(i)
        })
    }

    /// The control-plane connection failures of `node`.
    pub fn control_failures(&self, node: usize) -> &FailureLog {
        &self.control_failures[node]
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Records a probe result; returns the previous state of that node.
    pub fn update(&self, node: usize, mut state: NodeState) -> NodeState {
        let _serial = self.write.lock().expect("topology lock poisoned");
        let current = self.current.load_full();
        let previous = current.nodes[node].clone();
        if current.intent.removed[node] {
            return previous; // a probe that was in flight when its node was removed
        }
        state.carry_from(&previous);
        if previous == state {
            return previous;
        }
        let mut nodes = current.nodes.clone();
        nodes[node] = state;
        self.publish(&current, Snapshot::elect(nodes, &current.intent, current.phase, self.limits));
        previous
    }

    /// Applies a decision of the failover driver to the intent and elects again.
    pub fn decide(&self, decision: impl FnOnce(&mut Intent, &mut Phase)) {
        let _serial = self.write.lock().expect("topology lock poisoned");
        let current = self.current.load_full();
        let (mut intent, mut phase) = (current.intent.clone(), current.phase);
        decision(&mut intent, &mut phase);
        self.publish(&current, Snapshot::elect(current.nodes.clone(), &intent, phase, self.limits));
    }

    /// Logs what changed between two snapshots, counts leader changes, and swaps the new one in.
    fn publish(&self, current: &Snapshot, next: Snapshot) {
        if next.followers != current.followers {
            let followers = self.list(&next.followers);
            tracing::info!(followers = %followers, "followers in rotation changed");
        }
        if next.leader != current.leader {
            let (from, to) = (self.list(current.leader.as_slice()), self.list(next.leader.as_slice()));
            tracing::info!(%from, %to, epoch = next.intent.epoch, "leader changed");
        }
        if next.intent.epoch > current.intent.epoch && current.intent.epoch > 0 {
            metrics::counter!(crate::metrics::LEADER_CHANGES).increment(1);
        }
        for (i, (&now, &before)) in next.intent.fenced.iter().zip(&current.intent.fenced).enumerate() {
            if now != before {
                let node = &self.nodes[i].name;
                if now {
                    tracing::warn!(%node, "node fenced: no unit is routed to it until it rejoins as a follower of the leader");
                } else {
                    tracing::info!(%node, "fenced node rejoined as a follower of the leader");
                }
            }
        }
        if next.split_brain && !current.split_brain {
            let primaries: Vec<usize> =
                (0..next.nodes.len()).filter(|&i| next.nodes[i].up && next.nodes[i].role == Role::Primary).collect();
            tracing::error!(primaries = %self.list(&primaries), leader = %self.list(next.leader.as_slice()), "two primaries are up (split brain): only the leader is routed to; the others are fenced");
        } else if current.split_brain && !next.split_brain {
            tracing::info!("split brain over: one primary is up");
        }
        self.current.store(Arc::new(next));
        self.changed.notify_waiters();
    }

    /// Waits until the snapshot changes (or a caller-side timeout fires).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The node's name.
    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// Node names separated by commas, "none" for no node.
    fn list(&self, nodes: &[usize]) -> String {
        if nodes.is_empty() {
            return "none".into();
        }
        nodes.iter().map(|&n| self.nodes[n].name.as_str()).collect::<Vec<_>>().join(",")
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

    #[test]
    fn a_down_node_keeps_its_last_state_and_a_reconnecting_standby_its_timeline() {
        let nodes = [NodeConfig::new("a", "127.0.0.1", 1), NodeConfig::new("b", "127.0.0.1", 2)];
        let topology = Topology::new(&nodes, LagLimits { max_bytes: 1000, max_ms: 1000 });
        let primary =
            NodeState { up: true, role: Role::Primary, timeline: 3, lsn: 100, incarnation: 7, ..Default::default() };
        topology.update(0, primary.clone());
        topology.update(0, NodeState::default());
        let kept = &topology.snapshot().nodes[0];
        assert_eq!((kept.up, kept.role, kept.timeline, kept.incarnation), (false, Role::Primary, 3, 7));
        let streaming = NodeState {
            up: true,
            role: Role::Standby,
            timeline: 3,
            streaming: true,
            upstream: Some(0),
            incarnation: 9,
            ..Default::default()
        };
        topology.update(1, streaming.clone());
        let between = NodeState { timeline: 0, streaming: false, upstream: None, ..streaming.clone() };
        topology.update(1, between.clone());
        let s = topology.snapshot();
        assert_eq!((s.nodes[1].timeline, s.nodes[1].upstream), (3, Some(0)));
        // A restart is a new incarnation: nothing is carried.
        topology.update(1, NodeState { incarnation: 10, ..between.clone() });
        assert_eq!(topology.snapshot().nodes[1].timeline, 0);
        // A standby that never streamed since it started replays its last restartpoint's timeline.
        topology.update(1, NodeState { incarnation: 11, checkpoint_timeline: 2, ..between });
        assert_eq!(topology.snapshot().nodes[1].timeline, 2);
    }
}
