//! The pure election: from the monitors' observations and pgcausal's own decisions (fenced
//! nodes, epoch, the current timeline), which node takes writes, which may serve reads, and
//! why each other node takes no work. No I/O: every rule here is tested on plain values.

use super::{LagLimits, NodeState, Role};

/// What pgcausal decided, beside what the monitors observed: kept on the control thread and
/// carried from one snapshot to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Intent {
    /// Rises with every new leader (elected here or promoted by the failover driver).
    pub epoch: u64,
    /// The leader of the current epoch, kept while it is down (a failover's old leader).
    pub leader: Option<usize>,
    /// The current leader's timeline, kept while it is down: followers replaying its history
    /// keep serving reads, and older-timeline primaries are forks.
    pub timeline: u32,
    /// Nodes never routed to (writes or reads) until they rejoin as a follower of the leader.
    pub fenced: Vec<bool>,
    /// Nodes taken out of the config by a reload: never elected, fenced or routed to again
    /// (their slot stays, so node indexes never move).
    pub removed: Vec<bool>,
    /// The synchronous standbys pgcausal set on the leader (None: not managed).
    pub synchronous: Option<super::sync_standbys::SyncSet>,
    /// A switchover's leader, handing over: up and unfenced, but no new unit goes to it (units
    /// that need the leader wait) while its units in flight finish and its successor catches up.
    pub handing_over: Option<usize>,
}

/// Why a node takes no work now (SHOW NODES, logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// Taken out of the config by a reload (its connections drain).
    Removed,
    Down,
    NeverProbed,
    /// Was leader of an older epoch or timeline, or a second primary: no writes, no reads.
    Fenced,
    /// A primary beside the leader that is not (yet) fenced: never expected, reported.
    OtherPrimary,
    /// Streams from another primary, or replays another timeline than the leader's.
    Forked,
    /// Its timeline is unknown (no WAL receiver seen yet, or the monitor may not read it).
    TimelineUnknown,
    Lagging,
    /// The leader in a switchover: its units in flight finish, new ones wait for its successor.
    HandingOver,
}

impl Idle {
    pub fn reason(self) -> &'static str {
        match self {
            Idle::Removed => "removed from the config (draining)",
            Idle::Down => "down",
            Idle::NeverProbed => "never probed",
            Idle::Fenced => "fenced: must rejoin as a follower of the leader",
            Idle::OtherPrimary => "a primary that is not the leader",
            Idle::Forked => "streams from another primary or timeline",
            Idle::TimelineUnknown => "timeline unknown (no WAL receiver seen)",
            Idle::Lagging => "catching up: lagging beyond routing limits",
            Idle::HandingOver => "leader handing over (switchover): new units that need the leader wait",
        }
    }
}

/// The outcome of one election.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elected {
    pub leader: Option<usize>,
    pub followers: Vec<usize>,
    /// Per node: None when it takes work (the leader, a follower in rotation).
    pub idle: Vec<Option<Idle>>,
    /// More than one primary is up (a fenced one included): two writers may exist.
    pub split_brain: bool,
    pub intent: Intent,
}

/// Elects on `nodes` given the last intent; returns the new intent with the result.
pub fn elect(nodes: &[NodeState], previous: &Intent, limits: LagLimits) -> Elected {
    let mut intent = previous.clone();
    intent.fenced.resize(nodes.len(), false);
    intent.removed.resize(nodes.len(), false);
    // A removed node is no one's concern any more: not a writer, not fenced, not a split brain.
    for (fenced, &removed) in intent.fenced.iter_mut().zip(&intent.removed) {
        *fenced &= !removed;
    }
    let removed = intent.removed.clone();
    let primary = |i: usize| !removed[i] && nodes[i].up && nodes[i].role == Role::Primary;
    let held = intent.handing_over;
    let handing_over = |i: usize| held == Some(i);
    // A primary qualifies when not fenced and not on an older timeline; none does during a
    // switchover's hand-over (the driver ends it just before promoting the successor).
    let qualifies = |i: usize, intent: &Intent| {
        primary(i)
            && !intent.fenced[i]
            && held.is_none()
            && (intent.timeline == 0 || nodes[i].timeline >= intent.timeline)
    };
    let newest = (0..nodes.len()).filter(|&i| qualifies(i, &intent)).map(|i| nodes[i].timeline).max();
    // Keep the current leader while it qualifies on the newest timeline: two primaries never flap.
    let leader = newest.and_then(|tl| {
        intent
            .leader
            .filter(|&l| l < nodes.len() && qualifies(l, &intent) && nodes[l].timeline == tl)
            .or_else(|| (0..nodes.len()).find(|&i| qualifies(i, &intent) && nodes[i].timeline == tl))
    });
    if let Some(l) = leader {
        if intent.leader != Some(l) {
            intent.epoch += 1;
            if let Some(old) = intent.leader.filter(|&o| o < nodes.len() && !removed[o]) {
                intent.fenced[old] = true; // a leader of an older epoch writes no more
            }
            intent.leader = Some(l);
        }
        intent.timeline = nodes[l].timeline;
    }
    // Never two writers: every other up primary is fenced (a leader handing over is the one
    // writer of its epoch until the driver fences it, just before promoting its successor).
    for i in 0..nodes.len() {
        if primary(i) && Some(i) != leader && !handing_over(i) {
            intent.fenced[i] = true;
        }
    }
    // A fenced node rejoins once it streams from the leader on the leader's timeline.
    for (i, n) in nodes.iter().enumerate() {
        if intent.fenced[i] && n.streaming && follows(n, i, leader, &intent) {
            intent.fenced[i] = false;
        }
    }
    let leader_lsn = leader.map(|l| nodes[l].lsn);
    let idle: Vec<Option<Idle>> = (0..nodes.len())
        .map(|i| {
            let n = &nodes[i];
            match n.role {
                _ if Some(i) == leader => None,
                _ if intent.removed[i] => Some(Idle::Removed),
                _ if handing_over(i) && n.up && !intent.fenced[i] => Some(Idle::HandingOver),
                _ if !n.up && n.incarnation == 0 && n.role == Role::Unknown => Some(Idle::NeverProbed),
                _ if !n.up => Some(Idle::Down),
                _ if intent.fenced[i] => Some(Idle::Fenced),
                Role::Unknown => Some(Idle::NeverProbed),
                Role::Primary => Some(Idle::OtherPrimary),
                Role::Standby if n.timeline == 0 && intent.timeline != 0 => Some(Idle::TimelineUnknown),
                Role::Standby if !follows(n, i, leader, &intent) => Some(Idle::Forked),
                // Without a known leader byte lag cannot be measured: time lag alone decides.
                Role::Standby
                    if n.replay_lag_ms > limits.max_ms
                        || leader_lsn.is_some_and(|l| l.saturating_sub(n.lsn) > limits.max_bytes) =>
                {
                    Some(Idle::Lagging)
                }
                Role::Standby => None,
            }
        })
        .collect();
    let followers = (0..nodes.len()).filter(|&i| Some(i) != leader && idle[i].is_none()).collect();
    let split_brain = (0..nodes.len()).filter(|&i| primary(i)).count() > 1;
    Elected { leader, followers, idle, split_brain, intent }
}

/// A standby replays the leader's history: on the current timeline (unknown before any leader
/// was seen), and not streaming from a node other than the leader.
fn follows(n: &NodeState, i: usize, leader: Option<usize>, intent: &Intent) -> bool {
    let timeline_ok = intent.timeline == 0 || n.timeline == intent.timeline;
    let upstream_ok = match (n.upstream, leader.or(intent.leader)) {
        (Some(u), Some(l)) => u == l && u != i,
        _ => true,
    };
    n.up && n.role == Role::Standby && timeline_ok && upstream_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LagLimits = LagLimits { max_bytes: 1000, max_ms: 500 };

    fn primary(timeline: u32) -> NodeState {
        NodeState { up: true, role: Role::Primary, timeline, lsn: 10_000, incarnation: 1, ..Default::default() }
    }

    fn standby(timeline: u32, lsn: u64, replay_lag_ms: u64) -> NodeState {
        let role = Role::Standby;
        NodeState {
            up: true,
            role,
            timeline,
            lsn,
            replay_lag_ms,
            streaming: true,
            incarnation: 1,
            ..Default::default()
        }
    }

    fn down(mut n: NodeState) -> NodeState {
        n.up = false;
        n
    }

    #[test]
    fn elects_the_newest_timeline_fences_the_rest_and_keeps_a_qualifying_leader() {
        let e = elect(&[primary(1), standby(2, 10_000, 0), primary(2)], &Intent::default(), LIMITS);
        assert_eq!(e.leader, Some(2));
        assert_eq!(e.intent.fenced, vec![true, false, false], "the timeline-1 primary is a fork");
        assert!(e.split_brain);
        assert_eq!(e.intent.timeline, 2);
        let again = elect(&[primary(2), standby(2, 10_000, 0), primary(2)], &e.intent, LIMITS);
        assert_eq!(again.leader, Some(2), "a qualifying leader is kept");
        assert_eq!(again.intent.epoch, e.intent.epoch, "no new epoch without a new leader");
        assert_eq!(elect(&[standby(0, 0, 0)], &Intent::default(), LIMITS).leader, None);
    }

    #[test]
    fn a_fenced_old_leader_never_returns_as_leader_until_it_rejoins() {
        let start = elect(&[primary(1), standby(1, 10_000, 0)], &Intent::default(), LIMITS);
        assert_eq!((start.leader, start.intent.epoch), (Some(0), 1));
        // The leader dies; the driver fences it and promotes node 1 to timeline 2.
        let mut intent = start.intent.clone();
        intent.fenced[0] = true;
        let dead = elect(&[down(primary(1)), standby(1, 10_000, 0)], &intent, LIMITS);
        assert_eq!(dead.leader, None);
        assert_eq!(dead.followers, vec![1], "reads go on while no leader is known");
        let promoted = elect(&[down(primary(1)), primary(2)], &dead.intent, LIMITS);
        assert_eq!((promoted.leader, promoted.intent.epoch, promoted.intent.timeline), (Some(1), 2, 2));
        // The old leader restarts as a primary on timeline 1: fenced, no reads, split brain.
        let back = elect(&[primary(1), primary(2)], &promoted.intent, LIMITS);
        assert_eq!(back.leader, Some(1));
        assert_eq!(back.idle[0], Some(Idle::Fenced));
        assert!(back.split_brain && back.followers.is_empty());
        // Its WAL position passing the new leader's changes nothing.
        let mut ahead = primary(1);
        ahead.lsn = 99_999;
        assert_eq!(elect(&[ahead, primary(2)], &back.intent, LIMITS).leader, Some(1));
        // Rejoined: a standby streaming from the leader on timeline 2 serves reads again.
        let mut rejoined = standby(2, 10_000, 0);
        rejoined.upstream = Some(1);
        let healed = elect(&[rejoined, primary(2)], &back.intent, LIMITS);
        assert_eq!(healed.intent.fenced, vec![false, false]);
        assert_eq!(healed.followers, vec![0]);
        assert!(!healed.split_brain);
    }

    #[test]
    fn a_follower_of_a_forked_primary_or_older_timeline_is_never_in_rotation() {
        let intent = elect(&[primary(1), primary(2), standby(2, 10_000, 0)], &Intent::default(), LIMITS).intent;
        // Streams from the forked old leader (node 0), on timeline 1.
        let mut forked = standby(1, 20_000, 0);
        forked.upstream = Some(0);
        let e = elect(&[primary(1), primary(2), forked.clone()], &intent, LIMITS);
        assert_eq!(e.idle[2], Some(Idle::Forked));
        // Even if it somehow reported the leader's timeline, its sender is another primary.
        forked.timeline = 2;
        assert_eq!(elect(&[primary(1), primary(2), forked], &intent, LIMITS).idle[2], Some(Idle::Forked));
        let unknown = standby(0, 10_000, 0);
        let e = elect(&[primary(1), primary(2), unknown], &intent, LIMITS);
        assert_eq!(e.idle[2], Some(Idle::TimelineUnknown));
    }

    #[test]
    fn a_removed_node_is_never_elected_fenced_routed_to_or_a_split_brain() {
        let start = elect(&[primary(1), standby(1, 10_000, 0), primary(1)], &Intent::default(), LIMITS);
        assert_eq!((start.leader, start.intent.fenced.clone()), (Some(0), vec![false, false, true]));
        let mut intent = start.intent.clone();
        intent.removed = vec![false, true, true];
        let e = elect(&[primary(1), standby(1, 10_000, 0), primary(1)], &intent, LIMITS);
        assert_eq!((e.leader, e.followers.clone()), (Some(0), vec![]));
        assert_eq!((e.idle[1], e.idle[2]), (Some(Idle::Removed), Some(Idle::Removed)));
        assert_eq!(e.intent.fenced, vec![false, false, false], "a removed node is no longer fenced");
        assert!(!e.split_brain, "a removed primary is not pgcausal's writer");
        // A node added later (a longer node list) starts neither fenced nor removed.
        let grown = elect(&[primary(1), standby(1, 10_000, 0), primary(1), standby(1, 10_000, 0)], &e.intent, LIMITS);
        assert_eq!((grown.followers, grown.intent.removed.len()), (vec![3], 4));
    }

    #[test]
    fn a_leader_handing_over_takes_no_new_unit_and_is_not_fenced_until_the_driver_says() {
        let mut standby = standby(1, 10_000, 0);
        standby.upstream = Some(0);
        let start = elect(&[primary(1), standby.clone()], &Intent::default(), LIMITS);
        let mut intent = start.intent.clone();
        intent.handing_over = Some(0);
        let held = elect(&[primary(1), standby.clone()], &intent, LIMITS);
        assert_eq!(held.leader, None, "units that need the leader wait");
        assert_eq!(held.idle[0], Some(Idle::HandingOver));
        assert_eq!(held.followers, vec![1], "reads go on");
        assert_eq!(held.intent.fenced, vec![false, false], "not fenced: the switchover may still be called off");
        assert_eq!((held.intent.leader, held.intent.epoch), (Some(0), start.intent.epoch));
        assert!(!held.split_brain);
        // Called off: it is the leader again, same epoch.
        intent.handing_over = None;
        let back = elect(&[primary(1), standby.clone()], &intent, LIMITS);
        assert_eq!((back.leader, back.intent.epoch), (Some(0), start.intent.epoch));
        // Done: fenced, then its successor promoted on timeline 2 is the leader of a new epoch.
        let mut fenced = held.intent.clone();
        (fenced.fenced[0], fenced.handing_over) = (true, None);
        let promoted = elect(&[primary(1), primary(2)], &fenced, LIMITS);
        assert_eq!((promoted.leader, promoted.intent.epoch), (Some(1), start.intent.epoch + 1));
        assert_eq!(promoted.idle[0], Some(Idle::Fenced));
        // A second primary appearing during the hand-over is fenced, never elected.
        let handing_over = Intent { handing_over: Some(0), ..start.intent.clone() };
        let other = elect(&[primary(1), standby, primary(1)], &handing_over, LIMITS);
        assert_eq!((other.leader, other.intent.fenced), (None, vec![false, false, true]));
    }

    #[test]
    fn followers_in_rotation_are_up_standbys_within_lag_limits() {
        let nodes = vec![
            primary(1),
            standby(1, 9_500, 0),
            standby(1, 8_000, 0),
            standby(1, 10_000, 900),
            down(standby(1, 10_000, 0)),
        ];
        let e = elect(&nodes, &Intent::default(), LIMITS);
        assert_eq!(e.followers, vec![1]);
        assert_eq!(e.idle[2], Some(Idle::Lagging));
        assert_eq!(e.idle[4], Some(Idle::Down));
        // With the leader gone, byte lag is unknown: time lag alone decides.
        let mut leaderless = nodes;
        leaderless[0].up = false;
        assert_eq!(elect(&leaderless, &e.intent, LIMITS).followers, vec![1, 2]);
    }
}
