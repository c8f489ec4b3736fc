//! One session's floor: the WAL position its next read must see at least, raised after its writes
//! (read-your-writes) and after reads on another node (monotonic reads), and the choice of a
//! follower that has reached it (least outstanding leases by default, round robin, or random).

use super::positions::{mark, Positions};
use super::{format_lsn, format_token, Level};
use crate::config::Balance;
use crate::topology::Snapshot;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where a read unit should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPlan {
    Follower(usize),
    /// The leader taking its share of reads (`routing.leader_reads = always`): not a fallback.
    LeaderShare,
    /// The leader, and why (the label of the fallbacks metric).
    Leader(Fallback),
    /// `consistency.on_timeout = "error"`: the message names the floor and the best follower.
    Error(String),
}

/// Why a read goes to the leader: the `reason` label of `pgcausal_consistency_fallbacks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The session's level is `strong`: every read is the leader's.
    Strong,
    NoFollower,
    LeaderPositionUnknown,
    FloorTimeout,
    /// `on_timeout = "error"`: the read failed instead.
    Error,
}

impl Fallback {
    pub const ALL: [Fallback; 5] = [
        Fallback::Strong,
        Fallback::NoFollower,
        Fallback::LeaderPositionUnknown,
        Fallback::FloorTimeout,
        Fallback::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Fallback::Strong => "strong",
            Fallback::NoFollower => "no_follower",
            Fallback::LeaderPositionUnknown => "leader_position_unknown",
            Fallback::FloorTimeout => "floor_timeout",
            Fallback::Error => "error",
        }
    }
}

#[derive(Debug, Default)]
pub struct Floor {
    pub level: Level,
    /// Eventual reads only go to followers replaying within this lag.
    pub max_staleness: Option<Duration>,
    lsn: u64,
    /// Timeline the floor belongs to (0 until a leader was seen).
    timeline: u32,
    /// A unit ended on the leader at this `mark`: the floor must rise to a leader position
    /// sampled after it. Covers writes and reads on the leader alike.
    leader_after: Option<u64>,
    /// The last read ran on this follower: (node, incarnation, `mark` at completion).
    last_read: Option<(usize, i64, u64)>,
}

/// Clamped floors (a failover lost the WAL above them), for the metric.
pub struct Clamped(pub u64);

impl Floor {
    pub fn new(level: Level, max_staleness: Option<Duration>) -> Floor {
        Floor { level, max_staleness, ..Floor::default() }
    }

    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// The timeline the floor belongs to (0 until a leader was seen).
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// `SET pgcausal.min_lsn = '<token>'`: adopt what another session has seen.
    pub fn adopt(&mut self, timeline: u32, lsn: u64) {
        if timeline != 0 && self.timeline < timeline {
            self.timeline = timeline;
        }
        self.lsn = self.lsn.max(lsn);
    }

    /// The leader's insert position read on the write's own connection after its commit.
    pub fn write_position(&mut self, lsn: u64) {
        self.lsn = self.lsn.max(lsn);
        self.leader_after = None;
    }

    /// Records the end of a unit (its ReadyForQuery 'I' was just seen).
    pub fn unit_ended(&mut self, node: usize, on_follower: bool, incarnation: i64, wrote: bool) {
        let now = mark();
        if on_follower {
            if self.level.monotonic() {
                self.last_read = Some((node, incarnation, now));
            }
        } else if (wrote && self.level.read_your_writes()) || self.level.monotonic() {
            // The leader's position after `now` covers anything any follower served before it.
            self.leader_after = Some(now);
            self.last_read = None;
        }
    }

    /// A new leader on a newer timeline: a floor above its position names WAL that was lost.
    pub fn follow_timeline(&mut self, snapshot: &Snapshot, positions: &Positions) -> Option<Clamped> {
        let leader = snapshot.leader?;
        let timeline = snapshot.nodes[leader].timeline;
        if timeline == 0 || timeline <= self.timeline {
            return None;
        }
        let first = self.timeline == 0;
        self.timeline = timeline;
        let leader_lsn = positions.nodes[leader].sample().lsn;
        if !first && leader_lsn > 0 && self.lsn > leader_lsn {
            let lost = self.lsn - leader_lsn;
            self.lsn = leader_lsn;
            return Some(Clamped(lost));
        }
        None
    }

    /// Folds a leader sample taken after the pending mark, if one is already known (no probe).
    fn settle_leader_now(&mut self, snapshot: &Snapshot, positions: &Positions) -> bool {
        let Some(after) = self.leader_after else { return true };
        let sample = snapshot.leader.map(|l| positions.nodes[l].sample()).filter(|s| s.sent_at > after);
        self.fold_leader(sample)
    }

    /// Turns pending observations into the numeric floor. False if the leader's position
    /// could not be learned in time (the caller then reads on the leader).
    async fn settle_leader(&mut self, snapshot: &Snapshot, positions: &Positions, wait: Duration) -> bool {
        let Some(after) = self.leader_after else { return true };
        let sample = match snapshot.leader {
            Some(leader) => Box::pin(positions.sample_after(leader, after, wait)).await,
            None => None,
        };
        self.fold_leader(sample)
    }

    /// A leader sample taken after the pending mark raises the floor and settles it.
    fn fold_leader(&mut self, sample: Option<super::Sample>) -> bool {
        let Some(sample) = sample else { return false };
        self.lsn = self.lsn.max(sample.lsn);
        self.leader_after = None;
        true
    }

    /// Folds the last read's node position (observed after it completed) into the floor.
    async fn fold_last_read(&mut self, snapshot: &Snapshot, positions: &Positions, wait: Duration) -> bool {
        let Some((node, incarnation, completed)) = self.last_read else { return true };
        let on_node = match Box::pin(positions.sample_after(node, completed, wait)).await {
            Some(s) if s.incarnation == incarnation => Some(s.lsn),
            _ => None,
        };
        // The node restarted or is gone: the leader's later position bounds what it served.
        let lsn = match on_node {
            Some(lsn) => Some(lsn),
            None => match snapshot.leader {
                Some(l) => Box::pin(positions.sample_after(l, completed, wait)).await.map(|s| s.lsn),
                None => None,
            },
        };
        match lsn {
            Some(lsn) => {
                self.lsn = self.lsn.max(lsn);
                self.last_read = None;
                true
            }
            None => false,
        }
    }

    /// The session's causal token (everything it has seen so far).
    pub async fn token(&mut self, snapshot: &Snapshot, positions: &Positions, wait: Duration) -> String {
        self.settle_leader(snapshot, positions, wait).await;
        self.fold_last_read(snapshot, positions, wait).await;
        format_token(self.timeline, self.lsn)
    }

    /// Picks the node for a read unit among the followers in rotation (minus `exclude`), and
    /// the leader when `policy.leader_shares`: it has every write, so such reads never wait.
    /// Most reads are planned without a wait; a wait (a probe, a follower catching up) is
    /// boxed, so this future stays small in every session's state.
    pub async fn plan_read(
        &mut self,
        snapshot: &Snapshot,
        positions: &Positions,
        balancer: &Balancer,
        policy: &ReadPolicy,
        exclude: &[usize],
    ) -> ReadPlan {
        loop {
            let wait = match self.plan_read_now(snapshot, positions, balancer, policy, exclude) {
                Planned::Plan(plan) => return plan,
                Planned::Wait(wait) => wait,
            };
            if let Some(plan) = Box::pin(self.read_wait(wait, snapshot, positions, policy, exclude)).await {
                return plan;
            }
            // The wait settled what the plan needed: plan again from the start (cheap).
        }
    }

    /// The plan as far as it goes without waiting.
    fn plan_read_now(
        &mut self,
        snapshot: &Snapshot,
        positions: &Positions,
        balancer: &Balancer,
        policy: &ReadPolicy,
        exclude: &[usize],
    ) -> Planned {
        let followers = &snapshot.followers;
        let allowed = |n: usize| !exclude.contains(&n);
        let leader = snapshot.leader.filter(|&l| policy.leader_shares && allowed(l));
        // The balancer's pick among followers accepted by `ok` and the sharing leader.
        let pick = |ok: &dyn Fn(usize) -> bool| {
            let chosen = balancer.pick_where(followers.iter().copied().chain(leader), |n| {
                n == leader.unwrap_or(usize::MAX) || (allowed(n) && ok(n))
            });
            chosen.map(|n| if Some(n) == leader { ReadPlan::LeaderShare } else { ReadPlan::Follower(n) })
        };
        match self.level {
            Level::Strong => return Planned::Plan(ReadPlan::Leader(Fallback::Strong)),
            Level::Eventual => {
                let max = self.max_staleness.map_or(u64::MAX, |d| d.as_millis() as u64);
                return Planned::Plan(
                    pick(&|n| snapshot.nodes[n].replay_lag_ms <= max).unwrap_or(ReadPlan::Leader(Fallback::NoFollower)),
                );
            }
            _ => {}
        }
        if !followers.iter().any(|&n| allowed(n)) {
            return Planned::Plan(if leader.is_some() {
                ReadPlan::LeaderShare
            } else {
                ReadPlan::Leader(Fallback::NoFollower)
            });
        }
        if !self.settle_leader_now(snapshot, positions) {
            // Learning the leader's position takes a probe; a sharing leader needs none.
            if leader.is_some() {
                return Planned::Plan(ReadPlan::LeaderShare);
            }
            return Planned::Wait(ReadWait::SettleLeader);
        }
        if let Some(planned) = self.stay_after_last_read(snapshot, positions, leader.is_some(), exclude) {
            return planned;
        }
        let floor = self.lsn;
        let reached = |n: usize| {
            let s = positions.nodes[n].sample();
            s.sent_at > 0 && s.lsn >= floor
        };
        match pick(&reached) {
            Some(plan) => Planned::Plan(plan),
            None => Planned::Wait(ReadWait::Floor),
        }
    }

    /// Runs the wait `plan_read_now` asked for: Some(plan) when it decides the read, None when
    /// the plan can go on.
    async fn read_wait(
        &mut self,
        wait: ReadWait,
        snapshot: &Snapshot,
        positions: &Positions,
        policy: &ReadPolicy,
        exclude: &[usize],
    ) -> Option<ReadPlan> {
        let settled = match wait {
            ReadWait::SettleLeader => self.settle_leader(snapshot, positions, policy.wait).await,
            ReadWait::FoldLastRead => self.fold_last_read(snapshot, positions, policy.wait).await,
            ReadWait::Floor => {
                let candidates: Vec<usize> =
                    snapshot.followers.iter().copied().filter(|n| !exclude.contains(n)).collect();
                return Some(self.wait_for_floor(positions, policy, &candidates).await);
            }
        };
        (!settled).then_some(ReadPlan::Leader(Fallback::LeaderPositionUnknown))
    }

    /// After a read whose node position is not folded in yet: a sample taken after it completed
    /// folds in for free; otherwise staying on that node needs no floor (it only moves forward),
    /// and moving needs the fold (or the sharing leader, which has every write).
    fn stay_after_last_read(
        &mut self,
        snapshot: &Snapshot,
        positions: &Positions,
        leader_shares: bool,
        exclude: &[usize],
    ) -> Option<Planned> {
        if let Some((node, incarnation, completed)) = self.last_read {
            let s = positions.nodes[node].sample();
            if s.sent_at > completed && s.incarnation == incarnation {
                self.lsn = self.lsn.max(s.lsn);
                self.last_read = None;
            }
        }
        let (node, incarnation, _) = self.last_read?;
        let s = positions.nodes[node].sample();
        if snapshot.followers.contains(&node)
            && !exclude.contains(&node)
            && s.incarnation == incarnation
            && s.sent_at > 0
            && s.lsn >= self.lsn
        {
            return Some(Planned::Plan(ReadPlan::Follower(node)));
        }
        if leader_shares {
            return Some(Planned::Plan(ReadPlan::LeaderShare));
        }
        Some(Planned::Wait(ReadWait::FoldLastRead))
    }

    /// Waits up to `policy.wait` for one of `candidates` to reach the floor.
    async fn wait_for_floor(&self, positions: &Positions, policy: &ReadPolicy, candidates: &[usize]) -> ReadPlan {
        let floor = self.lsn;
        let started = std::time::Instant::now();
        let waited =
            Box::pin(positions.wait_for(candidates, policy.wait, |_, s| s.sent_at > 0 && s.lsn >= floor)).await;
        metrics::histogram!(crate::metrics::CONSISTENCY_WAIT).record(started.elapsed().as_secs_f64());
        match waited {
            Some(node) => ReadPlan::Follower(node),
            None if policy.error_on_timeout => {
                let best = candidates.iter().map(|&n| (n, positions.nodes[n].sample().lsn)).max_by_key(|&(_, l)| l);
                let best = best.map_or("none".to_string(), |(n, l)| format!("node {n} at {}", format_lsn(l)));
                ReadPlan::Error(format!(
                    "no follower reached this session's floor {} within {:?} (best: {best})",
                    format_lsn(floor),
                    policy.wait
                ))
            }
            None => ReadPlan::Leader(Fallback::FloorTimeout),
        }
    }
}

/// How a session's reads may use the leader and wait for followers (from the config).
#[derive(Debug, Clone, Copy)]
pub struct ReadPolicy {
    /// How long a read waits for a follower to reach the floor.
    pub wait: Duration,
    /// Fail the read (instead of reading on the leader) when no follower reached it in time.
    pub error_on_timeout: bool,
    /// The leader takes a share of reads (`routing.leader_reads = always`).
    pub leader_shares: bool,
}

/// How far planning a read got without waiting.
enum Planned {
    Plan(ReadPlan),
    Wait(ReadWait),
}

/// What a read's plan waits for before it can go on.
#[derive(Debug, Clone, Copy)]
enum ReadWait {
    /// The leader's current position (a probe).
    SettleLeader,
    /// The position of the node the last read ran on (a probe there), to move elsewhere.
    FoldLastRead,
    /// A follower to reach the floor.
    Floor,
}

/// The fallback counters, one per reason, registered once: at level `strong` every read is
/// counted, and a `counter!` lookup per read cost a label allocation and a registry search.
pub struct FallbackMetrics([metrics::Counter; Fallback::ALL.len()]);

impl FallbackMetrics {
    pub fn new() -> FallbackMetrics {
        FallbackMetrics(
            Fallback::ALL.map(|f| metrics::counter!(crate::metrics::CONSISTENCY_FALLBACKS, "reason" => f.label())),
        )
    }

    pub fn count(&self, reason: Fallback) {
        self.0[reason as usize].increment(1);
    }
}

impl Default for FallbackMetrics {
    fn default() -> FallbackMetrics {
        FallbackMetrics::new()
    }
}

/// Choosing the node for a read among the eligible ones: least outstanding leases (default),
/// round robin, or random. One per proxy; the floor's `plan_read` picks through it.
pub struct Balancer {
    policy: Balance,
    /// Server connections currently leased per node (the "outstanding queries" of a node);
    /// append-only like every per-node table.
    outstanding: Arc<boxcar::Vec<AtomicUsize>>,
    next: AtomicUsize,
}

/// Counts one lease on a node while it lives.
pub struct Outstanding {
    counts: Arc<boxcar::Vec<AtomicUsize>>,
    node: usize,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.counts[self.node].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    pub fn new(policy: Balance, nodes: usize) -> Balancer {
        Balancer {
            policy,
            outstanding: Arc::new((0..nodes).map(|_| AtomicUsize::new(0)).collect()),
            next: AtomicUsize::new(0),
        }
    }

    /// One of `candidates` not in `exclude`, or None.
    pub fn pick(&self, candidates: &[usize], exclude: &[usize]) -> Option<usize> {
        self.pick_where(candidates.iter().copied(), |n| !exclude.contains(&n))
    }

    /// One of the `candidates` that `usable` accepts, or None; allocates nothing (per read unit).
    pub fn pick_where(
        &self,
        candidates: impl Iterator<Item = usize> + Clone,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let usable = || candidates.clone().filter(|&n| usable(n));
        match self.policy {
            Balance::LeastOutstanding => {
                // Ties break at random, so an idle cluster still spreads reads (a rotating
                // counter would lock into step with clients that lease twice per statement).
                // One pass (loads change under us): keep the least loaded, a random one among ties.
                // The draw needs no quality: fastrand's thread-local generator, a few instructions.
                let (mut chosen, mut least, mut ties) = (None, usize::MAX, 0u32);
                for n in usable() {
                    let load = self.outstanding[n].load(Ordering::Relaxed);
                    if load < least {
                        (chosen, least, ties) = (Some(n), load, 1);
                    } else if load == least {
                        ties += 1;
                        if fastrand::u32(0..ties) == 0 {
                            chosen = Some(n);
                        }
                    }
                }
                chosen
            }
            Balance::RoundRobin | Balance::Random => {
                let count = usable().count();
                if count <= 1 {
                    return usable().next();
                }
                let index = match self.policy {
                    Balance::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % count,
                    _ => fastrand::usize(0..count),
                };
                usable().nth(index)
            }
        }
    }

    /// A slot for a node a reload added; returns its index.
    pub fn add(&self) -> usize {
        self.outstanding.push(AtomicUsize::new(0))
    }

    pub fn lease(&self, node: usize) -> Outstanding {
        self.outstanding[node].fetch_add(1, Ordering::Relaxed);
        Outstanding { counts: self.outstanding.clone(), node }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Balance;
    use crate::topology::{NodeState, Role};

    fn snapshot() -> Snapshot {
        let node = |role, timeline| NodeState { up: true, role, timeline, ..Default::default() };
        Snapshot {
            nodes: vec![node(Role::Primary, 1), node(Role::Standby, 0), node(Role::Standby, 0)],
            leader: Some(0),
            followers: vec![1, 2],
            ..Snapshot::default()
        }
    }

    fn record(p: &Positions, node: usize, lsn: u64, incarnation: i64) {
        p.nodes[node].record_for_test(lsn, incarnation);
    }

    const WAIT: Duration = Duration::from_millis(30);
    const WAITS: ReadPolicy = ReadPolicy { wait: WAIT, error_on_timeout: false, leader_shares: false };
    const ERRS: ReadPolicy = ReadPolicy { error_on_timeout: true, ..WAITS };

    #[tokio::test]
    async fn reads_after_a_write_need_a_follower_past_the_leader_position() {
        let (p, b, s) = (Positions::new(3), Balancer::new(Balance::Random, 3), snapshot());
        let mut f = Floor::new(Level::Causal, None);
        f.unit_ended(0, false, 1, true);
        record(&p, 0, 500, 1);
        record(&p, 1, 400, 1);
        record(&p, 2, 500, 1);
        assert_eq!(f.plan_read(&s, &p, &b, &WAITS, &[]).await, ReadPlan::Follower(2));
        assert_eq!(f.lsn(), 500);
        // Nobody reaches a higher floor: the leader after the wait, or an error naming the floor.
        f.adopt(0, 900);
        assert_eq!(f.plan_read(&s, &p, &b, &WAITS, &[]).await, ReadPlan::Leader(Fallback::FloorTimeout));
        match f.plan_read(&s, &p, &b, &ERRS, &[]).await {
            ReadPlan::Error(m) => assert!(m.contains("0/384") && m.contains("node 2 at 0/1F4"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn monotonic_reads_stay_or_carry_the_position_to_another_node() {
        let (p, b, s) = (Positions::new(3), Balancer::new(Balance::Random, 3), snapshot());
        let mut f = Floor::new(Level::Monotonic, None);
        record(&p, 1, 300, 7);
        record(&p, 2, 100, 1);
        f.unit_ended(1, true, 7, false);
        // Node 1 is fine to stay on; excluding it forces a move, which carries 300 along.
        assert_eq!(f.plan_read(&s, &p, &b, &WAITS, &[]).await, ReadPlan::Follower(1));
        record(&p, 1, 300, 7); // a sample taken after the read completed
        assert_eq!(f.plan_read(&s, &p, &b, &WAITS, &[1]).await, ReadPlan::Leader(Fallback::FloorTimeout));
        assert_eq!(f.lsn(), 300);
        // Eventual reads ignore floors entirely.
        let mut e = Floor::new(Level::Eventual, None);
        e.adopt(0, 10_000);
        assert!(matches!(e.plan_read(&s, &p, &b, &WAITS, &[]).await, ReadPlan::Follower(_)));
        assert_eq!(
            Floor::new(Level::Strong, None).plan_read(&s, &p, &b, &WAITS, &[]).await,
            ReadPlan::Leader(Fallback::Strong)
        );
    }

    #[tokio::test]
    async fn a_sharing_leader_takes_reads_that_would_wait_and_probes_nothing() {
        let (p, b, s) = (Positions::new(3), Balancer::new(Balance::LeastOutstanding, 3), snapshot());
        // A wait this long would fail the test's timeout: sharing must never wait or probe.
        let shares = ReadPolicy { wait: Duration::from_secs(30), error_on_timeout: false, leader_shares: true };
        macro_rules! plan {
            ($f:expr, $exclude:expr) => {
                tokio::time::timeout(Duration::from_secs(5), $f.plan_read(&s, &p, &b, &shares, $exclude)).await
            };
        }
        record(&p, 0, 500, 1);
        record(&p, 1, 400, 1);
        record(&p, 2, 400, 1);
        let mut f = Floor::new(Level::Causal, None);
        // A write whose position is not sampled yet: the leader, at once.
        f.unit_ended(0, false, 1, true);
        assert_eq!(plan!(f, &[]).unwrap(), ReadPlan::LeaderShare);
        // The leader's sample after the write says 500; no follower is there yet: the leader.
        record(&p, 0, 500, 1);
        assert_eq!(plan!(f, &[]).unwrap(), ReadPlan::LeaderShare);
        assert_eq!(f.lsn(), 500);
        // Once a follower caught up, the least loaded eligible node takes the read.
        record(&p, 2, 500, 1);
        let _busy_leader = b.lease(0);
        assert_eq!(plan!(f, &[]).unwrap(), ReadPlan::Follower(2));
        // Moving off a follower whose later position is unknown goes to the leader, not a probe.
        f.unit_ended(2, true, 1, false);
        assert_eq!(plan!(f, &[2]).unwrap(), ReadPlan::LeaderShare);
    }

    #[test]
    fn every_fallback_has_its_own_counter_slot_and_label() {
        for (i, f) in Fallback::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "{f:?}: FallbackMetrics indexes by discriminant");
        }
        let labels: std::collections::HashSet<_> = Fallback::ALL.iter().map(|f| f.label()).collect();
        assert_eq!(labels.len(), Fallback::ALL.len());
    }

    #[test]
    fn a_newer_timeline_clamps_floors_above_the_new_leader() {
        let p = Positions::new(3);
        let mut s = snapshot();
        let mut f = Floor::new(Level::Causal, None);
        assert!(f.follow_timeline(&s, &p).is_none());
        f.adopt(0, 1000);
        s.nodes[0].timeline = 2;
        record(&p, 0, 600, 1);
        assert_eq!(f.follow_timeline(&s, &p).map(|c| c.0), Some(400));
        assert_eq!(f.lsn(), 600);
    }

    #[test]
    fn least_outstanding_prefers_the_idle_node_and_rotates_ties() {
        let b = Balancer::new(Balance::LeastOutstanding, 3);
        let _busy = b.lease(1);
        assert!((0..10).all(|_| b.pick(&[1, 2], &[]) == Some(2)));
        let picks: Vec<_> = (0..64).map(|_| b.pick(&[0, 2], &[]).unwrap()).collect();
        assert!(picks.contains(&0) && picks.contains(&2), "{picks:?}");
        assert_eq!(b.pick(&[1, 2], &[2]), Some(1));
        assert_eq!(b.pick(&[2], &[2]), None);
    }

    #[test]
    fn round_robin_and_random_stay_within_candidates() {
        let rr = Balancer::new(Balance::RoundRobin, 3);
        let picks: Vec<_> = (0..4).map(|_| rr.pick(&[1, 2], &[]).unwrap()).collect();
        assert_eq!(picks, vec![1, 2, 1, 2]);
        let random = Balancer::new(Balance::Random, 3);
        assert!((0..50).all(|_| matches!(random.pick(&[0, 2], &[]), Some(0 | 2))));
    }
}
