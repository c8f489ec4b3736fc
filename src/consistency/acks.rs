//! Write units acknowledged to clients, placed against the leader's sampled WAL positions, so a
//! failover can say how many acknowledged commits may lie above the new timeline's switch point.
//!
//! A unit counted before a position probe was sent committed at or below the position that
//! probe returns. The count is by unit, not by transaction id: an upper bound of what was lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Write units the leader acknowledged (ReadyForQuery after a unit that wrote), since start.
static ACKNOWLEDGED: AtomicU64 = AtomicU64::new(0);

/// Counts one write unit acknowledged to its client (one relaxed add per writing unit).
pub fn acknowledged() {
    ACKNOWLEDGED.fetch_add(1, Ordering::Relaxed);
}

/// Write units acknowledged so far.
pub fn total() -> u64 {
    ACKNOWLEDGED.load(Ordering::Relaxed)
}

/// One primary's recent samples: (position, units acknowledged before the probe was sent).
#[derive(Default)]
pub struct AckLog {
    samples: Mutex<VecDeque<(u64, u64)>>,
}

impl AckLog {
    /// Samples kept: at the 10 ms poll interval with writes all the time, about 40 s.
    const KEPT: usize = 4096;

    /// Records a primary's sample (by its poller, never the data path); repeats are not kept.
    pub fn record(&self, lsn: u64, acknowledged_before: u64) {
        let mut samples = self.samples.lock().expect("ack log poisoned");
        if samples.back() == Some(&(lsn, acknowledged_before)) {
            return;
        }
        if samples.len() == Self::KEPT {
            samples.pop_front();
        }
        samples.push_back((lsn, acknowledged_before));
    }

    /// Acknowledged units that may lie above `switch`: all those not counted before a sample at
    /// or below it.
    pub fn at_risk(&self, switch: u64, acknowledged_now: u64) -> u64 {
        let samples = self.samples.lock().expect("ack log poisoned");
        let safe = samples.iter().filter(|(lsn, _)| *lsn <= switch).map(|(_, acks)| *acks).max().unwrap_or(0);
        acknowledged_now.saturating_sub(safe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_counted_before_a_sample_below_the_switch_point_are_safe() {
        let log = AckLog::default();
        log.record(100, 5); // 5 units acknowledged before the probe that saw 100
        log.record(200, 9);
        log.record(300, 12);
        assert_eq!(log.at_risk(250, 15), 6, "units 10-15 may lie above 250");
        assert_eq!(log.at_risk(300, 15), 3, "only those after the last sample");
        assert_eq!(log.at_risk(50, 15), 15, "no sample at or below: every unit is at risk");
    }
}
