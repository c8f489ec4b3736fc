//! Creating a new cluster: initdb for the leader, pg_hba.conf and pgcausal.conf, roles, and
//! pg_basebackup for the followers.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;

use tracing::info;

use super::command::{conninfo_quote, quote_ident, quote_literal};
use super::error::{io_err, Result};
use super::process::pick_port;
use super::{
    Cluster, ClusterError, ClusterSpec, Node, PasswordEncryption, StopMode, UserSpec, CONF_FILE, READY_TIMEOUT,
    STATE_FILE, SUPERUSER,
};

/// Settings every node gets; small enough for a 2-core machine running several clusters.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("listen_addresses", "127.0.0.1"),
    ("unix_socket_directories", ""),
    ("shared_buffers", "16MB"),
    ("max_connections", "200"),
    ("fsync", "off"),
    ("synchronous_commit", "on"),
    ("wal_level", "replica"),
    ("max_wal_senders", "10"),
    ("wal_keep_size", "256MB"),
    ("hot_standby", "on"),
    ("hot_standby_feedback", "on"),
    ("wal_log_hints", "on"),
    // An idle leader pings its followers every second (half of this), so a follower's last
    // message time vouches for it when pgcausal confirms a failure (failover.timeout 2s).
    ("wal_sender_timeout", "2s"),
    // A follower whose sender went away retries quickly (a repoint restarts it at once anyway).
    ("wal_retrieve_retry_interval", "200ms"),
    ("logging_collector", "off"),
];

impl Cluster {
    pub(super) fn init(&mut self, spec: &ClusterSpec) -> Result<()> {
        validate(spec)?;
        let count = 1 + spec.followers;
        let mut taken = HashSet::new();
        for i in 0..count {
            let dir = self.root.join(format!("node{i}"));
            if dir.exists() {
                return Err(ClusterError::Setup(format!(
                    "{} exists but {} does not (an earlier init failed?); remove it",
                    dir.display(),
                    self.root.join(STATE_FILE).display()
                )));
            }
            let port = pick_port(&taken)?;
            taken.insert(port);
            let data = dir.join("data");
            self.nodes.push(Node { name: format!("node{i}"), dir, data, port, child: None });
        }
        info!(root = %self.root.display(), followers = spec.followers, "initialising cluster");
        self.init_leader(spec)?;
        for f in 0..spec.followers {
            self.init_follower(f + 1, spec.follower_conf.get(f).map(Vec::as_slice).unwrap_or(&[]))?;
        }
        self.save_state()?;
        self.initialized = true;
        self.wait_streaming(READY_TIMEOUT)?;
        self.wait_replicated(READY_TIMEOUT)
    }

    fn init_leader(&mut self, spec: &ClusterSpec) -> Result<()> {
        self.make_node_dirs(0)?;
        let data = self.nodes[0].data.clone();
        let pwfile = self.root.join(".pgcausal-pwfile");
        self.write_owned(&pwfile, &format!("{}\n", self.password), 0o600)?;
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D").arg(&data).arg(format!("--pwfile={}", pwfile.display()));
        cmd.args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"]);
        cmd.args(["--auth-local=trust", "--auth-host=scram-sha-256"]);
        cmd.arg("--no-sync"); // fsync is off anyway; syncing the fresh cluster costs seconds
        let result = self.run(cmd, None);
        let _ = fs::remove_file(&pwfile);
        result?;
        fs::write(data.join("pg_hba.conf"), hba_conf(spec)).map_err(io_err("cannot write pg_hba.conf"))?;
        let mut conf = OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .map_err(io_err("cannot open postgresql.conf"))?;
        writeln!(conf, "\n# pgcausal: per-node settings\ninclude_if_exists = '{CONF_FILE}'")
            .map_err(io_err("cannot append to postgresql.conf"))?;
        self.write_owned(&data.join(CONF_FILE), &node_conf(self.nodes[0].port, &[]), 0o600)?;
        self.spawn_node(0)?;
        self.create_users(&spec.users)
    }

    fn init_follower(&mut self, i: usize, extra: &[(String, String)]) -> Result<()> {
        self.make_node_dirs(i)?;
        self.basebackup_follower(i, 0, extra)
    }

    /// Replaces node `i`'s data directory with a base backup of node `leader` (pg_basebackup -R)
    /// and starts it as that node's streaming follower: how a failed node rejoins the cluster
    /// without pg_rewind. Node `i` must be stopped; its port and name stay.
    pub fn rebuild_as_follower(&mut self, i: usize, leader: usize) -> Result<()> {
        self.node(leader)?;
        if self.node(i)?.child.is_some() || i == leader {
            return Err(ClusterError::Setup(format!(
                "{} must be stopped (and not the source) to rebuild",
                self.nodes[i].name
            )));
        }
        let data = self.nodes[i].data.clone();
        if data.exists() {
            fs::remove_dir_all(&data).map_err(io_err(format!("cannot remove {}", data.display())))?;
        }
        fs::DirBuilder::new().mode(0o700).create(&data).map_err(io_err(format!("cannot create {}", data.display())))?;
        self.chown(&data)?;
        self.basebackup_follower(i, leader, &[])?;
        info!(node = %self.nodes[i].name, leader = %self.nodes[leader].name, "rebuilt as a follower");
        Ok(())
    }

    /// The conninfo node `name` streams from node `leader` with (the superuser's login).
    pub fn primary_conninfo(&self, leader: usize, name: &str) -> Result<String> {
        Ok(format!(
            "host=127.0.0.1 port={} user={SUPERUSER} sslmode=disable gssencmode=disable application_name={} password={}",
            self.node(leader)?.port,
            conninfo_quote(name),
            conninfo_quote(&self.password)
        ))
    }

    /// A new node, made while the cluster runs: a base backup of node `leader` started as its
    /// streaming follower on a free port (with `extra` settings) and saved in cluster.state;
    /// returns its index. A failed one leaves nothing behind (no server, no directory).
    pub fn add_follower(&mut self, leader: usize, extra: &[(String, String)]) -> Result<usize> {
        self.node(leader)?;
        let i = self.nodes.len();
        let port = pick_port(&self.ports())?;
        let name = self.next_node_name();
        let dir = self.root.join(&name);
        if dir.exists() {
            return Err(ClusterError::Setup(format!(
                "{} exists already but is no node in {} (left by an earlier attempt?); remove it",
                dir.display(),
                self.root.join(STATE_FILE).display()
            )));
        }
        let data = dir.join("data");
        self.nodes.push(Node { name, dir, data, port, child: None });
        let added = self.make_node_dirs(i).and_then(|()| self.basebackup_follower(i, leader, extra));
        if let Err(e) = added.and_then(|()| self.save_state()) {
            let _ = self.stop_node(i, StopMode::Immediate);
            let _ = fs::remove_dir_all(&self.nodes[i].dir);
            self.nodes.pop();
            let _ = self.save_state(); // spawn_node saves it with the new node when its port moves
            return Err(e);
        }
        info!(node = %self.nodes[i].name, port, leader = %self.nodes[leader].name, "follower added");
        Ok(i)
    }

    /// The name `add_follower` gives the next node.
    pub fn next_node_name(&self) -> String {
        format!("node{}", self.nodes.len())
    }

    /// pg_basebackup of node `leader` into node `i`'s (empty) data directory, its pgcausal.conf
    /// with `extra`, then starts it.
    fn basebackup_follower(&mut self, i: usize, leader: usize, extra: &[(String, String)]) -> Result<()> {
        let data = self.nodes[i].data.clone();
        // The password goes into the conninfo so that -R records it in primary_conninfo.
        let conninfo = self.primary_conninfo(leader, &self.nodes[i].name)?;
        let mut cmd = self.server_command("pg_basebackup");
        cmd.arg("-d").arg(conninfo).arg("-D").arg(&data);
        cmd.args(["-X", "stream", "-R", "-c", "fast", "--no-sync"]).env("PGPASSWORD", &self.password);
        self.run(cmd, Some(leader))?;
        if !data.join("standby.signal").exists() {
            return Err(ClusterError::Setup(format!("pg_basebackup -R wrote no standby.signal in {}", data.display())));
        }
        self.write_owned(&data.join(CONF_FILE), &node_conf(self.nodes[i].port, extra), 0o600)?;
        self.spawn_node(i)
    }

    fn create_users(&self, users: &[UserSpec]) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let mut sql = String::new();
        for u in users {
            let superuser = if u.superuser { " SUPERUSER" } else { "" };
            sql.push_str(&format!(
                "SET password_encryption = {};\nCREATE ROLE {} LOGIN{superuser} PASSWORD {};\n",
                quote_literal(u.password_encryption.guc()),
                quote_ident(&u.name),
                quote_literal(&u.password)
            ));
        }
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        self.run_psql(0, "postgres", &sql, &format!("<create roles {names:?}>"))?;
        info!(roles = ?names, "roles created");
        Ok(())
    }
}

fn validate(spec: &ClusterSpec) -> Result<()> {
    let bad = |msg: String| Err(ClusterError::Setup(msg));
    if spec.superuser_password.is_empty() || spec.superuser_password.contains(['\n', '\r']) {
        return bad("superuser_password must be non-empty and one line (initdb --pwfile)".into());
    }
    if let Some(u) = spec.users.iter().find(|u| u.name.is_empty() || u.name.contains('\0')) {
        return bad(format!("invalid role name {:?}", u.name));
    }
    let valid_key = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if let Some((k, _)) = spec.follower_conf.iter().flatten().find(|(k, _)| !valid_key(k)) {
        return bad(format!("invalid setting name {k:?} in follower_conf"));
    }
    Ok(())
}

pub(super) fn conf_line(key: &str, value: &str) -> String {
    format!("{key} = '{}'\n", value.replace('\'', "''"))
}

fn node_conf(port: u16, extra: &[(String, String)]) -> String {
    let mut text = String::from(
        "# Written by pgcausal (cluster.rs) for a local test cluster; `port` is rewritten when it moves.\n",
    );
    text.push_str(&conf_line("port", &port.to_string()));
    for (key, value) in BASE_SETTINGS {
        text.push_str(&conf_line(key, value));
    }
    if !extra.is_empty() {
        text.push_str("# node-specific settings\n");
        for (key, value) in extra {
            text.push_str(&conf_line(key, value));
        }
    }
    text
}

fn hba_conf(spec: &ClusterSpec) -> String {
    let mut text = String::from("# Written by pgcausal (cluster.rs); first matching line wins.\nlocal all all trust\n");
    for line in &spec.hba_extra {
        text.push_str(line);
        text.push('\n');
    }
    // An md5-hashed password can never pass scram-sha-256, so md5 roles get an md5 line.
    for user in spec.users.iter().filter(|u| u.password_encryption == PasswordEncryption::Md5) {
        text.push_str(&format!("host all \"{}\" 127.0.0.1/32 md5\n", user.name.replace('"', "")));
    }
    text.push_str("host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n");
    text
}
