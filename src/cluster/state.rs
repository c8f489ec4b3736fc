//! cluster.state persistence, node ports (picking, moving, re-pointing followers) and reusing an
//! existing cluster.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::error::{io_err, Result};
use super::process::{pick_port, send_signal};
use super::setup::conf_line;
use super::{Cluster, ClusterError, ClusterSpec, Node, CONF_FILE, STATE_FILE};

impl Cluster {
    pub(super) fn reuse(&mut self, spec: &ClusterSpec) -> Result<()> {
        let count = self.load_nodes()?;
        if count != 1 + spec.followers {
            warn!(saved = count - 1, requested = spec.followers, "reusing existing cluster; follower count differs");
        }
        self.initialized = true;
        info!(root = %self.root.display(), nodes = count, "reusing existing cluster");
        // An earlier run killed with SIGKILL leaves its servers running: stop them all first.
        self.stop_leftover_postmasters()?;
        for i in 0..count {
            self.ensure_port_free(i)?;
        }
        for i in 0..count {
            self.spawn_node(i)?;
        }
        // Report roles as they are now; an earlier promotion may have changed them and that is not repaired.
        let mut leaders = 0;
        for i in 0..count {
            let role = match self.psql(i, "postgres", "select pg_is_in_recovery()")?.as_str() {
                "f" => "leader",
                _ => "follower",
            };
            leaders += usize::from(role == "leader");
            info!(node = %self.nodes[i].name, port = self.nodes[i].port, %role, "node role");
        }
        if leaders == 1 {
            if let Err(e) = self.wait_streaming(Duration::from_secs(30)) {
                warn!(error = %e, "reused cluster: followers not streaming");
            }
        } else {
            warn!(leaders, "reused cluster does not have exactly one leader; leaving it as it is");
        }
        Ok(())
    }

    /// Appends the nodes cluster.state has beyond the known ones (all of them for a new `Cluster`),
    /// not running as far as this `Cluster` knows; returns the saved node count.
    pub(super) fn load_nodes(&mut self) -> Result<usize> {
        let state_path = self.root.join(STATE_FILE);
        let text = fs::read_to_string(&state_path).map_err(io_err(format!("cannot read {}", state_path.display())))?;
        let state: BTreeMap<&str, &str> =
            text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split_once('=')).collect();
        let bad = |what: &str| ClusterError::Setup(format!("{}: {what}", state_path.display()));
        let count: usize = state.get("nodes").and_then(|v| v.parse().ok()).ok_or_else(|| bad("no valid nodes="))?;
        for i in self.nodes.len()..count {
            let key = format!("node{i}.port");
            let port =
                state.get(key.as_str()).and_then(|v| v.parse().ok()).ok_or_else(|| bad(&format!("no valid {key}=")))?;
            let dir = self.root.join(format!("node{i}"));
            let data = dir.join("data");
            if !data.join("PG_VERSION").is_file() {
                return Err(bad(&format!("{} is not a PostgreSQL data directory", data.display())));
            }
            self.nodes.push(Node { name: format!("node{i}"), dir, data, port, child: None });
        }
        Ok(count)
    }

    pub(super) fn ports(&self) -> HashSet<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    fn ensure_port_free(&mut self, i: usize) -> Result<()> {
        if TcpListener::bind(("127.0.0.1", self.nodes[i].port)).is_err() {
            let port = pick_port(&self.ports())?;
            info!(node = %self.nodes[i].name, old = self.nodes[i].port, new = port, "saved port is taken; moving");
            self.set_port(i, port)?;
        }
        Ok(())
    }

    /// Moves node i to `port`: its pgcausal.conf, every follower's primary_conninfo, and cluster.state.
    pub(super) fn set_port(&mut self, i: usize, port: u16) -> Result<()> {
        let old = self.nodes[i].port;
        rewrite_setting(&self.nodes[i].data.join(CONF_FILE), "port", &port.to_string())?;
        for j in (0..self.nodes.len()).filter(|&j| j != i) {
            let auto = self.nodes[j].data.join("postgresql.auto.conf");
            if retarget_conninfo(&auto, old, port)? {
                if let Some(child) = &self.nodes[j].child {
                    send_signal(child.id(), libc::SIGHUP); // primary_conninfo is reloadable
                }
            }
        }
        self.nodes[i].port = port;
        if self.initialized {
            self.save_state()?;
        }
        Ok(())
    }

    pub(super) fn save_state(&self) -> Result<()> {
        let mut text = String::from("# pgcausal local cluster (cluster.rs); node0 was the initial leader\nversion=1\n");
        text.push_str(&format!("nodes={}\ninitial_leader=node0\n", self.nodes.len()));
        for (i, node) in self.nodes.iter().enumerate() {
            text.push_str(&format!("node{i}.port={}\n", node.port));
        }
        let tmp = self.root.join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, text).map_err(io_err(format!("cannot write {}", tmp.display())))?;
        fs::rename(&tmp, self.root.join(STATE_FILE)).map_err(io_err("cannot replace cluster.state"))
    }
}

/// Replaces `key = ...` in a conf file we own, or appends it.
fn rewrite_setting(path: &Path, key: &str, value: &str) -> Result<()> {
    let text = fs::read_to_string(path).map_err(io_err(format!("cannot read {}", path.display())))?;
    let mut found = false;
    let mut out = String::new();
    for line in text.lines() {
        if !found && line.split_once('=').is_some_and(|(k, _)| k.trim() == key) {
            out.push_str(&conf_line(key, value));
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(&conf_line(key, value));
    }
    fs::write(path, out).map_err(io_err(format!("cannot write {}", path.display())))
}

/// Points `port=old` in a primary_conninfo line at `new`; returns whether the file changed.
fn retarget_conninfo(path: &Path, old: u16, new: u16) -> Result<bool> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(false);
    };
    let needle = format!("port={old}");
    let mut changed = false;
    let mut out = String::new();
    for line in text.lines() {
        let mut line = line.to_string();
        if line.trim_start().starts_with("primary_conninfo") {
            if let Some(pos) = line.match_indices(&needle).map(|(p, _)| p).find(|&p| {
                let before = line[..p].chars().last();
                let after = line[p + needle.len()..].chars().next();
                matches!(before, Some(' ' | '\'')) && matches!(after, None | Some(' ' | '\''))
            }) {
                line.replace_range(pos..pos + needle.len(), &format!("port={new}"));
                changed = true;
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    if changed {
        fs::write(path, out).map_err(io_err(format!("cannot write {}", path.display())))?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_port_rewrite() {
        let dir = std::env::temp_dir().join(format!("pgcausal-cluster-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auto.conf");
        fs::write(&path, "primary_conninfo = 'user=postgres host=127.0.0.1 port=5432 sslmode=disable'\nport = 5432\n")
            .unwrap();
        assert!(retarget_conninfo(&path, 5432, 6000).unwrap());
        assert!(!retarget_conninfo(&path, 543, 7000).unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(" port=6000 ") && text.contains("port = 5432"), "{text}");
        rewrite_setting(&path, "port", "7001").unwrap();
        assert!(fs::read_to_string(&path).unwrap().contains("port = '7001'"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
