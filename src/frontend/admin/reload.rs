//! RELOAD (and SIGHUP): reads the config file again and applies what can change live; what
//! needs a restart is logged as such and left as it runs; an invalid file changes nothing.
//!
//! Live: users and passwords (new logins; pools log in with the new password from their next
//! connection), pool size and timeouts, the routing, consistency and pool-mode defaults of
//! sessions that log in from now on (a running session keeps the settings it started with),
//! `[failover]`, and the nodes: added ones are monitored at once and enter rotation once
//! eligible, removed ones leave rotation and drain (see `membership`).

use crate::config::Config;
use crate::error::ProxyError;
use crate::frontend::shared::Shared;
use crate::membership;

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Keys whose new values took effect.
    pub applied: Vec<String>,
    /// Keys whose new values need a restart (left as they run).
    pub need_restart: Vec<String>,
}

pub fn reload(shared: &Shared) -> Result<Reloaded, ProxyError> {
    let result = read_and_apply(shared);
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!(crate::metrics::CONFIG_RELOADS, "result" => outcome).increment(1);
    match &result {
        Ok(r) => tracing::info!(applied = ?r.applied, need_restart = ?r.need_restart, "configuration reloaded"),
        Err(e) => tracing::error!(error = %e, "configuration reload rejected; the running configuration is kept"),
    }
    result
}

fn read_and_apply(shared: &Shared) -> Result<Reloaded, ProxyError> {
    let path = shared.config_path.as_ref().ok_or_else(|| ProxyError::Reload("started without a config file".into()))?;
    let new = Config::load(path).map_err(|e| ProxyError::Reload(e.to_string()))?;
    // One reload at a time: node slots are pushed to every per-node table in step.
    let _one_at_a_time = shared.node_tasks.changing.lock().expect("reload lock poisoned");
    let old = shared.config();
    let snapshot = shared.topology.snapshot();
    let rejected = |e: membership::MembershipError| ProxyError::Reload(format!("{}: {e}", path.display()));
    let merged = membership::merge(&old.nodes, &new.nodes, snapshot.intent.leader).map_err(rejected)?;
    merged.allowed_in(snapshot.phase).map_err(rejected)?;
    let mut reloaded = compare(&old, &new, &merged);
    // Before anything is applied: a certificate that does not load rejects the whole reload.
    let tls = crate::frontend::tls::Acceptor::load(&new.tls).map_err(|e| ProxyError::Reload(e.to_string()))?;
    if tls.is_some() {
        reloaded.applied.push("tls (certificate and key read again)".into());
    }
    for key in &reloaded.need_restart {
        tracing::warn!(key = %key, "changed in the config file; takes effect only after a restart");
    }
    membership::add_slots(shared, &merged);
    shared.pools.reconfigure(&new);
    let mut running = keep_restart_only(&old, new);
    running.nodes = merged.nodes.clone();
    shared.swap_config(running);
    shared.tls.install(tls);
    shared.auth_cache.clear(); // answers read under the old [auth] query or login
    membership::settle(shared, &merged);
    Ok(reloaded)
}

/// The new config with the keys that need a restart as they run, so what the proxy reports
/// (SHOW CONFIG) is what it does.
fn keep_restart_only(old: &Config, mut new: Config) -> Config {
    new.proxy.listen = old.proxy.listen;
    new.proxy.threads = old.proxy.threads;
    new.metrics = old.metrics.clone();
    new.monitor = old.monitor.clone();
    new.consistency.poll_interval = old.consistency.poll_interval;
    new.routing.catalog_refresh = old.routing.catalog_refresh;
    new.pool.connect_timeout = old.pool.connect_timeout;
    new.pool.reset_query = old.pool.reset_query.clone();
    new
}

/// Which top-level keys changed, split by whether they apply live.
fn compare(old: &Config, new: &Config, nodes: &membership::Merged) -> Reloaded {
    let flat = |c: &Config| {
        let c = Config { nodes: Vec::new(), ..c.clone() }; // nodes are compared by name below
        let value = toml::Value::try_from(c).unwrap_or(toml::Value::Table(Default::default()));
        let mut rows = Vec::new();
        super::show_config::flatten("", &value, &mut rows);
        rows
    };
    let (before, after) = (flat(old), flat(new));
    let mut keys: Vec<&String> = before.iter().chain(after.iter()).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    let value = |rows: &[(String, String)], key: &str| rows.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let mut reloaded = Reloaded::default();
    for key in keys {
        if value(&before, key) == value(&after, key) {
            continue;
        }
        // Passwords are masked in the flat view: a changed one shows only through `users`.
        let list = if needs_restart(key) { &mut reloaded.need_restart } else { &mut reloaded.applied };
        list.push(key.clone());
    }
    for (i, user) in new.users.iter().enumerate() {
        if old.user(&user.name).is_some_and(|u| u.password != user.password) {
            reloaded.applied.push(format!("users[{i}].password"));
        }
        if old.user(&user.name).is_some_and(|u| u.server_password != user.server_password) {
            reloaded.applied.push(format!("users[{i}].server_password"));
        }
    }
    let name = |i: usize| &nodes.nodes[i].name;
    reloaded.applied.extend(nodes.added.iter().map(|&i| format!("nodes.{}: added", name(i))));
    reloaded.applied.extend(nodes.removed.iter().map(|&i| format!("nodes.{}: removed", name(i))));
    for (i, kept) in old.active_nodes().filter(|(i, _)| !nodes.removed.contains(i)) {
        if nodes.nodes[i].priority != kept.priority {
            reloaded.applied.push(format!("nodes.{}.priority", kept.name));
        }
        if let Some(file) = new.nodes.iter().find(|n| n.name == kept.name) {
            if (file.tls, &file.ca_file) != (kept.tls, &kept.ca_file) {
                reloaded.need_restart.push(format!("nodes.{}.tls", kept.name));
            }
        }
    }
    reloaded
}

fn needs_restart(key: &str) -> bool {
    const RESTART: &[&str] = &[
        "proxy.listen",
        "proxy.threads",
        "metrics.",
        "monitor.",
        "consistency.poll_interval",
        "routing.catalog_refresh",
        "pool.connect_timeout",
        "pool.reset_query",
    ];
    RESTART.iter().any(|r| key.starts_with(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "[proxy]\nlisten = \"127.0.0.1:7432\"\n[pool]\nsize = 5\n[[nodes]]\nname = \"pg1\"\n\
                        host = \"127.0.0.1\"\nport = 5432\n[[users]]\nname = \"app\"\npassword = \"one\"\n";

    fn config(text: &str) -> Config {
        Config::parse(Path::new("test.toml"), text).unwrap()
    }

    #[test]
    fn changes_split_into_live_and_restart_and_restart_keys_keep_running_values() {
        let old = config(BASE);
        let new = config(
            &BASE
                .replace("size = 5", "size = 9")
                .replace("password = \"one\"", "password = \"two\"")
                .replace("127.0.0.1:7432", "127.0.0.1:7433")
                .replace("port = 5432", "port = 5433"),
        );
        let merged = membership::merge(&old.nodes, &new.nodes, None).unwrap();
        let r = compare(&old, &new, &merged);
        assert_eq!(
            r.applied,
            vec!["pool.size", "users[0].password", "nodes.pg1: added", "nodes.pg1: removed"],
            "a node at another address is a new node"
        );
        assert_eq!(r.need_restart, vec!["proxy.listen".to_string()]);
        let kept = keep_restart_only(&old, new);
        assert_eq!((kept.pool.size, kept.proxy.listen.port()), (9, 7432));
        let same = membership::merge(&old.nodes, &old.nodes, None).unwrap();
        assert_eq!(compare(&old, &old, &same), Reloaded::default());
    }
}
