//! SHOW STATS: totals since start and per-second rates (since start, and since the previous
//! SHOW STATS), read from the same counters Prometheus scrapes, so both always agree.

use super::Table;
use crate::frontend::shared::Shared;
use std::sync::Mutex;
use std::time::Instant;

/// (row name, metric, label that must match or "") summed from the metrics text.
const STATS: &[(&str, &str, &str)] = &[
    ("units", "pgcausal_routed_total", ""),
    ("units_on_followers", "pgcausal_routed_total", "target=\"follower\""),
    ("units_on_leader", "pgcausal_routed_total", "target=\"leader\""),
    ("queries", "pgcausal_queries_total", ""),
    ("bytes_received", "pgcausal_client_bytes_total", "direction=\"received\""),
    ("bytes_sent", "pgcausal_client_bytes_total", "direction=\"sent\""),
    ("pool_waits", "pgcausal_pool_wait_seconds_count", ""),
    ("pool_timeouts", "pgcausal_pool_timeouts_total", ""),
    ("consistency_waits", "pgcausal_consistency_wait_seconds_count", ""),
    ("consistency_fallbacks", "pgcausal_consistency_fallbacks_total", ""),
    ("route_retries", "pgcausal_route_retries_total", ""),
    ("errors", "pgcausal_errors_total", ""),
    ("errors_from_servers", "pgcausal_errors_total", "source=\"server\""),
    ("errors_from_proxy", "pgcausal_errors_total", "source=\"proxy\""),
    ("client_logins", "pgcausal_client_logins_total", ""),
    ("server_connects", "pgcausal_server_connects_total", ""),
];

/// The previous SHOW STATS: when, and its totals.
static PREVIOUS: Mutex<Option<(Instant, Vec<f64>)>> = Mutex::new(None);

/// When the process started counting (the first SHOW STATS reads it as the start if earlier unknown).
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Marks the start of counting; called once when the proxy starts.
pub fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

pub fn show_stats(_shared: &Shared) -> Table {
    let mut table = Table::new(&["stat", "total", "per_second", "per_second_recent"]);
    let Some(text) = crate::metrics::render() else {
        table.row(vec![Some("metrics are disabled ([metrics] listen = \"\")".to_string()), None, None, None]);
        return table;
    };
    let totals: Vec<f64> = STATS.iter().map(|(_, metric, label)| sum(&text, metric, label)).collect();
    let now = Instant::now();
    let uptime = now.duration_since(*STARTED.get_or_init(Instant::now)).as_secs_f64().max(1e-3);
    let mut previous = PREVIOUS.lock().expect("stats lock poisoned");
    for (i, (name, _, _)) in STATS.iter().enumerate() {
        let recent = previous.as_ref().map(|(at, before)| {
            let seconds = now.duration_since(*at).as_secs_f64().max(1e-3);
            format!("{:.2}", (totals[i] - before[i]).max(0.0) / seconds)
        });
        table.row(vec![
            Some(name.to_string()),
            Some(format!("{}", totals[i])),
            Some(format!("{:.2}", totals[i] / uptime)),
            recent,
        ]);
    }
    *previous = Some((now, totals));
    table
}

/// The sum of `metric`'s samples (those whose labels contain `label`, if given) in the text format.
fn sum(text: &str, metric: &str, label: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            (name == metric && (label.is_empty() || series.contains(label))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_a_metric_over_its_series_and_by_label() {
        let text = "# TYPE pgcausal_routed_total counter\n\
                    pgcausal_routed_total{node=\"a\",target=\"leader\"} 3\n\
                    pgcausal_routed_total{node=\"b\",target=\"follower\"} 7\n\
                    pgcausal_routed_totals 100\n\
                    pgcausal_queries_total{node=\"a\"} 2.5\n";
        assert_eq!(sum(text, "pgcausal_routed_total", ""), 10.0);
        assert_eq!(sum(text, "pgcausal_routed_total", "target=\"follower\""), 7.0);
        assert_eq!(sum(text, "pgcausal_queries_total", ""), 2.5);
        assert_eq!(sum(text, "pgcausal_nothing", ""), 0.0);
    }
}
