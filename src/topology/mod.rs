//! Node roles and health as the monitors see them, published as a lock-free snapshot for sessions.

pub mod monitor;

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

/// What the last probe learned about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    pub up: bool,
    pub role: Role,
    /// Timeline of a primary's current WAL; primaries on older timelines are fenced.
    pub timeline: u32,
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState { up: false, role: Role::Unknown, timeline: 0 }
    }
}

/// One consistent view of the cluster; replaced as a whole, never mutated.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeState>,
    /// The node writes go to: an up primary on the newest timeline.
    pub leader: Option<usize>,
}

impl Snapshot {
    fn elect(nodes: Vec<NodeState>, previous: Option<usize>) -> Snapshot {
        let primaries = || nodes.iter().enumerate().filter(|(_, n)| n.up && n.role == Role::Primary);
        let newest = primaries().map(|(_, n)| n.timeline).max();
        // Keep the current leader when it still qualifies, so two primaries never flap.
        let leader = newest.and_then(|tl| {
            previous
                .filter(|&p| nodes.get(p).is_some_and(|n| n.up && n.role == Role::Primary && n.timeline == tl))
                .or_else(|| primaries().find(|(_, n)| n.timeline == tl).map(|(i, _)| i))
        });
        Snapshot { nodes, leader }
    }
}

pub struct Topology {
    current: ArcSwap<Snapshot>,
    /// Serialises monitor updates; sessions never take it.
    write: Mutex<()>,
    changed: Notify,
}

impl Topology {
    pub fn new(nodes: usize) -> Topology {
        let snapshot = Snapshot { nodes: vec![NodeState::default(); nodes], leader: None };
        Topology { current: ArcSwap::from_pointee(snapshot), write: Mutex::new(()), changed: Notify::new() }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Records a probe result; returns the previous state of that node.
    pub fn update(&self, node: usize, state: NodeState) -> NodeState {
        let _guard = self.write.lock().expect("topology lock poisoned");
        let current = self.current.load();
        let previous = current.nodes[node].clone();
        if previous == state {
            return previous;
        }
        let mut nodes = current.nodes.clone();
        nodes[node] = state;
        let next = Snapshot::elect(nodes, current.leader);
        if next.leader != current.leader {
            tracing::info!(from = ?current.leader, to = ?next.leader, "leader changed");
        }
        self.current.store(Arc::new(next));
        self.changed.notify_waiters();
        previous
    }

    /// The leader, waiting up to `timeout` for one to be known.
    pub async fn leader(&self, timeout: Duration) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(l) = self.current.load().leader {
                return Some(l);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(timeline: u32) -> NodeState {
        NodeState { up: true, role: Role::Primary, timeline }
    }

    #[test]
    fn elects_the_newest_timeline_and_keeps_a_qualifying_leader() {
        let standby = NodeState { up: true, role: Role::Standby, timeline: 0 };
        let s = Snapshot::elect(vec![primary(1), standby.clone(), primary(2)], None);
        assert_eq!(s.leader, Some(2));
        let s = Snapshot::elect(vec![primary(2), standby.clone(), primary(2)], Some(2));
        assert_eq!(s.leader, Some(2));
        let down = NodeState { up: false, ..primary(3) };
        let s = Snapshot::elect(vec![down, standby.clone(), primary(2)], Some(0));
        assert_eq!(s.leader, Some(2));
        assert_eq!(Snapshot::elect(vec![standby], None).leader, None);
    }
}
