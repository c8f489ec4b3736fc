//! Choosing the node for a read among the eligible ones: least outstanding leases (default),
//! round robin, or random.

use crate::config::Balance;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Balancer {
    policy: Balance,
    /// Server connections currently leased per node (the "outstanding queries" of a node).
    outstanding: Arc<Vec<AtomicUsize>>,
    next: AtomicUsize,
}

/// Counts one lease on a node while it lives.
pub struct Outstanding {
    counts: Arc<Vec<AtomicUsize>>,
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

    pub fn lease(&self, node: usize) -> Outstanding {
        self.outstanding[node].fetch_add(1, Ordering::Relaxed);
        Outstanding { counts: self.outstanding.clone(), node }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
