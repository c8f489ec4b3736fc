//! Rejoining nodes: runs `failover.rejoin_command` for a node that must become a follower of
//! the current leader (a fenced old leader, up or down, another primary, or a follower whose
//! history diverged from the leader's and that repointing did not bring back), with
//! the node and the leader in its environment, bounded by `failover.rejoin_timeout`, its output
//! logged. The node re-enters rotation only through the election: once it streams from the
//! leader on the leader's timeline (see `topology::election`).

use crate::config::Config;
use crate::topology::{Idle, Snapshot};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Wait before running the command again for a node whose last run failed.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The hook runs per node: one at a time each, retried after a failure.
#[derive(Default)]
pub struct Rejoins {
    running: HashMap<usize, JoinHandle<bool>>,
    /// Per node: the epoch of its last successful run (not run again in that epoch).
    done_in_epoch: HashMap<usize, u64>,
    /// Per node: after a failed run, when it may be tried next.
    not_before: HashMap<usize, Instant>,
    /// Per node: since when it is an up follower of another history (Idle::Forked).
    forked_since: HashMap<usize, Instant>,
}

/// Why node `i` needs to rejoin the leader's history, if it does: a fenced node (an old
/// leader, up or down), another primary, or a follower of another history for `forked_for`
/// of at least `grace`. Such a follower is first repointed by the driver, which is enough
/// unless it holds WAL past the switch point; `grace` gives that a chance.
pub fn needs_rejoin(
    snapshot: &Snapshot,
    i: usize,
    forked_for: Option<Duration>,
    grace: Duration,
) -> Option<&'static str> {
    if snapshot.leader == Some(i) || snapshot.removed(i) {
        return None;
    }
    match snapshot.idle.get(i).copied().flatten() {
        _ if snapshot.fenced(i) => Some("fenced: it led an older epoch or timeline"),
        Some(Idle::OtherPrimary) => Some("a primary that is not the leader"),
        Some(Idle::Forked) if forked_for.is_some_and(|f| f >= grace) => {
            Some("diverged: a follower of another history that does not follow the leader after being repointed")
        }
        _ => None,
    }
}

impl Rejoins {
    /// Starts the command for every node that needs it and is not being handled; collects
    /// finished runs. Called by the failover driver between failovers.
    pub fn step(&mut self, config: &Config, snapshot: &Snapshot) {
        let Some(command) = config.failover.rejoin_command.as_deref().filter(|c| !c.trim().is_empty()) else {
            return;
        };
        let Some(leader) = snapshot.leader else { return };
        self.running.retain(|&node, run| {
            if !run.is_finished() {
                return true;
            }
            let ok = futures_util::FutureExt::now_or_never(run).and_then(Result::ok).unwrap_or(false);
            crate::metrics::rejoin(ok);
            if ok {
                self.done_in_epoch.insert(node, snapshot.intent.epoch);
            } else {
                self.not_before.insert(node, Instant::now() + RETRY_AFTER);
            }
            false
        });
        let now = Instant::now();
        let forked = |i: usize| snapshot.nodes[i].up && snapshot.idle[i] == Some(Idle::Forked);
        self.forked_since.retain(|&i, _| forked(i));
        for i in (0..snapshot.nodes.len()).filter(|&i| forked(i)) {
            self.forked_since.entry(i).or_insert(now);
        }
        for i in 0..snapshot.nodes.len() {
            let forked_for = self.forked_since.get(&i).map(|&since| now.duration_since(since));
            let Some(why) = needs_rejoin(snapshot, i, forked_for, config.failover.repoint_timeout) else { continue };
            let busy = self.running.contains_key(&i);
            let waiting = self.not_before.get(&i).is_some_and(|&t| now < t);
            // A run that succeeded in this epoch: the node is coming up as a follower; a
            // second run would stop it again. It is run again only after the next failover.
            let done = self.done_in_epoch.get(&i) == Some(&snapshot.intent.epoch);
            if busy || waiting || done {
                continue;
            }
            let (node, lead) = (&config.nodes[i], &config.nodes[leader]);
            tracing::warn!(node = %node.name, leader = %lead.name, reason = why, %command, "running the rejoin command");
            let env = [
                ("PGCAUSAL_NODE", node.name.clone()),
                ("PGCAUSAL_NODE_HOST", node.host.clone()),
                ("PGCAUSAL_NODE_PORT", node.port.to_string()),
                ("PGCAUSAL_NODE_DATA_DIR", node.data_dir.clone().unwrap_or_default()),
                ("PGCAUSAL_LEADER", lead.name.clone()),
                ("PGCAUSAL_LEADER_HOST", lead.host.clone()),
                ("PGCAUSAL_LEADER_PORT", lead.port.to_string()),
                ("PGCAUSAL_REPLICATION_USER", config.replication_login().0.to_string()),
                ("PGCAUSAL_REPLICATION_PASSWORD", config.replication_login().1.to_string()),
                ("PGUSER", config.failover_login().0.to_string()),
                ("PGPASSWORD", config.failover_login().1.to_string()),
            ];
            let run = run_hook(command.to_string(), env, node.name.clone(), config.failover.rejoin_timeout);
            self.running.insert(i, crate::control::spawn(run));
        }
    }
}

/// Runs `command` with `sh -c`; logs its output line by line; true when it exits 0 in time.
async fn run_hook(command: String, env: [(&'static str, String); 11], node: String, timeout: Duration) -> bool {
    let started = Instant::now();
    let mut child = tokio::process::Command::new("sh");
    child.arg("-c").arg(&command).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).kill_on_drop(true);
    child.stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(timeout, child.output()).await;
    let took_ms = started.elapsed().as_millis() as u64;
    let output = match output {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            tracing::error!(%node, error = %e, "the rejoin command could not be started");
            return false;
        }
        Err(_) => {
            let limit = humantime::format_duration(timeout).to_string();
            tracing::error!(%node, %limit, "the rejoin command ran past failover.rejoin_timeout and was killed");
            return false;
        }
    };
    for line in String::from_utf8_lossy(&output.stdout).lines().chain(String::from_utf8_lossy(&output.stderr).lines()) {
        tracing::info!(%node, "rejoin: {line}");
    }
    if output.status.success() {
        tracing::warn!(%node, took_ms, "the rejoin command succeeded; the node enters rotation once it streams from the leader");
        true
    } else {
        tracing::error!(%node, took_ms, status = %output.status, "the rejoin command failed; retried in 10 s");
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::election::Intent;
    use crate::topology::{LagLimits, NodeState, Role};

    fn node(role: Role, timeline: u32, up: bool, upstream: Option<usize>) -> NodeState {
        NodeState { up, role, timeline, lsn: 100, incarnation: 1, streaming: up, upstream, ..Default::default() }
    }

    fn snapshot(nodes: Vec<NodeState>, intent: &Intent) -> Snapshot {
        Snapshot::elect(nodes, intent, crate::topology::Phase::Healthy, LagLimits { max_bytes: 1000, max_ms: 1000 })
    }

    #[test]
    fn fenced_nodes_up_or_down_and_other_primaries_need_a_rejoin_followers_and_the_leader_do_not() {
        let mut intent = Intent { epoch: 2, leader: Some(1), timeline: 2, ..Default::default() };
        intent.fenced = vec![true, false, false, false];
        let nodes = vec![
            node(Role::Primary, 1, false, None), // the old leader, down and fenced
            node(Role::Primary, 2, true, None),  // the leader
            node(Role::Standby, 2, true, Some(1)),
            node(Role::Primary, 1, true, None), // a second primary: fenced by the election
        ];
        let s = snapshot(nodes, &intent);
        assert_eq!(s.leader, Some(1));
        let grace = Duration::from_secs(10);
        let needs: Vec<bool> = (0..4).map(|i| needs_rejoin(&s, i, None, grace).is_some()).collect();
        assert_eq!(needs, vec![true, false, false, true]);
        let mut removed = s.intent.clone();
        removed.removed = vec![true, false, false, false];
        let s = snapshot(s.nodes.clone(), &removed);
        assert_eq!(needs_rejoin(&s, 0, None, grace), None, "a removed node is no one's to rejoin");
    }

    #[test]
    fn a_follower_of_another_history_needs_a_rejoin_only_once_repointing_had_its_chance() {
        let intent = Intent { epoch: 2, leader: Some(0), timeline: 2, ..Default::default() };
        let forked = node(Role::Standby, 1, true, Some(0)); // replays timeline 1's fork
        let s = snapshot(vec![node(Role::Primary, 2, true, None), forked], &intent);
        assert_eq!(s.idle[1], Some(Idle::Forked));
        let grace = Duration::from_secs(10);
        assert_eq!(needs_rejoin(&s, 1, Some(Duration::from_secs(3)), grace), None, "repointing may still work");
        assert!(needs_rejoin(&s, 1, Some(grace), grace).is_some_and(|why| why.starts_with("diverged")));
        let following =
            snapshot(vec![node(Role::Primary, 2, true, None), node(Role::Standby, 2, true, Some(0))], &intent);
        assert_eq!(needs_rejoin(&following, 1, Some(grace), grace), None, "it follows the leader");
    }
}
