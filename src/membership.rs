//! Nodes joining and leaving the running proxy: the merge of a reloaded `[[nodes]]` list into
//! the running node slots (pure: a node's index never moves, a removed node keeps its slot),
//! and starting and stopping each node's monitor and position poller.
//!
//! Every per-node table (topology, pools, positions, balancer, the config's `nodes`) is
//! append-only and indexed alike. A node added by a reload gets a new slot in each, in an
//! order that lets any reader index them safely: the data-path tables first, then the config,
//! then the topology (whose snapshot is where sessions and the driver learn a node exists).

use crate::config::NodeConfig;
use crate::frontend::shared::Shared;
use crate::topology::Phase;
use std::sync::Mutex;

/// Why the connections of a node the monitor found down were cut (clients see it in the error).
const NODE_DOWN: &str = "the node went down (its health probes failed or timed out)";

/// The running node slots after a reload, and which slots it added and removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub nodes: Vec<NodeConfig>,
    pub added: Vec<usize>,
    pub removed: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("nodes: \"{0}\" is the leader: it cannot be removed or given another address while it leads (after a failover or promotion to another node it can)")]
    Leader(String),
    #[error("nodes: a failover is under way (phase {0}); nodes can be added or removed once it ends")]
    FailoverRunning(&'static str),
}

/// Merges the file's node list into the running slots. A running node whose name is in the
/// file with the same host and port keeps its slot (its priority as the file says); one that is
/// gone, or has another address, is removed (a moved node gets a new slot: nothing learnt at
/// the old address carries over); every file node without a kept slot is appended. The leader
/// of the current epoch (`leader`, even while down) may be neither removed nor moved.
pub fn merge(running: &[NodeConfig], file: &[NodeConfig], leader: Option<usize>) -> Result<Merged, MembershipError> {
    let mut nodes = running.to_vec();
    let mut removed = Vec::new();
    for (i, slot) in nodes.iter_mut().enumerate().filter(|(_, n)| !n.removed) {
        match file.iter().find(|f| f.name == slot.name && f.host == slot.host && f.port == slot.port) {
            // TLS settings are bound into the node's pools and monitors when its slot is made:
            // they change with a restart, or by removing the node and adding it again.
            Some(kept) => {
                *slot = NodeConfig { removed: false, tls: slot.tls, ca_file: slot.ca_file.clone(), ..kept.clone() }
            }
            None if leader == Some(i) => return Err(MembershipError::Leader(slot.name.clone())),
            None => {
                slot.removed = true;
                removed.push(i);
            }
        }
    }
    let mut added = Vec::new();
    for node in file {
        if !nodes.iter().any(|n| !n.removed && n.name == node.name) {
            added.push(nodes.len());
            nodes.push(NodeConfig { removed: false, ..node.clone() });
        }
    }
    Ok(Merged { nodes, added, removed })
}

impl Merged {
    pub fn changes_members(&self) -> bool {
        !self.added.is_empty() || !self.removed.is_empty()
    }

    /// Nodes are added or removed only while no failover runs (its election must not see the
    /// candidates change under it).
    pub fn allowed_in(&self, phase: Phase) -> Result<(), MembershipError> {
        match phase {
            _ if !self.changes_members() => Ok(()),
            Phase::Healthy => Ok(()),
            other => Err(MembershipError::FailoverRunning(other.name())),
        }
    }
}

/// Each node's monitor and position poller, stopped when the node is removed or the proxy stops.
#[derive(Default)]
pub struct NodeTasks {
    by_node: Mutex<Vec<Option<crate::control::Tasks>>>,
    /// Serialises reloads that change nodes: slots are pushed to every table in step.
    pub changing: Mutex<()>,
}

/// Starts node `i`'s monitor and position poller (at start, and for a node a reload added).
pub fn start_node(shared: &Shared, i: usize) {
    let config = shared.config();
    let pools = shared.pools.clone();
    let on_change: crate::topology::monitor::OnChange = std::sync::Arc::new(move |node, before, after| {
        if before.up && !after.up {
            // Units in flight there would wait on a dead or frozen server: cut them now.
            pools.abort_node(node, NODE_DOWN);
        } else {
            // A node that changed role must not hand out its old connections.
            pools.drain_node(node);
        }
    });
    let mut tasks = crate::control::Tasks::default();
    tasks.add(crate::topology::monitor::spawn(&config, i, shared.topology.clone(), on_change));
    tasks.add(shared.positions.spawn_poller(&config, i, &shared.topology));
    let mut by_node = shared.node_tasks.by_node.lock().expect("node tasks poisoned");
    if by_node.len() <= i {
        by_node.resize_with(i + 1, || None);
    }
    by_node[i] = Some(tasks);
}

/// Makes the data-path slots of the nodes `merged` adds; call before the config naming them is
/// swapped in.
pub fn add_slots(shared: &Shared, merged: &Merged) {
    for &i in &merged.added {
        let node = &merged.nodes[i];
        let slots = (shared.pools.add(node), shared.positions.add(), shared.balancer.add());
        assert_eq!(slots, (i, i, i), "node slots out of step");
    }
}

/// After the merged config is swapped in: the added nodes enter the topology (not in rotation
/// before their first probes find them eligible) and are probed; the removed ones leave
/// rotation, stop being probed, and drain (connections close as their units end).
pub fn settle(shared: &Shared, merged: &Merged) {
    for &i in &merged.added {
        let node = &merged.nodes[i];
        assert_eq!(shared.topology.add_node(node), i, "topology slots out of step");
        start_node(shared, i);
        tracing::info!(node = %node.name, host = %node.host, port = node.port, "node added: monitored now, in rotation once eligible");
    }
    for &i in &merged.removed {
        let node = &merged.nodes[i];
        let stopped = shared.node_tasks.by_node.lock().expect("node tasks poisoned").get_mut(i).and_then(Option::take);
        drop(stopped); // aborts its monitor and poller
        shared.topology.remove_node(i);
        shared.positions.remove(i);
        shared.pools.remove(i);
        shared.pools.nodes[i].metrics.removed();
        tracing::info!(node = %node.name, connections = shared.pools.nodes[i].connections(), "node removed: out of rotation; its server connections close as their units end");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, port: u16) -> NodeConfig {
        NodeConfig::new(name, "127.0.0.1", port)
    }

    #[test]
    fn a_kept_node_keeps_its_tls_until_a_restart() {
        let running = vec![node("a", 1)];
        let mut changed = node("a", 1);
        changed.tls = crate::config::ServerTlsMode::Require;
        let m = merge(&running, &[changed], Some(0)).unwrap();
        assert_eq!(m.nodes[0].tls, crate::config::ServerTlsMode::Disable, "bound into its pools and monitors");
        let mut added = node("b", 2);
        added.tls = crate::config::ServerTlsMode::Require;
        let m = merge(&running, &[node("a", 1), added], Some(0)).unwrap();
        assert_eq!(m.nodes[1].tls, crate::config::ServerTlsMode::Require, "a new node starts with its own");
    }

    #[test]
    fn kept_nodes_keep_their_slot_new_ones_are_appended_and_gone_ones_stay_as_removed() {
        let running = vec![node("a", 1), node("b", 2), node("c", 3)];
        let mut b = node("b", 2);
        b.priority = 7;
        let m = merge(&running, &[node("d", 4), b, node("a", 1)], Some(0)).unwrap();
        assert_eq!(m.added, vec![3]);
        assert_eq!(m.removed, vec![2]);
        let names: Vec<(&str, bool)> = m.nodes.iter().map(|n| (n.name.as_str(), n.removed)).collect();
        assert_eq!(names, vec![("a", false), ("b", false), ("c", true), ("d", false)]);
        assert_eq!(m.nodes[1].priority, 7, "a kept node takes the file's other settings");
        // The same file again changes nothing; a removed node coming back gets a new slot.
        let again = merge(&m.nodes, &[node("a", 1), node("b", 2), node("d", 4)], Some(0)).unwrap();
        assert!(!again.changes_members());
        let back = merge(&m.nodes, &[node("a", 1), node("b", 2), node("c", 3), node("d", 4)], Some(0)).unwrap();
        assert_eq!((back.added, back.removed, back.nodes.len()), (vec![4], vec![], 5));
    }

    #[test]
    fn a_moved_node_is_removed_and_added_but_the_leader_is_neither() {
        let running = vec![node("a", 1), node("b", 2)];
        let m = merge(&running, &[node("a", 1), node("b", 9)], Some(0)).unwrap();
        assert_eq!((m.removed, m.added), (vec![1], vec![2]));
        assert_eq!((m.nodes[2].name.as_str(), m.nodes[2].port), ("b", 9));
        assert_eq!(merge(&running, &[node("b", 2)], Some(0)), Err(MembershipError::Leader("a".into())));
        assert_eq!(merge(&running, &[node("a", 5), node("b", 2)], Some(0)), Err(MembershipError::Leader("a".into())));
        assert!(merge(&running, &[node("b", 2)], None).is_ok(), "no leader known: any node may go");
    }

    #[test]
    fn members_change_only_while_no_failover_runs() {
        let running = vec![node("a", 1)];
        let grown = merge(&running, &[node("a", 1), node("b", 2)], Some(0)).unwrap();
        assert_eq!(grown.allowed_in(Phase::Healthy), Ok(()));
        assert_eq!(grown.allowed_in(Phase::Promoting), Err(MembershipError::FailoverRunning("promoting")));
        let same = merge(&running, &[node("a", 1)], Some(0)).unwrap();
        assert_eq!(same.allowed_in(Phase::Promoting), Ok(()), "a reload that keeps the nodes may run any time");
    }
}
