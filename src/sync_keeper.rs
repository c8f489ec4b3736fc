//! Keeps the leader's `synchronous_standby_names` as `[replication]` says (ALTER SYSTEM and
//! reload, read back), and the guard a failover must respect to lose no acknowledged commit.
//! Driven by the failover driver between failovers; the rules are `topology::sync_standbys`.

use crate::config::{Config, SyncMode};
use crate::metrics;
use crate::topology::actions::{NodeLogins, Replication};
use crate::topology::sync_standbys::{self, Guard, SyncSet};
use crate::topology::{Snapshot, Topology};
use std::time::Instant;

#[derive(Default)]
pub struct SyncKeeper {
    /// The leader the guard and applied set belong to.
    leader: Option<usize>,
    /// What that leader runs with, as last applied or read back.
    applied: Option<SyncSet>,
    /// The sets commits acknowledged by that leader were made under.
    pub guard: Guard,
    next_check: Option<Instant>,
    /// Streaming application_names that name no configured node, already warned about.
    unknown_warned: Vec<String>,
}

impl SyncKeeper {
    /// Looks at the leader at most once per `monitor.interval`, and sets its synchronous
    /// standbys when they differ from what `[replication]` wants now.
    pub async fn keep(&mut self, logins: &NodeLogins, config: &Config, snapshot: &Snapshot, topology: &Topology) {
        let Some(leader) = snapshot.leader else { return };
        if self.leader != Some(leader) {
            // A new leader: what the old one acknowledged was settled by the failover.
            *self = SyncKeeper { leader: Some(leader), ..SyncKeeper::default() };
        }
        let now = Instant::now();
        if self.next_check.is_some_and(|at| now < at) {
            return;
        }
        self.next_check = Some(now + config.monitor.interval);
        let mode = config.replication.synchronous;
        if mode == SyncMode::Off && self.applied.is_none() {
            return; // never managed here: left as the servers have it
        }
        let session = match logins.open(config, leader).await {
            Ok(session) => session,
            Err(e) => {
                tracing::debug!(error = %e, "synchronous standbys: cannot reach the leader");
                return;
            }
        };
        let replication = match session.replication().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "synchronous standbys: cannot read the leader's replication");
                return;
            }
        };
        self.guard.progress(&replication.streaming);
        let followers: Vec<String> = config
            .active_nodes()
            .filter(|&(i, _)| i != leader && !snapshot.fenced(i))
            .map(|(_, n)| n.name.clone())
            .collect();
        let streaming = self.streaming_followers(&replication, &followers);
        let desired = sync_standbys::desired(mode, config.replication.synchronous_count, &streaming, &followers)
            .unwrap_or_default();
        if desired.setting() == replication.setting {
            if self.applied.as_ref() != Some(&desired) {
                self.guard.applied(desired.clone(), replication.lsn);
                self.publish(topology, &desired, mode, streaming.len(), config);
                self.applied = Some(desired);
            }
            return;
        }
        match session.set_synchronous(&desired.setting()).await {
            Ok(lsn) => {
                metrics::action("synchronous", true);
                self.guard.applied(desired.clone(), lsn);
                self.publish(topology, &desired, mode, streaming.len(), config);
                self.applied = (mode != SyncMode::Off).then_some(desired);
            }
            Err(e) => {
                metrics::action("synchronous", false);
                tracing::warn!(error = %e, "could not set the leader's synchronous standbys");
            }
        }
    }

    /// The configured followers among the leader's streaming standbys (their application_name
    /// is their node name: pgcausal sets it when it repoints them); others are warned about once.
    fn streaming_followers(&mut self, replication: &Replication, followers: &[String]) -> Vec<String> {
        let mut names = Vec::new();
        for (name, _) in &replication.streaming {
            if followers.contains(name) {
                names.push(name.clone());
            } else if !self.unknown_warned.contains(name) {
                tracing::warn!(application_name = %name, "a standby streams from the leader under an application_name that is no node's name: it cannot be a synchronous standby (pgcausal sets it to the node's name when it repoints a follower)");
                self.unknown_warned.push(name.clone());
            }
        }
        names
    }

    fn publish(&self, topology: &Topology, set: &SyncSet, mode: SyncMode, streaming: usize, config: &Config) {
        let setting = set.setting();
        let k = config.replication.synchronous_count;
        match mode {
            SyncMode::Off => tracing::info!("replication.synchronous = off: synchronous_standby_names reset"),
            SyncMode::On if set.names.is_empty() => tracing::warn!(
                "no follower streams from the leader: commits are acknowledged without waiting for any (replication.synchronous = on runs unprotected)"
            ),
            SyncMode::Strict if streaming < k => tracing::warn!(%setting, streaming, required = k, "fewer followers stream than replication.synchronous_count: commits wait for them (replication.synchronous = strict)"),
            _ => tracing::info!(%setting, "synchronous standbys set on the leader"),
        }
        metrics::synchronous_standbys(set.names.len(), mode != SyncMode::Off && set.names.is_empty());
        let set = (mode != SyncMode::Off).then(|| set.clone());
        topology.decide(|intent, _| intent.synchronous = set);
    }
}
