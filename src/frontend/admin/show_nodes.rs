//! SHOW NODES: each node's role, timeline, health, rotation (and why not), WAL position, lag,
//! incarnation, fencing, upstream, the failover phase and epoch, synchronous standbys, server
//! connections and units routed, from the topology snapshot and pools.

use super::Table;
use crate::consistency::format_lsn;
use crate::frontend::shared::Shared;
use crate::topology::{Role, Snapshot};

pub fn show_nodes(shared: &Shared) -> Table {
    let snapshot = shared.topology.snapshot();
    let mut table = Table::new(&[
        "name",
        "host",
        "port",
        "role",
        "timeline",
        "up",
        "in_rotation",
        "why_not",
        "wal_position",
        "lag_bytes",
        "lag_seconds",
        "incarnation",
        "fenced",
        "streams_from",
        "failover_phase",
        "epoch",
        "priority",
        "sync_state",
        "server_connections",
        "units_routed",
    ]);
    let leader_lsn = snapshot.leader.map(|l| snapshot.nodes[l].lsn);
    let config = shared.config();
    for (i, node) in config.nodes.iter().enumerate() {
        let pools = &shared.pools.nodes[i];
        // A removed node shows while it drains, then is gone; a node this snapshot predates
        // (added a moment ago) shows from the next one.
        let Some(state) = snapshot.nodes.get(i).filter(|_| !node.removed || pools.connections() > 0) else {
            continue;
        };
        let standby = state.role == Role::Standby;
        let lag_bytes = leader_lsn.filter(|_| standby && state.up).map(|l| l.saturating_sub(state.lsn));
        table.row(vec![
            Some(node.name.clone()),
            Some(node.host.clone()),
            Some(node.port.to_string()),
            Some(role_name(&snapshot, i).to_string()),
            Some(state.timeline).filter(|&t| t > 0).map(|t| t.to_string()),
            Some(state.up.to_string()),
            Some(in_rotation(&snapshot, i).to_string()),
            why_not(&snapshot, i).map(str::to_string),
            Some(state.lsn).filter(|&l| l > 0).map(format_lsn),
            lag_bytes.map(|b| b.to_string()),
            Some(state.replay_lag_ms).filter(|_| standby && state.up).map(|ms| format!("{:.3}", ms as f64 / 1000.0)),
            Some(state.incarnation).filter(|&i| i != 0).map(|i| i.to_string()),
            Some(snapshot.fenced(i).to_string()),
            state.upstream.filter(|_| standby).and_then(|u| config.nodes.get(u)).map(|n| n.name.clone()),
            Some(snapshot.phase.name().to_string()),
            Some(snapshot.intent.epoch.to_string()),
            Some(node.priority.to_string()),
            sync_state(&snapshot, i, &node.name),
            Some(pools.connections().to_string()),
            Some(pools.units_routed().to_string()),
        ]);
    }
    table
}

/// With `[replication] synchronous` on or strict: the leader's synchronous_standby_names as
/// pgcausal set it, and for each other node whether it is one of them (as pg_stat_replication's
/// sync_state says: quorum or async); empty when pgcausal does not manage it.
fn sync_state(snapshot: &Snapshot, node: usize, name: &str) -> Option<String> {
    let set = snapshot.intent.synchronous.as_ref()?;
    Some(match snapshot.leader {
        Some(l) if l == node => set.setting(),
        _ if set.contains(name) => "quorum".into(),
        _ => "async".into(),
    })
}

fn role_name(snapshot: &Snapshot, node: usize) -> &'static str {
    let state = &snapshot.nodes[node];
    match state.role {
        Role::Primary if snapshot.leader == Some(node) => "leader",
        Role::Primary if snapshot.fenced(node) => "primary (fenced)",
        Role::Primary => "primary (not leader)",
        Role::Standby => "follower",
        Role::Unknown => "unknown",
    }
}

/// The leader is in rotation for writes; a follower while it may serve reads.
fn in_rotation(snapshot: &Snapshot, node: usize) -> bool {
    snapshot.leader == Some(node) || snapshot.followers.contains(&node)
}

/// Why a node takes no work, as the snapshot's election decided.
fn why_not(snapshot: &Snapshot, node: usize) -> Option<&'static str> {
    snapshot.idle.get(node).copied().flatten().map(|idle| idle.reason())
}
