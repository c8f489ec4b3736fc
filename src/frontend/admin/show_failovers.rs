//! SHOW FAILOVERS: every failover attempt and switchover kept (oldest first): when, how it ended,
//! the old and new leader and timelines, each phase's duration, how long a switchover held
//! writes, the WAL lost, and why it ended so.

use super::{unix_time, Table};
use crate::frontend::shared::Shared;
use std::time::Duration;

pub fn show_failovers(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        "id",
        "kind",
        "started",
        "ended",
        "result",
        "old_leader",
        "new_leader",
        "old_timeline",
        "new_timeline",
        "detect_ms",
        "confirm_ms",
        "drain_ms",
        "freeze_ms",
        "promote_ms",
        "repoint_ms",
        "total_ms",
        "writes_held_ms",
        "lost_wal_bytes",
        "acked_commits_at_risk",
        "reason",
    ]);
    let ms = |d: Option<Duration>| d.map(|d| d.as_millis().to_string());
    for r in shared.failovers.records() {
        let mut row = vec![
            Some(r.id.to_string()),
            Some(r.kind.label().to_string()),
            Some(unix_time(r.started)),
            r.ended.map(unix_time),
            Some(r.outcome.label().to_string()),
            Some(r.old_leader.clone()),
            r.new_leader.clone(),
            Some(r.old_timeline).filter(|&t| t > 0).map(|t| t.to_string()),
            r.new_timeline.map(|t| t.to_string()),
        ];
        row.extend(r.phases.iter().map(|&p| ms(p)));
        row.push(ms(r.total));
        row.push(ms(r.writes_held));
        row.push(r.lost_wal_bytes.map(|b| b.to_string()));
        row.push(r.acked_at_risk.map(|n| n.to_string()));
        row.push(Some(r.reason.clone()).filter(|s| !s.is_empty()));
        table.row(row);
    }
    table
}
