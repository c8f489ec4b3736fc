//! SHOW POOLS: each pool (node, database, user) with its active, idle and waiting counts, the
//! longest current wait and its size limit.

use super::Table;
use crate::frontend::shared::Shared;

pub fn show_pools(shared: &Shared) -> Table {
    let mut table = Table::new(&[
        "node",
        "database",
        "user",
        "active",
        "idle",
        "waiting",
        "longest_wait_seconds",
        "size",
        "max_size",
    ]);
    let mut rows = Vec::new();
    for node in shared.pools.iter() {
        for pool in node.all() {
            let (database, user) = pool.database_and_user();
            let stats = pool.stats();
            rows.push(vec![
                Some(node.name.clone()),
                Some(database.to_string()),
                Some(user.to_string()),
                Some(stats.active.to_string()),
                Some(stats.idle.to_string()),
                Some(stats.waiting.to_string()),
                Some(format!("{:.3}", stats.longest_wait.unwrap_or_default().as_secs_f64())),
                Some(stats.size().to_string()),
                Some(stats.size_limit.to_string()),
            ]);
        }
    }
    rows.sort();
    for row in rows {
        table.row(row);
    }
    table
}
