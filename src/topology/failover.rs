//! The failover state machine, free of I/O: its phases and the transitions between them (a
//! failover's and a planned switchover's), the confirmation rule (a follower still receiving
//! from the leader vetoes), the election of the follower to promote, and the record of one
//! attempt that SHOW FAILOVERS lists. The driver (`failover_driver`) performs the I/O each phase
//! asks for and feeds the outcomes back here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// Where the failover stands: healthy -> suspect -> confirmed -> freezing -> promoting ->
/// repointing -> healthy; a switchover goes healthy -> draining -> promoting -> repointing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Healthy,
    /// The leader failed its probes; waiting `failover.timeout` and asking the followers.
    Suspect,
    /// Dead from pgcausal's side and the followers': fenced; waiting for an election (or, in
    /// manual mode, for PROMOTE).
    Confirmed,
    /// Stopping every reachable follower from re-attaching, then electing.
    Freezing,
    /// A switchover: units that need the leader are held while its units in flight finish, it
    /// is made read-only, and the successor replays its last WAL position.
    Draining,
    Promoting,
    /// Pointing the other followers at the new leader (or back at a leader that returned).
    Repointing,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Healthy => "healthy",
            Phase::Suspect => "suspect",
            Phase::Confirmed => "confirmed",
            Phase::Freezing => "freezing",
            Phase::Draining => "draining",
            Phase::Promoting => "promoting",
            Phase::Repointing => "repointing",
        }
    }

    /// True while the leader may be missing or changing: writes are not ready.
    pub fn running(self) -> bool {
        self != Phase::Healthy
    }
}

/// What happened, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    LeaderFailed,
    /// The leader answered probes again.
    LeaderAnswered,
    /// `failover.timeout` of continuous failure and no follower receives from the leader.
    Confirmed,
    /// A follower still receives from the leader: pgcausal is the one cut off.
    Vetoed,
    /// Auto mode, or the operator's PROMOTE.
    PromoteOrdered,
    /// Followers frozen and a candidate elected.
    Elected,
    NoCandidate,
    Promoted,
    PromoteFailed,
    /// Every other follower was repointed (or reported as needing a rejoin).
    Repointed,
    /// The operator's SWITCHOVER.
    SwitchoverOrdered,
    /// The old leader's units finished, it is read-only, the successor replayed its last WAL.
    Drained,
    /// The switchover was called off before anything was promoted: the old leader leads on.
    SwitchoverAborted,
}

impl Phase {
    /// The phase after `event`, or None when the event means nothing in this phase.
    pub fn on(self, event: Event) -> Option<Phase> {
        use Event as E;
        use Phase as P;
        Some(match (self, event) {
            (P::Healthy, E::LeaderFailed) => P::Suspect,
            (P::Suspect, E::LeaderAnswered) => P::Healthy,
            (P::Suspect, E::Vetoed) => P::Suspect,
            (P::Suspect, E::Confirmed) => P::Confirmed,
            // The old leader came back before any follower was frozen or promoted: it stays
            // leader, and the followers are pointed back at it.
            (P::Confirmed, E::LeaderAnswered) => P::Repointing,
            (P::Confirmed, E::PromoteOrdered) => P::Freezing,
            (P::Freezing, E::Elected) => P::Promoting,
            (P::Freezing, E::NoCandidate) => P::Confirmed,
            (P::Promoting, E::Promoted) => P::Repointing,
            (P::Promoting, E::PromoteFailed) => P::Confirmed,
            (P::Repointing, E::Repointed) => P::Healthy,
            (P::Healthy, E::SwitchoverOrdered) => P::Draining,
            (P::Draining, E::Drained) => P::Promoting,
            (P::Draining, E::SwitchoverAborted) => P::Healthy,
            _ => return None,
        })
    }
}

/// One follower's WAL receiver as the driver read it when confirming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    pub node: usize,
    /// `pg_stat_wal_receiver.status = 'streaming'`.
    pub streaming: bool,
    /// Time since its last message from the sender (WAL or keepalive).
    pub last_message: Option<Duration>,
    /// The configured node its sender address names, if any (a relay or VIP names none).
    pub upstream: Option<usize>,
}

/// The follower whose receiver proves the leader alive, if any: streaming and heard from its
/// sender within `timeout`, whatever address it reports, unless that address is another
/// configured node (a cascading follower's upstream is not the leader).
pub fn veto(receivers: &[Receiver], leader: usize, timeout: Duration) -> Option<usize> {
    receivers
        .iter()
        .filter(|r| r.node != leader && r.streaming)
        .filter(|r| r.upstream.is_none_or(|u| u == leader))
        .find(|r| r.last_message.is_some_and(|age| age <= timeout))
        .map(|r| r.node)
}

/// A frozen follower that might be promoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub node: usize,
    pub name: String,
    pub priority: u32,
    /// The timeline of the WAL it holds.
    pub timeline: u32,
    /// max(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()).
    pub position: u64,
}

/// Why no follower can be promoted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoCandidate {
    #[error("no follower could be reached")]
    NoneReachable,
    #[error("no reachable follower holds the old leader's timeline {0}")]
    NoneOnTimeline(u32),
    #[error("every follower on the old leader's timeline has priority 0 (never promote)")]
    AllPriorityZero,
    #[error("node {0} is not a reachable follower on the old leader's timeline")]
    NotACandidate(String),
    #[error("node {0} is {1} bytes of WAL behind the most advanced follower; PROMOTE {0} FORCE accepts losing them")]
    Behind(String, u64),
    /// Synchronous replication: no answering follower is known to hold every acknowledged commit.
    #[error("not promoting automatically: {0}")]
    Unsafe(String),
}

/// The follower to promote: on the old leader's `timeline`, priority above 0, highest position,
/// then highest priority, then name. `chosen` (PROMOTE <node>) must itself qualify.
pub fn elect(candidates: &[Candidate], timeline: u32, chosen: Option<usize>) -> Result<usize, NoCandidate> {
    if candidates.is_empty() {
        return Err(NoCandidate::NoneReachable);
    }
    let on_timeline: Vec<&Candidate> = candidates.iter().filter(|c| timeline == 0 || c.timeline == timeline).collect();
    if let Some(node) = chosen {
        return on_timeline.iter().find(|c| c.node == node && c.priority > 0).map(|c| c.node).ok_or_else(|| {
            let name = candidates.iter().find(|c| c.node == node).map_or(format!("#{node}"), |c| c.name.clone());
            NoCandidate::NotACandidate(name)
        });
    }
    if on_timeline.is_empty() {
        return Err(NoCandidate::NoneOnTimeline(timeline));
    }
    on_timeline
        .iter()
        .filter(|c| c.priority > 0)
        .max_by(|a, b| (a.position, a.priority).cmp(&(b.position, b.priority)).then_with(|| b.name.cmp(&a.name)))
        .map(|c| c.node)
        .ok_or(NoCandidate::AllPriorityZero)
}

/// How a failover attempt ended (the `result` label and SHOW FAILOVERS column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Running,
    Promoted,
    /// A switchover handed the leadership over.
    SwitchedOver,
    /// A switchover was called off before anything was promoted; the old leader leads on.
    Aborted,
    /// A follower still received from the leader: nothing done.
    Vetoed,
    /// The leader answered again before anything was promoted.
    Recovered,
    NoCandidate,
    Failed,
}

impl Outcome {
    pub const COUNTED: [Outcome; 7] = [
        Outcome::Promoted,
        Outcome::SwitchedOver,
        Outcome::Aborted,
        Outcome::Vetoed,
        Outcome::Recovered,
        Outcome::NoCandidate,
        Outcome::Failed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Promoted => "promoted",
            Outcome::SwitchedOver => "switched_over",
            Outcome::Aborted => "aborted",
            Outcome::Vetoed => "vetoed",
            Outcome::Recovered => "recovered",
            Outcome::NoCandidate => "no_candidate",
            Outcome::Failed => "failed",
        }
    }
}

/// The phases whose durations are recorded (the `phase` label of the histogram, a column of
/// SHOW FAILOVERS). A failover has no drain; a switchover no detect, confirm or freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timed {
    Detect,
    Confirm,
    Drain,
    Freeze,
    Promote,
    Repoint,
}

impl Timed {
    pub const ALL: [Timed; 6] =
        [Timed::Detect, Timed::Confirm, Timed::Drain, Timed::Freeze, Timed::Promote, Timed::Repoint];

    pub fn label(self) -> &'static str {
        match self {
            Timed::Detect => "detect",
            Timed::Confirm => "confirm",
            Timed::Drain => "drain",
            Timed::Freeze => "freeze",
            Timed::Promote => "promote",
            Timed::Repoint => "repoint",
        }
    }
}

/// What started an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The leader failed.
    Failover,
    /// The operator's SWITCHOVER, the leader healthy.
    Switchover,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::Switchover => "switchover",
        }
    }
}

/// One failover attempt, from the leader's first failure to its end (or one switchover, from
/// the order to its end).
#[derive(Debug, Clone)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    pub started: SystemTime,
    pub ended: Option<SystemTime>,
    pub outcome: Outcome,
    pub old_leader: String,
    pub new_leader: Option<String>,
    pub old_timeline: u32,
    pub new_timeline: Option<u32>,
    /// Duration of each of `Timed::ALL`, once passed.
    pub phases: [Option<Duration>; 6],
    /// A switchover: from holding new units that need the leader to releasing them to the new one.
    pub writes_held: Option<Duration>,
    /// WAL the old leader had flushed past the new timeline's switch point (a lower bound of what was lost).
    pub lost_wal_bytes: Option<u64>,
    /// Write units pgcausal acknowledged that may lie above the switch point (an upper bound).
    pub acked_at_risk: Option<u64>,
    pub reason: String,
    /// From the leader's last answer to the end.
    pub total: Option<Duration>,
    /// When the current phase began (monotonic), and when the leader was last seen answering.
    phase_started: Instant,
    last_seen_up: Instant,
}

impl Record {
    /// A new attempt: the leader was last seen answering at `last_seen_up`, suspected `now`.
    pub fn new(id: u64, old_leader: String, old_timeline: u32, last_seen_up: Instant, now: Instant) -> Record {
        let mut record = Record {
            id,
            kind: Kind::Failover,
            started: SystemTime::now() - now.saturating_duration_since(last_seen_up),
            ended: None,
            outcome: Outcome::Running,
            old_leader,
            new_leader: None,
            old_timeline,
            new_timeline: None,
            phases: [None; 6],
            writes_held: None,
            lost_wal_bytes: None,
            acked_at_risk: None,
            reason: String::new(),
            total: None,
            phase_started: now,
            last_seen_up,
        };
        record.phases[Timed::Detect as usize] = Some(now.saturating_duration_since(last_seen_up));
        record
    }

    /// A switchover of `old_leader` ordered `now`: its phases start then.
    pub fn switchover(id: u64, old_leader: String, old_timeline: u32, now: Instant) -> Record {
        let mut record = Record::new(id, old_leader, old_timeline, now, now);
        record.kind = Kind::Switchover;
        record.phases[Timed::Detect as usize] = None;
        record
    }

    /// Ends the timed phase `phase` at `now` (the next one starts then) and records it in the
    /// phase histogram.
    pub fn phase_done(&mut self, phase: Timed, now: Instant) -> Duration {
        let took = now.saturating_duration_since(self.phase_started);
        self.phases[phase as usize] = Some(took);
        self.phase_started = now;
        crate::metrics::histogram(crate::metrics::FAILOVER_PHASE_SECONDS, phase.label(), took);
        took
    }

    pub fn end(&mut self, outcome: Outcome, reason: impl Into<String>, now: Instant) {
        self.outcome = outcome;
        self.ended = Some(SystemTime::now());
        self.total = Some(now.saturating_duration_since(self.last_seen_up));
        self.reason = reason.into();
    }
}

/// What the operator asked of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// PROMOTE [node] [FORCE], once the leader is confirmed dead: the node (None: the
    /// election's choice), and whether losing WAL is accepted.
    Promote { node: Option<usize>, force: bool },
    /// SWITCHOVER [TO node], while the leader is healthy (None: the most advanced follower).
    Switchover { to: Option<usize> },
}

/// An operator's request and where its outcome goes.
pub struct Order {
    pub request: Request,
    pub reply: oneshot::Sender<Result<String, String>>,
}

impl Order {
    /// The node the operator named, if any.
    pub fn node(&self) -> Option<usize> {
        match self.request {
            Request::Promote { node, .. } => node,
            Request::Switchover { to } => to,
        }
    }

    /// PROMOTE ... FORCE.
    pub fn force(&self) -> bool {
        matches!(self.request, Request::Promote { force: true, .. })
    }
}

/// Failover attempts for SHOW FAILOVERS (the last `KEPT`), and the way orders reach the driver.
pub struct Failovers {
    records: Mutex<Vec<Record>>,
    next_id: AtomicU64,
    orders: mpsc::UnboundedSender<Order>,
}

impl Failovers {
    const KEPT: usize = 100;

    /// The log, and the receiving end of its orders (for the driver).
    pub fn new() -> (Failovers, mpsc::UnboundedReceiver<Order>) {
        let (orders, receiver) = mpsc::unbounded_channel();
        (Failovers { records: Mutex::new(Vec::new()), next_id: AtomicU64::new(1), orders }, receiver)
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds or replaces the record with this id.
    pub fn upsert(&self, record: &Record) {
        let mut records = self.records.lock().expect("failover log poisoned");
        match records.iter_mut().find(|r| r.id == record.id) {
            Some(r) => *r = record.clone(),
            None => records.push(record.clone()),
        }
        let excess = records.len().saturating_sub(Self::KEPT);
        records.drain(..excess);
    }

    pub fn forget(&self, id: u64) {
        self.records.lock().expect("failover log poisoned").retain(|r| r.id != id);
    }

    /// Every kept record, oldest first.
    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("failover log poisoned").clone()
    }

    /// Sends PROMOTE to the driver; Err when no driver runs (failover.mode = off).
    pub fn order(&self, order: Order) -> Result<(), Order> {
        self.orders.send(order).map_err(|e| e.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failover_walks_the_phases_in_order_and_nothing_else_moves_it() {
        let mut phase = Phase::Healthy;
        for (event, next) in [
            (Event::LeaderFailed, Phase::Suspect),
            (Event::Vetoed, Phase::Suspect),
            (Event::Confirmed, Phase::Confirmed),
            (Event::PromoteOrdered, Phase::Freezing),
            (Event::NoCandidate, Phase::Confirmed),
            (Event::PromoteOrdered, Phase::Freezing),
            (Event::Elected, Phase::Promoting),
            (Event::Promoted, Phase::Repointing),
            (Event::Repointed, Phase::Healthy),
        ] {
            phase = phase.on(event).unwrap_or_else(|| panic!("{event:?} in {phase:?}"));
            assert_eq!(phase, next);
        }
        assert_eq!(Phase::Healthy.on(Event::Promoted), None, "no promotion without a confirmed death");
        assert_eq!(Phase::Suspect.on(Event::PromoteOrdered), None, "never promote a suspect leader");
        assert_eq!(Phase::Promoting.on(Event::LeaderAnswered), None, "a promotion under way is finished");
        assert_eq!(Phase::Suspect.on(Event::LeaderAnswered), Some(Phase::Healthy));
        assert_eq!(Phase::Confirmed.on(Event::LeaderAnswered), Some(Phase::Repointing));
    }

    #[test]
    fn a_switchover_drains_then_promotes_and_only_a_healthy_leader_hands_over() {
        let mut phase = Phase::Healthy;
        for (event, next) in [
            (Event::SwitchoverOrdered, Phase::Draining),
            (Event::Drained, Phase::Promoting),
            (Event::Promoted, Phase::Repointing),
            (Event::Repointed, Phase::Healthy),
            (Event::SwitchoverOrdered, Phase::Draining),
            (Event::SwitchoverAborted, Phase::Healthy),
        ] {
            phase = phase.on(event).unwrap_or_else(|| panic!("{event:?} in {phase:?}"));
            assert_eq!(phase, next);
        }
        assert!(Phase::Draining.running(), "writes are not ready while held");
        assert_eq!(Phase::Suspect.on(Event::SwitchoverOrdered), None, "no switchover from a failing leader");
        assert_eq!(Phase::Draining.on(Event::PromoteOrdered), None);
        assert_eq!(Phase::Promoting.on(Event::SwitchoverAborted), None, "a promotion under way is finished");
        // A failed promotion after the hand-over is a failover's business: the old leader is fenced.
        assert_eq!(Phase::Promoting.on(Event::PromoteFailed), Some(Phase::Confirmed));
    }

    fn receiver(node: usize, streaming: bool, age_ms: Option<u64>, upstream: Option<usize>) -> Receiver {
        Receiver { node, streaming, last_message: age_ms.map(Duration::from_millis), upstream }
    }

    #[test]
    fn a_follower_that_still_hears_the_leader_vetoes_whatever_address_it_names() {
        let timeout = Duration::from_secs(2);
        assert_eq!(veto(&[receiver(1, true, Some(300), Some(0))], 0, timeout), Some(1));
        assert_eq!(veto(&[receiver(1, true, Some(300), None)], 0, timeout), Some(1), "via a relay or VIP");
        assert_eq!(veto(&[receiver(1, true, Some(2500), Some(0))], 0, timeout), None, "heard nothing lately");
        assert_eq!(veto(&[receiver(1, false, Some(10), Some(0))], 0, timeout), None, "not streaming");
        assert_eq!(veto(&[receiver(2, true, Some(10), Some(1))], 0, timeout), None, "streams from another node");
        assert_eq!(veto(&[], 0, timeout), None);
    }

    fn candidate(node: usize, name: &str, priority: u32, timeline: u32, position: u64) -> Candidate {
        Candidate { node, name: name.into(), priority, timeline, position }
    }

    #[test]
    fn the_most_advanced_follower_on_the_old_timeline_wins_then_priority_then_name() {
        let c = [candidate(1, "b", 100, 1, 500), candidate(2, "c", 100, 1, 900), candidate(3, "d", 100, 2, 9_999)];
        assert_eq!(elect(&c, 1, None), Ok(2), "position first; another timeline never");
        let tie = [candidate(1, "b", 100, 1, 900), candidate(2, "c", 200, 1, 900)];
        assert_eq!(elect(&tie, 1, None), Ok(2), "priority breaks a tie");
        let names = [candidate(2, "c", 100, 1, 900), candidate(1, "b", 100, 1, 900)];
        assert_eq!(elect(&names, 1, None), Ok(1), "then the name");
        let never = [candidate(1, "b", 0, 1, 900), candidate(2, "c", 100, 1, 100)];
        assert_eq!(elect(&never, 1, None), Ok(2), "priority 0 never promotes, even when ahead");
        assert_eq!(elect(&never[..1], 1, None), Err(NoCandidate::AllPriorityZero));
        assert_eq!(elect(&c[2..], 1, None), Err(NoCandidate::NoneOnTimeline(1)));
        assert_eq!(elect(&[], 1, None), Err(NoCandidate::NoneReachable));
        assert_eq!(elect(&c, 1, Some(1)), Ok(1), "the operator's choice, if it qualifies");
        assert_eq!(elect(&c, 1, Some(3)), Err(NoCandidate::NotACandidate("d".into())));
    }
}
