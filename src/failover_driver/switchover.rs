//! SWITCHOVER's hand-over, with the leader healthy: checkpoint it, hold new units that need it,
//! let its units in flight finish (up to `failover.switchover_timeout`, then end them), make it
//! read-only, read its last WAL position, wait until the successor replayed exactly that, fence
//! it; the failover machine then promotes the successor and repoints the others as it would.
//! Anything that fails before the fence calls the switchover off: the old leader leads on.

use super::{Driver, Order};
use crate::config::Config;
use crate::frontend::shared::Shared;
use crate::metrics;
use crate::topology::actions::ActionError;
use crate::topology::failover::{self, Candidate, Event, Outcome, Record, Timed};
use crate::topology::{Role, Snapshot};
use std::time::{Duration, Instant};

/// How often the leader's units in flight and the successor's replay position are read.
const POLL: Duration = Duration::from_millis(5);
/// The leader's pools must read empty for this long: a session that read the topology just
/// before the hold may be a few instructions away from leasing there.
const QUIET: Duration = Duration::from_millis(20);

/// Why a switchover was refused or called off.
type Refusal = String;

/// The leader and the follower to hand over to: `to`, or the most advanced follower in
/// rotation (then priority, then name). Only a follower in rotation qualifies: it streams from
/// the leader on its timeline within the lag limits, so its catch-up is short.
pub(super) fn plan(
    snapshot: &Snapshot,
    priority: impl Fn(usize) -> (String, u32),
    to: Option<usize>,
) -> Result<(usize, usize), Refusal> {
    let leader = match (snapshot.leader, snapshot.intent.leader) {
        (Some(l), Some(i)) if l == i && !snapshot.split_brain => l,
        _ => return Err("no healthy leader to hand over from (SHOW NODES)".into()),
    };
    if to == Some(leader) {
        return Err(format!("{} is the leader already", priority(leader).0));
    }
    let candidates: Vec<Candidate> = snapshot
        .followers
        .iter()
        .filter(|&&i| snapshot.nodes[i].role == Role::Standby)
        .map(|&i| {
            let (name, priority) = priority(i);
            let n = &snapshot.nodes[i];
            Candidate { node: i, name, priority, timeline: n.timeline, position: n.lsn.max(n.receive_lsn) }
        })
        .collect();
    if let Some(node) = to {
        match candidates.iter().find(|c| c.node == node) {
            Some(c) if c.priority == 0 => return Err(format!("{} has priority 0: it is never promoted", c.name)),
            Some(_) => {}
            None => {
                return Err(format!(
                "{} is not a follower in rotation (it must stream from the leader within the lag limits; SHOW NODES)",
                priority(node).0
            ))
            }
        }
    }
    if candidates.is_empty() {
        return Err("no follower is in rotation to hand over to (SHOW NODES)".into());
    }
    let target = failover::elect(&candidates, snapshot.intent.timeline, to).map_err(|why| why.to_string())?;
    Ok((leader, target))
}

impl Driver {
    /// Runs a switchover's hand-over to its end: on success the phase is Promoting, with the
    /// target, switch point and order set for `promote`; otherwise it was called off.
    pub(super) async fn switch_over(&mut self, shared: &Shared, config: &Config, snapshot: &Snapshot, order: Order) {
        let priority = |i: usize| (config.nodes[i].name.clone(), config.nodes[i].priority);
        let (old, target) = match plan(snapshot, priority, order.node()) {
            Ok(pair) => pair,
            Err(why) => {
                let _ = order.reply.send(Err(why));
                return;
            }
        };
        let (old_name, target_name) = (config.nodes[old].name.clone(), config.nodes[target].name.clone());
        let started = Instant::now();
        let record = Record::switchover(self.failovers.next_id(), old_name.clone(), snapshot.intent.timeline, started);
        self.failovers.upsert(&record);
        self.record = Some(record);
        self.promotion_tried = false;
        self.transition(Event::SwitchoverOrdered);
        tracing::warn!(leader = %old_name, successor = %target_name, "switchover: handing over");
        let mut read_only = false;
        match self.hand_over(shared, config, old, target, &mut read_only).await {
            Ok(final_lsn) => {
                // Fence first, then route: the old leader is never written again until it rejoins.
                self.topology.decide(|intent, _| {
                    intent.fenced[old] = true;
                    intent.handing_over = None;
                });
                let record = self.record.as_mut().expect("a record while draining");
                let took = record.phase_done(Timed::Drain, Instant::now());
                self.failovers.upsert(record);
                self.switch_lsn = final_lsn;
                self.sync_protected = true;
                self.target = Some(target);
                self.order = Some(order);
                let at = crate::consistency::format_lsn(final_lsn);
                tracing::warn!(leader = %old_name, successor = %target_name, final_position = %at, drain_ms = took.as_millis() as u64, "switchover: the leader is read-only and fenced, its successor replayed its last WAL; promoting");
                self.transition(Event::Drained);
            }
            Err(why) => self.call_off(config, old, read_only, why, order).await,
        }
    }

    /// The hand-over's I/O; returns the old leader's last WAL position once `target` replayed it.
    /// `read_only` tells the caller whether the leader was made read-only (to undo on failure).
    async fn hand_over(
        &mut self,
        shared: &Shared,
        config: &Config,
        old: usize,
        target: usize,
        read_only: &mut bool,
    ) -> Result<u64, Refusal> {
        let logins = self.logins.clone();
        let failed = |e: ActionError| e.to_string();
        let leader = logins.open(config, old).await.map_err(failed)?;
        // Before the hold: the hold's own checkpoint then has little to flush.
        let checkpoint = leader.checkpoint().await;
        metrics::action("checkpoint", checkpoint.is_ok());
        checkpoint.map_err(failed)?;
        let successor = logins.open(config, target).await.map_err(failed)?;

        self.held_since = Some(Instant::now());
        self.topology.decide(|intent, _| intent.handing_over = Some(old));
        let deadline = Instant::now() + config.failover.switchover_timeout;
        let left = drain(|| shared.pools.nodes[old].units_in_flight(), deadline).await;
        if left > 0 {
            tracing::warn!(leader = %config.nodes[old].name, units = left, timeout = %humantime::format_duration(config.failover.switchover_timeout), "switchover: units still in flight on the leader after failover.switchover_timeout are ended (57P01)");
        }

        *read_only = true;
        let fenced = leader.fence().await;
        metrics::action("fence", fenced.is_ok());
        let ended = fenced.map_err(failed)?;
        // Its idle connections were ended with the backends: none may be leased again.
        shared.pools.drain_node(old);
        let final_lsn = leader.final_position().await.map_err(failed)?;
        tracing::info!(leader = %config.nodes[old].name, client_backends_ended = ended, final_position = %crate::consistency::format_lsn(final_lsn), "switchover: the leader is read-only");

        let deadline = Instant::now() + config.failover.switchover_timeout;
        loop {
            match successor.replayed().await.map_err(failed)? {
                Some(at) if at >= final_lsn => return Ok(final_lsn),
                Some(at) if Instant::now() >= deadline => {
                    return Err(format!(
                        "{} replayed {} of the leader's final position {} within failover.switchover_timeout",
                        config.nodes[target].name,
                        crate::consistency::format_lsn(at),
                        crate::consistency::format_lsn(final_lsn)
                    ))
                }
                Some(_) => crate::control::sleep(POLL).await,
                None => return Err(format!("{} is no longer in recovery", config.nodes[target].name)),
            }
        }
    }

    /// Nothing was promoted: the old leader takes writes again, then the held units go to it.
    async fn call_off(&mut self, config: &Config, old: usize, read_only: bool, why: Refusal, order: Order) {
        if read_only {
            let lifted = async { self.logins.open(config, old).await?.unfence().await }.await;
            metrics::action("unfence", lifted.is_ok());
            if let Err(e) = lifted {
                tracing::error!(node = %config.nodes[old].name, error = %e, "switchover called off, but the leader could not be made writable again (default_transaction_read_only stays on)");
            }
        }
        self.topology.decide(|intent, _| intent.handing_over = None);
        self.held_since = None;
        let mut record = self.record.take().expect("a record while draining");
        let now = Instant::now();
        record.phase_done(Timed::Drain, now);
        record.end(Outcome::Aborted, format!("switchover called off: {why}"), now);
        metrics::failover(Outcome::Aborted);
        self.failovers.upsert(&record);
        tracing::error!(leader = %config.nodes[old].name, reason = %why, "switchover called off; the leader leads on");
        let _ = order.reply.send(Err(format!("switchover called off: {why}")));
        self.transition(Event::SwitchoverAborted);
    }
}

/// Waits until `in_flight` reads 0 for `QUIET` on end, or `deadline`; returns what is left.
async fn drain(in_flight: impl Fn() -> usize, deadline: Instant) -> usize {
    let mut quiet_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let left = in_flight();
        if left > 0 {
            quiet_since = None;
        }
        let quiet = *quiet_since.get_or_insert(now);
        if (left == 0 && now.duration_since(quiet) >= QUIET) || now >= deadline {
            return left;
        }
        crate::control::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Intent, LagLimits, NodeState};

    fn node(role: Role, lsn: u64, upstream: Option<usize>) -> NodeState {
        let streaming = role == Role::Standby;
        NodeState { up: true, role, timeline: 1, lsn, incarnation: 1, streaming, upstream, ..Default::default() }
    }

    fn snapshot(nodes: Vec<NodeState>) -> Snapshot {
        let limits = LagLimits { max_bytes: 1_000, max_ms: 1_000 };
        let first = Snapshot::elect(nodes.clone(), &Intent::default(), Default::default(), limits);
        Snapshot::elect(nodes, &first.intent, Default::default(), limits)
    }

    #[test]
    fn the_most_advanced_follower_in_rotation_takes_over_and_a_named_one_must_qualify() {
        let priorities = [100, 100, 100, 0];
        let names = ["a", "b", "c", "d"];
        let p = |i: usize| (names[i].to_string(), priorities[i]);
        let s = snapshot(vec![
            node(Role::Primary, 10_000, None),
            node(Role::Standby, 9_900, Some(0)),
            node(Role::Standby, 9_950, Some(0)),
            node(Role::Standby, 10_000, Some(0)),
        ]);
        assert_eq!(plan(&s, p, None), Ok((0, 2)), "most advanced with priority above 0");
        assert_eq!(plan(&s, p, Some(1)), Ok((0, 1)));
        assert_eq!(plan(&s, p, Some(3)), Err("d has priority 0: it is never promoted".into()));
        assert_eq!(plan(&s, p, Some(0)), Err("a is the leader already".into()));
        let lagging = snapshot(vec![node(Role::Primary, 10_000, None), node(Role::Standby, 1_000, Some(0))]);
        assert!(plan(&lagging, p, Some(1)).unwrap_err().contains("b is not a follower in rotation"));
        assert!(plan(&lagging, p, None).unwrap_err().contains("no follower is in rotation"));
        let mut dead = s.clone();
        dead.leader = None;
        assert!(plan(&dead, p, None).unwrap_err().contains("no healthy leader"));
    }

    #[tokio::test]
    async fn the_drain_waits_for_a_quiet_spell_and_gives_up_at_its_deadline() {
        let start = Instant::now();
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let in_flight = || 2usize.saturating_sub(reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        assert_eq!(drain(in_flight, start + Duration::from_secs(5)).await, 0);
        assert!(start.elapsed() >= QUIET, "zero must hold for a quiet spell");
        assert!(reads.into_inner() >= 4, "read until quiet");
        let busy = drain(|| 3, Instant::now() + Duration::from_millis(50)).await;
        assert_eq!(busy, 3, "what is left at the deadline");
    }
}
