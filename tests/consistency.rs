//! Consistency checker (tests/support/checker.rs): many concurrent sessions through the proxy
//! against a real cluster whose followers replay late (`recovery_min_apply_delay`), counting
//! violations of each guarantee.
//!
//! - read-your-writes: a session inserts its own row and immediately reads back the highest
//!   sequence number it wrote; seeing less than the last acknowledged write is a violation.
//! - monotonic reads: one session increments a counter; readers must never see it go down.
//! - consistent prefix: Q asks questions, A answers only questions it has read; an observer that
//!   sees an answer must, in a later statement, see its question.
//!
//! Which server answered each read is taken from the read itself (`inet_server_port()`), never
//! from the proxy's own reports; the proxy's routing counters are printed alongside.
//! The checker can fail: at level `eventual` it must find read-your-writes violations.

mod support;
use support::checker::*;
use support::*;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio_postgres::Client;

/// The workload of each checker run: 8 read-your-writes sessions, 1 counter writer, 4 counter
/// readers, a questioner, an answerer and 3 observers (18 concurrent sessions) for 5 s.
fn shape() -> Shape {
    Shape {
        ryw_sessions: 8,
        counter_readers: 4,
        observers: 3,
        run_for: Duration::from_secs(5),
        through_failover: false,
        followers: Vec::new(),
    }
}
/// The replay delay of the delayed followers.
const DELAY: &str = "300ms";

/// One workload at a time: they compete for 2 cores, and their numbers should not depend on
/// what another test runs meanwhile.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn delayed() -> Vec<(String, String)> {
    vec![("recovery_min_apply_delay".into(), DELAY.into())]
}

/// Leader + 2 followers; node1 replays 300 ms late, node2 at once. Tests on it only add databases.
fn one_delayed_cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    static_cluster(&CLUSTER, || TestCluster::start(2, |spec| spec.follower_conf = vec![delayed(), vec![]]))
}

/// Leader + 2 followers that both replay 300 ms late.
fn both_delayed_cluster() -> &'static TestCluster {
    static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
    static_cluster(&CLUSTER, || TestCluster::start(2, |spec| spec.follower_conf = vec![delayed(), delayed()]))
}

/// Starts a proxy (pool size 4, transaction pooling) for `level` given `via`, creates `db`, runs
/// the workload and returns its report.
fn check_level(cluster: &TestCluster, db: &str, level: &str, via: Via) -> Report {
    check_level_with(cluster, db, level, via, "")
}

/// `check_level` with `extra` TOML in the proxy's config.
fn check_level_with(cluster: &TestCluster, db: &str, level: &str, via: Via, extra: &str) -> Report {
    prepare_database(cluster, db);
    let mut options = ProxyOptions { pool_size: 4, pool_mode: "transaction", ..Default::default() };
    options.extra = extra.to_string();
    if let Via::Config = via {
        options.extra += &format!("[consistency]\nlevel = \"{level}\"\n");
    }
    let proxy = ProxyProcess::start(cluster, options);
    let report = runtime().block_on(check(cluster, &proxy, db, level, via, &shape()));
    println!("{report}");
    report
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn causal_level_has_zero_violations_with_one_delayed_follower() {
    let _serial = serial();
    let cluster = one_delayed_cluster();
    let r = check_level(cluster, "cc_causal", "causal", Via::Default);
    assert_sound(&r, true, true, true);
    let share = r.follower_share();
    println!("causal, node1 delayed {DELAY}: {:.1}% of {} reads on followers", 100.0 * share, r.reads());
    assert!(share > 0.3, "only {:.1}% of {} reads ran on a follower (expected > 30%)\n{r}", 100.0 * share, r.reads());
}

#[test]
fn read_your_writes_and_monotonic_levels_hold_their_guarantee() {
    let _serial = serial();
    let cluster = one_delayed_cluster();
    let ryw = check_level(cluster, "cc_ryw", "read_your_writes", Via::Set);
    let monotonic = check_level(cluster, "cc_monotonic", "monotonic", Via::StartupOption);
    assert_sound(&ryw, true, false, false);
    assert_sound(&monotonic, false, true, false);
}

#[test]
fn both_followers_delayed_still_zero_violations() {
    let _serial = serial();
    let cluster = both_delayed_cluster();
    let r = check_level(cluster, "cc_both_delayed", "causal", Via::Config);
    println!(
        "causal, both followers delayed {DELAY}: {:.1}% of {} reads on followers",
        100.0 * r.follower_share(),
        r.reads()
    );
    assert_sound(&r, true, true, true);
}

/// With `routing.leader_reads = always` the leader serves every read no follower could serve
/// yet: still zero violations, and no read waits for replay or asks for a position probe.
#[test]
fn a_sharing_leader_keeps_every_guarantee_without_waiting() {
    let _serial = serial();
    let cluster = one_delayed_cluster();
    let r =
        check_level_with(cluster, "cc_leader_shares", "causal", Via::Default, "[routing]\nleader_reads = \"always\"\n");
    assert_sound(&r, true, true, true);
    let wanted: f64 = r.probes.iter().filter(|(k, _)| k.contains("cause=\"wanted\"")).map(|(_, v)| v).sum();
    assert_eq!(wanted, 0.0, "reads asked for position probes although the leader could serve them\n{r}");
    assert!(r.fallbacks.is_empty(), "reads fell back to the leader instead of taking its share\n{r}");
    assert!(r.follower_share() > 0.1, "too few reads ran on the followers\n{r}");
}

#[test]
fn eventual_level_shows_violations() {
    let _serial = serial();
    let cluster = one_delayed_cluster();
    let r = check_level(cluster, "cc_eventual", "eventual", Via::Config);
    let t = &r.tally;
    assert!(t.ryw_reads >= 50, "only {} read-your-writes reads\n{r}", t.ryw_reads);
    assert!(
        t.ryw_violations > 0,
        "at level eventual with node1 {DELAY} behind, the checker found no read-your-writes violation in {} reads\n{r}",
        t.ryw_reads
    );
}

/// Parses `timeline/hi/lo` into a comparable triple.
fn parse_token(token: &str) -> Option<(u32, u64)> {
    let parts: Vec<&str> = token.split('/').collect();
    match parts.as_slice() {
        [tl, hi, lo] => {
            Some((tl.parse().ok()?, (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?))
        }
        _ => None,
    }
}

#[test]
fn token_carries_causality_across_connections() {
    let _serial = serial();
    let cluster = one_delayed_cluster();
    let db = "cc_token";
    cluster.create_database(db);
    cluster.sql(0, db, "CREATE TABLE t (id int PRIMARY KEY)");
    cluster.cluster.lock().unwrap().wait_replicated(Duration::from_secs(30)).expect("replicated");
    let proxy = ProxyProcess::start(cluster, ProxyOptions { pool_size: 4, ..Default::default() });
    let conn_str = proxy.conn_str(db);
    let ports = cluster.ports.clone();
    const ROUNDS: i32 = 50;
    let started = Instant::now();
    let (failures, tokens, with_token, controls) = runtime().block_on(async {
        warm_up(cluster, &conn_str).await;
        let connect = |level: &'static str, via: Via| {
            let conn_str = conn_str.clone();
            async move { session(&conn_str, level, via).await.unwrap_or_else(|e| panic!("{level} session: {e}")) }
        };
        let a = connect("causal", Via::Default).await;
        // A long-lived session that never writes: its own floor says nothing about A's writes.
        let b_long = connect("read_your_writes", Via::Set).await;
        let control_long = connect("read_your_writes", Via::Set).await;
        let mut failures = Vec::new();
        let mut tokens: Vec<String> = Vec::new();
        // (saw the row, port) per reader kind.
        let mut with_token: BTreeMap<&str, Vec<(bool, u16)>> = BTreeMap::new();
        let mut controls: BTreeMap<&str, Vec<(bool, u16)>> = BTreeMap::new();
        for id in 1..=ROUNDS {
            // Fresh sessions, connected before the write so that the read follows it at once.
            let b_fresh = connect("causal", Via::Default).await;
            let control_fresh = connect("eventual", Via::StartupOption).await;
            let control_fresh_causal = connect("causal", Via::Default).await;
            simple_exec(&a, &format!("INSERT INTO t VALUES ({id})")).await.unwrap_or_else(|e| panic!("{e}"));
            let token = simple_row(&a, "SHOW pgcausal.lsn").await.unwrap_or_else(|e| panic!("{e}"));
            let token = token.first().cloned().flatten().unwrap_or_default();
            assert!(parse_token(&token).is_some(), "SHOW pgcausal.lsn returned {token:?}, not timeline/hi/lo");
            if let Some(prev) = tokens.last() {
                assert!(
                    parse_token(prev) < parse_token(&token),
                    "A's token did not advance over its write: {prev} then {token}"
                );
            }
            tokens.push(token.clone());
            // Controls first (closest to the write): no token.
            controls.entry("fresh eventual session").or_default().push(read_row(&control_fresh, id).await);
            controls.entry("fresh causal session").or_default().push(read_row(&control_fresh_causal, id).await);
            controls.entry("long-lived read_your_writes session").or_default().push(read_row(&control_long, id).await);
            // With the token: must see the row.
            for (kind, c) in [("fresh causal session", &b_fresh), ("long-lived read_your_writes session", &b_long)] {
                let set = format!("SET pgcausal.min_lsn = '{token}'");
                simple_exec(c, &set).await.unwrap_or_else(|e| panic!("{e}"));
                let (saw, port) = read_row(c, id).await;
                with_token.entry(kind).or_default().push((saw, port));
                if !saw {
                    failures.push(format!(
                        "{kind}: after `{set}` (A inserted id {id}, then SHOW pgcausal.lsn = {token}), \
                         SELECT ... WHERE id = {id} on {} did not see the row",
                        node_name(&ports, port)
                    ));
                }
            }
        }
        (failures, tokens, with_token, controls)
    });
    let summarize = |m: &BTreeMap<&str, Vec<(bool, u16)>>| {
        m.iter()
            .map(|(kind, reads)| {
                let missed = reads.iter().filter(|(saw, _)| !saw).count();
                let mut by_node = BTreeMap::<String, (usize, usize)>::new();
                for (saw, port) in reads {
                    let e = by_node.entry(node_name(&ports, *port)).or_default();
                    e.0 += 1;
                    e.1 += usize::from(!saw);
                }
                format!("  {kind}: missed {missed} of {} (reads, misses by node: {by_node:?})", reads.len())
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let report = format!(
        "token test, {ROUNDS} rounds in {:.1?}, tokens {} .. {}:\n with SET pgcausal.min_lsn:\n{}\n without a token \
         (controls, not asserted):\n{}",
        started.elapsed(),
        tokens.first().map_or("-", String::as_str),
        tokens.last().map_or("-", String::as_str),
        summarize(&with_token),
        summarize(&controls)
    );
    println!("{report}");
    assert!(
        failures.is_empty(),
        "{} reads with a token missed the write:\n{}\n{report}",
        failures.len(),
        failures.join("\n")
    );
}

/// Whether row `id` of `t` is visible, and which server answered.
async fn read_row(c: &Client, id: i32) -> (bool, u16) {
    let sql = format!("SELECT count(*), inet_server_port() FROM t WHERE id = {id}");
    let row = simple_row(c, &sql).await.unwrap_or_else(|e| panic!("{e}"));
    (int(&sql, &row, 0).unwrap() == 1, int(&sql, &row, 1).unwrap() as u16)
}
