//! Synchronous replication as pgcausal keeps it (pure): which followers the leader's
//! `synchronous_standby_names` names, and whether a failover may promote without losing an
//! acknowledged commit (a quorum of the set was reached: R + W > N).
//!
//! A commit acknowledged under `ANY k (n1 .. nN)` was flushed by at least k of the N members.
//! Reaching N - k + 1 of them after the leader died means one reached member holds it, so the
//! most advanced reached follower (WAL is one ordered history) holds every such commit.

use crate::config::SyncMode;

/// `ANY count (names)`; no names: commits wait for no follower.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSet {
    pub count: usize,
    pub names: Vec<String>,
}

impl SyncSet {
    /// The value of `synchronous_standby_names` (names quoted: node names may hold any character).
    pub fn setting(&self) -> String {
        if self.names.is_empty() {
            return String::new();
        }
        let names: Vec<String> = self.names.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
        format!("ANY {} ({})", self.count, names.join(", "))
    }

    /// How many members must be reached so that one of them holds every commit acknowledged
    /// under this set (0: none needed, no commit waited for a follower).
    pub fn quorum(&self) -> usize {
        if self.names.is_empty() {
            0
        } else {
            self.names.len() + 1 - self.count.min(self.names.len())
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

/// The set the leader should have: `streaming` are the followers streaming from it now (by
/// their application_name, which is their node name), `followers` every follower it may have.
pub fn desired(mode: SyncMode, count: usize, streaming: &[String], followers: &[String]) -> Option<SyncSet> {
    let mut names: Vec<String> = match mode {
        SyncMode::Off => return None,
        // Only followers that stream can acknowledge: a set of absent names would stop writes.
        SyncMode::On => streaming.to_vec(),
        // Never below k: commits wait for followers that are not there rather than go on.
        SyncMode::Strict => followers.to_vec(),
    };
    names.sort();
    names.dedup();
    let count = match mode {
        SyncMode::Strict => count,
        _ => count.min(names.len()),
    };
    Some(SyncSet { count, names })
}

/// The sets promotion must respect: the one the leader runs with, and while a change is not
/// yet safe to rely on alone (its members have not all flushed what was acknowledged before
/// it), the one before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guard {
    pub sets: Vec<SyncSet>,
    /// The leader's WAL position when the newest set took effect: once every member of it has
    /// flushed that far, the older sets no longer matter.
    pub settled_at: u64,
}

impl Guard {
    /// The leader now runs with `set` (applied and read back), its WAL at `lsn`.
    pub fn applied(&mut self, set: SyncSet, lsn: u64) {
        self.sets.retain(|s| *s != set);
        self.sets.push(set);
        self.settled_at = lsn;
    }

    /// Members' flushed positions (name, flush LSN) as the leader reports them: once every
    /// member of the newest set has flushed past `settled_at`, older sets are dropped. An empty
    /// newest set (no follower streams) never settles: what was acknowledged before it is still
    /// only on the members of the sets before it.
    pub fn progress(&mut self, flushed: &[(String, u64)]) {
        let Some(newest) = self.sets.last().filter(|s| !s.names.is_empty()) else { return };
        let caught_up =
            newest.names.iter().all(|name| flushed.iter().any(|(n, lsn)| n == name && *lsn >= self.settled_at));
        if caught_up && self.sets.len() > 1 {
            self.sets.drain(..self.sets.len() - 1);
        }
    }

    /// True when some commit waited for a follower under a set in force: promotion must then
    /// respect the quorum, and a promotion that did holds every acknowledged commit.
    pub fn protects(&self) -> bool {
        self.sets.iter().any(|s| !s.names.is_empty())
    }

    /// Whether the followers reached after the leader died (`reached`, by name) include a quorum
    /// of every set: then the most advanced of them holds every acknowledged commit.
    pub fn promotable(&self, reached: &[String]) -> Result<(), String> {
        for set in &self.sets {
            let got = set.names.iter().filter(|n| reached.contains(n)).count();
            if got < set.quorum() {
                return Err(format!(
                    "only {got} of the synchronous standbys {} answered; {} must, so that one of them holds every acknowledged commit (PROMOTE <node> FORCE accepts the loss)",
                    set.setting(),
                    set.quorum()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn on_names_the_streaming_followers_and_shrinks_to_none_strict_never_shrinks() {
        let on = desired(SyncMode::On, 1, &names(&["node2", "node1"]), &names(&["node1", "node2"])).unwrap();
        assert_eq!(on.setting(), r#"ANY 1 ("node1", "node2")"#);
        let one_left = desired(SyncMode::On, 2, &names(&["node2"]), &names(&["node1", "node2"])).unwrap();
        assert_eq!(one_left.setting(), r#"ANY 1 ("node2")"#, "k shrinks to the streaming count");
        assert_eq!(desired(SyncMode::On, 1, &[], &names(&["node1"])).unwrap().setting(), "", "unprotected");
        let strict = desired(SyncMode::Strict, 2, &names(&["node2"]), &names(&["node1", "node2"])).unwrap();
        assert_eq!(strict.setting(), r#"ANY 2 ("node1", "node2")"#);
        assert_eq!(desired(SyncMode::Off, 1, &names(&["node1"]), &[]), None);
        let odd = SyncSet { count: 1, names: names(&["a\"b"]) };
        assert_eq!(odd.setting(), r#"ANY 1 ("a""b")"#);
    }

    #[test]
    fn a_quorum_of_every_set_in_force_must_answer() {
        let mut guard = Guard::default();
        assert_eq!(guard.promotable(&[]), Ok(()), "no synchronous set: nothing to require");
        guard.applied(SyncSet { count: 1, names: names(&["node1", "node2"]) }, 100);
        assert_eq!(guard.sets[0].quorum(), 2, "ANY 1 of 2: both must answer (R + W > N)");
        assert!(guard.promotable(&names(&["node1"])).unwrap_err().contains("only 1 of"));
        assert_eq!(guard.promotable(&names(&["node1", "node2"])), Ok(()));
        // Narrowed to node1 (node2 stopped streaming): commits acknowledged by node2 alone may
        // exist until node1 has flushed past the point the narrowing took effect.
        guard.applied(SyncSet { count: 1, names: names(&["node1"]) }, 500);
        guard.progress(&[("node1".into(), 400)]);
        assert!(guard.promotable(&names(&["node1"])).is_err(), "node1 not yet past 500");
        guard.progress(&[("node1".into(), 500)]);
        assert_eq!(guard.sets.len(), 1);
        assert_eq!(guard.promotable(&names(&["node1"])), Ok(()));
        // Shrunk to none: the earlier set still guards what it acknowledged.
        guard.applied(SyncSet::default(), 900);
        guard.progress(&[]);
        assert!(guard.promotable(&[]).is_err(), "node1 must still answer");
        assert_eq!(guard.promotable(&names(&["node1"])), Ok(()));
        let two_of_three = SyncSet { count: 2, names: names(&["a", "b", "c"]) };
        assert_eq!(two_of_three.quorum(), 2);
    }
}
