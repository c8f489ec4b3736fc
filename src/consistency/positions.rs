//! Every node's latest known WAL position (a standby's replay LSN, a primary's flush LSN) with
//! its incarnation and which probe asked for it, kept current by one fast poller per node
//! that also probes on demand (coalesced: one probe in flight per node serves every waiter).

use crate::backend::failures::Failure;
use crate::config::Config;
use crate::topology::Topology;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Probes are numbered in the order they are sent, from 1.
static PROBES: AtomicU64 = AtomicU64::new(0);

/// The number of the probe about to be sent.
fn next_probe() -> u64 {
    PROBES.fetch_add(1, Ordering::SeqCst) + 1
}

/// Marks an event (a unit's end): only samples from probes numbered above the mark were asked
/// for after it. A counter read where a clock read would cost a hundred instructions per unit.
pub fn mark() -> u64 {
    PROBES.load(Ordering::SeqCst)
}

/// One node's latest sample. Written by its poller only; read lock-free by sessions.
#[derive(Default)]
pub struct NodePosition {
    lsn: AtomicU64,
    incarnation: AtomicI64,
    /// The number of the probe that produced the sample (`mark`); 0 = never / node down.
    sent_at: AtomicU64,
    /// True while the node is in recovery (a follower).
    standby: AtomicBool,
    /// Set by waiters that need a fresh sample now.
    wanted: Notify,
    /// Signalled after every sample.
    sampled: Notify,
    /// While a primary: its samples against the write units acknowledged before each.
    pub acks: super::acks::AckLog,
}

/// A consistent-enough view of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub lsn: u64,
    pub incarnation: i64,
    pub sent_at: u64,
    pub standby: bool,
}

impl NodePosition {
    /// Reads `sent_at` before the rest: the LSN read is then from that sample or a newer one.
    pub fn sample(&self) -> Sample {
        let sent_at = self.sent_at.load(Ordering::Acquire);
        Sample {
            sent_at,
            lsn: self.lsn.load(Ordering::Acquire),
            incarnation: self.incarnation.load(Ordering::Acquire),
            standby: self.standby.load(Ordering::Acquire),
        }
    }

    fn record(&self, lsn: u64, incarnation: i64, standby: bool, sent_at: u64) {
        if incarnation != self.incarnation.load(Ordering::Relaxed) {
            // A restarted node may be behind what it served before: start its history afresh.
            self.lsn.store(lsn, Ordering::Release);
        } else {
            self.lsn.fetch_max(lsn, Ordering::Release);
        }
        self.incarnation.store(incarnation, Ordering::Release);
        self.standby.store(standby, Ordering::Release);
        self.sent_at.store(sent_at, Ordering::Release);
        self.sampled.notify_waiters();
    }

    #[cfg(test)]
    pub(crate) fn record_for_test(&self, lsn: u64, incarnation: i64) {
        self.record(lsn, incarnation, true, next_probe());
    }

    fn mark_down(&self) {
        self.sent_at.store(0, Ordering::Release);
        self.sampled.notify_waiters();
    }
}

/// All nodes' positions, indexed like `config.nodes` (append-only: a reload adds slots).
pub struct Positions {
    pub nodes: boxcar::Vec<NodePosition>,
}

/// A primary reports its flush position: a commit is flushed before it is acknowledged, and
/// unlike the insert position it never points past a page header no replay can reach.
const POSITION_SQL: &str = "SELECT (CASE WHEN pg_is_in_recovery() \
     THEN coalesce(pg_last_wal_replay_lsn(), '0/0') ELSE pg_current_wal_flush_lsn() END - '0/0'::pg_lsn)::int8, \
     (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8, pg_is_in_recovery()";

impl Positions {
    pub fn new(nodes: usize) -> Positions {
        Positions { nodes: (0..nodes).map(|_| NodePosition::default()).collect() }
    }

    /// A slot for a node a reload added; returns its index.
    pub fn add(&self) -> usize {
        self.nodes.push(NodePosition::default())
    }

    /// A reload removed `node` (its poller is stopped): nothing waits on its old samples.
    pub fn remove(&self, node: usize) {
        self.nodes[node].mark_down();
    }

    /// A sample of `node` asked for after the `after` mark, probing on demand; None on timeout.
    pub async fn sample_after(&self, node: usize, after: u64, timeout: Duration) -> Option<Sample> {
        let position = &self.nodes[node];
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let notified = position.sampled.notified();
            let sample = position.sample();
            if sample.sent_at > after {
                return Some(sample);
            }
            if timeout.is_zero() {
                return None; // no wait configured: no probe either (its answer would go unused)
            }
            position.wanted.notify_one();
            crate::control::timeout_at(deadline, notified).await.ok()?;
        }
    }

    /// Waits until one of `candidates` has a sample for which `accept` holds, probing them on
    /// demand; returns that node, or None on timeout.
    pub async fn wait_for(
        &self,
        candidates: &[usize],
        timeout: Duration,
        accept: impl Fn(usize, &Sample) -> bool,
    ) -> Option<usize> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // Register interest before checking, so a sample landing in between is not missed.
            let waits: Vec<_> = candidates.iter().map(|&n| self.nodes[n].sampled.notified()).collect();
            if let Some(&n) = candidates.iter().find(|&&n| accept(n, &self.nodes[n].sample())) {
                return Some(n);
            }
            if timeout.is_zero() {
                return None;
            }
            for &n in candidates {
                self.nodes[n].wanted.notify_one();
            }
            let any = futures_any(waits);
            crate::control::timeout_at(deadline, any).await.ok()?;
        }
    }

    /// Starts the poller of node `i` on the control thread: a sample every
    /// `consistency.poll_interval`, or at once when a waiter asks; it runs until aborted (the
    /// proxy stopped, or a reload removed the node). Failures are logged through `topology`'s
    /// per-node control-plane log (shared with the monitor).
    pub fn spawn_poller(
        self: &Arc<Self>,
        config: &Config,
        i: usize,
        topology: &Arc<Topology>,
    ) -> tokio::task::JoinHandle<()> {
        let node = &config.nodes[i];
        let pool = crate::topology::monitor::control_pool(config, node);
        let target = crate::topology::monitor::control_target(config, node);
        let topology = topology.clone();
        let positions = self.clone();
        let (timeout, interval) = (config.monitor.timeout, config.consistency.poll_interval);
        let mut timeouts = crate::topology::monitor::Timeouts::new(config.monitor.timeouts_to_down);
        let name = node.name.clone();
        crate::control::spawn(async move {
            let position = &positions.nodes[i];
            let ticks = metrics::counter!(crate::metrics::POSITION_PROBES, "node" => name.clone(), "cause" => "tick");
            let wanted = metrics::counter!(crate::metrics::POSITION_PROBES, "node" => name, "cause" => "wanted");
            let mut cause = &ticks;
            loop {
                cause.increment(1);
                let acknowledged_before = super::acks::total();
                let sent_at = next_probe();
                let probe = async {
                    let client = pool.get().await.map_err(|e| Failure::of_control(&e))?;
                    let statement = client.prepare_cached(POSITION_SQL).await.map_err(|e| Failure::of_pg(&e))?;
                    client.query_one(&statement, &[]).await.map_err(|e| Failure::of_pg(&e))
                };
                let failures = topology.control_failures(i);
                match tokio::time::timeout(timeout, probe).await {
                    Ok(Ok(row)) => {
                        timeouts.answered();
                        failures.succeeded(&target, "positions");
                        let (lsn, standby) = (row.get::<_, i64>(0).max(0) as u64, row.get(2));
                        position.record(lsn, row.get(1), standby, sent_at);
                        if !standby {
                            position.acks.record(lsn, acknowledged_before);
                        }
                    }
                    // A late answer keeps the last sample: it is still a lower bound of this
                    // incarnation's position (a restart resets the connection: an error).
                    Err(_) if timeouts.tolerated() => {}
                    Err(_) => {
                        let waited = humantime::format_duration(timeout);
                        failures.failed(
                            &target,
                            "positions",
                            Failure::timeout(format!("probe timed out after {waited}")),
                        );
                        position.mark_down();
                    }
                    Ok(Err(failure)) => {
                        timeouts.answered();
                        failures.failed(&target, "positions", failure);
                        position.mark_down();
                    }
                }
                // Sleep until the next tick unless someone needs a fresh sample sooner.
                let asked = tokio::time::timeout(interval, position.wanted.notified()).await.is_ok();
                cause = if asked { &wanted } else { &ticks };
                if Arc::strong_count(&positions) == 1 {
                    return;
                }
            }
        })
    }
}

/// Resolves when any of the futures does.
async fn futures_any<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        if futures.iter_mut().any(|f| f.as_mut().poll(cx).is_ready()) || futures.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_forgets_the_old_position_and_samples_never_go_back_otherwise() {
        let p = NodePosition::default();
        p.record(100, 1, true, 5);
        p.record(90, 1, true, 6);
        assert_eq!(p.sample(), Sample { lsn: 100, incarnation: 1, sent_at: 6, standby: true });
        p.record(50, 2, true, 7);
        assert_eq!(p.sample().lsn, 50);
        p.mark_down();
        assert_eq!(p.sample().sent_at, 0);
    }

    #[tokio::test]
    async fn waiting_asks_for_probes_and_times_out() {
        let positions = Arc::new(Positions::new(2));
        let p2 = positions.clone();
        let waiter =
            tokio::spawn(async move { p2.wait_for(&[0, 1], Duration::from_secs(5), |_, s| s.lsn >= 10).await });
        // The "poller": answers a probe request with a sample.
        positions.nodes[1].wanted.notified().await;
        positions.nodes[1].record(12, 1, true, next_probe());
        assert_eq!(waiter.await.unwrap(), Some(1));
        assert_eq!(positions.wait_for(&[0], Duration::from_millis(20), |_, s| s.lsn >= 10).await, None);
        // A zero timeout answers from what is known, at once, and asks for no probe.
        let drained = tokio::time::timeout(Duration::from_millis(50), positions.nodes[0].wanted.notified()).await;
        assert!(drained.is_ok(), "the 20 ms wait above asked node 0 for a probe");
        let started = std::time::Instant::now();
        assert_eq!(positions.wait_for(&[0, 1], Duration::ZERO, |_, s| s.lsn >= 10).await, Some(1));
        assert_eq!(positions.wait_for(&[0], Duration::ZERO, |_, s| s.lsn >= 10).await, None);
        assert_eq!(positions.sample_after(0, u64::MAX, Duration::ZERO).await, None);
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
        let asked = tokio::time::timeout(Duration::from_millis(50), positions.nodes[0].wanted.notified()).await;
        assert!(asked.is_err(), "a zero-timeout wait asked node 0 for a probe");
    }
}
