//! Completing a client's login on the session: its startup settings, and the ParameterStatus
//! values it is told (from a server connection, or remembered from an earlier identical login).
//! A login needs no leader: with none known it runs on a follower.

use super::*;

impl Session<'_> {
    /// Completes the client's login. The first login with a set of startup settings leases a
    /// connection (the leader's, or a follower's while no leader is known or the leader refuses
    /// connections), which proves the database and role work, applies the settings there, and
    /// passes on the ParameterStatus values the server reports. In transaction mode later
    /// logins with the same settings are answered from those values without a server, so a busy
    /// leader pool does not keep clients from logging in; their settings reach each server
    /// connection with their first unit of work, like any SET.
    pub(super) async fn start(&mut self) -> Result<(), ProxyError> {
        let mut startup = Settings::default();
        let mut server_startup = Vec::new();
        for (name, value) in startup_settings(&self.login.params) {
            if name.to_ascii_lowercase().starts_with("pgcausal.") {
                proxy_settings::apply(&name, Some(&value), &mut self.proxy, &mut self.floor)
                    .map_err(|e| ProxyError::Protocol(format!("invalid startup option: {e}")))?;
            } else {
                startup.set_text(&name, &value);
                server_startup.push((name, value));
            }
        }
        let mut out = BytesMut::new();
        if let Some(params) = self.remembered_login(&server_startup) {
            self.state.settings = ClientSettings::from_startup(startup);
            messages::put_login_ok(&mut out, &params, self.key.pid, self.key.secret);
            self.client.writer.write_all(&out).await?;
            return Ok(());
        }
        // Nodes whose connection failed under the login (a frozen leader answers nothing until
        // the monitor cuts it): the login goes on elsewhere.
        let mut failed = Vec::new();
        loop {
            self.acquire_for_login(&failed).await?;
            self.end_unit(); // the login is not a unit of work: no hold, no latency sample
            let leased = self.server.as_mut().expect("just acquired");
            let conn = &mut *leased.lease;
            // Applied here rather than injected, so the ParameterStatus the client sees reflect them.
            let Some(sql) = startup.sync_sql(&conn.settings) else { break };
            match conn.run(&sql).await {
                Ok(()) => {
                    conn.settings = startup.clone();
                    break;
                }
                Err(e) if unit::unreachable(&e) && failed.len() < 2 => {
                    let (node, _) = self.discard_server();
                    tracing::debug!(node = %self.shared.pools.nodes[node].name, error = %e, "a login's server connection failed; trying another node");
                    failed.push(node);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let leased = self.server.as_mut().expect("acquired");
        let conn = &mut *leased.lease;
        let params = as_the_leader_reports(&conn.params, leased.follower);
        if let Some(Some(pool)) = self.pools.by_node.get(leased.node) {
            pool.remember_login_params(server_startup, &params);
        }
        self.state.settings = ClientSettings::from_startup(startup);
        messages::put_login_ok(&mut out, &params, self.key.pid, self.key.secret);
        self.client.writer.write_all(&out).await?;
        self.maybe_release();
        Ok(())
    }

    /// Leases the connection a login runs on, avoiding the nodes in `failed`: the leader's when
    /// one is known and takes connections, else a follower's (which falls back to waiting for
    /// a leader when there is none). Session mode keeps the session on the leader's
    /// connection: it waits for one.
    async fn acquire_for_login(&mut self, failed: &[usize]) -> Result<(), ProxyError> {
        if self.config.proxy.pool_mode == PoolMode::Session || !self.config.routing.enabled {
            return self.acquire(Want::Leader, Needs::default()).await;
        }
        if let Some(leader) = self.shared.topology.snapshot().leader.filter(|l| !failed.contains(l)) {
            if self.shared.lifecycle.is_paused() {
                self.wait_for_resume().await;
            }
            match self.lease(leader, false, Needs::default()).await {
                Err(ProxyError::Backend(e)) if unit::unreachable(&e) => {
                    let node = &self.shared.pools.nodes[leader].name;
                    tracing::debug!(%node, error = %e, "the leader refused a login's connection; trying a follower");
                }
                leased => return leased,
            }
        }
        self.unit.exclude = failed.to_vec();
        self.acquire(Want::Follower, Needs::default()).await
    }

    /// What an earlier login with these startup settings was told, by the leader's pool or
    /// (while no leader is known) a follower's in rotation; transaction mode only: session mode
    /// keeps the leased connection anyway.
    fn remembered_login(&mut self, startup: &[(String, String)]) -> Option<crate::backend::pool::LoginParams> {
        if self.config.proxy.pool_mode != PoolMode::Transaction {
            return None;
        }
        let snapshot = self.shared.topology.snapshot();
        match snapshot.leader {
            Some(leader) => self.node_pool(leader).login_params(startup),
            None => snapshot.followers.iter().find_map(|&n| self.node_pool(n).login_params(startup)),
        }
    }
}

/// The ParameterStatus values a login is told. From a follower, `in_hot_standby` says "off" as
/// the leader's would: pgcausal as a whole takes writes (held while no leader is known), and a
/// driver asking for a read-write server (`target_session_attrs`) must not pass it over.
fn as_the_leader_reports(params: &[(String, String)], follower: bool) -> Vec<(String, String)> {
    let mut params = params.to_vec();
    if follower {
        for (_, value) in params.iter_mut().filter(|(name, _)| name == "in_hot_standby") {
            *value = "off".into();
        }
    }
    params
}

/// Startup parameters to apply as settings: everything but user/database, with `options`
/// (`-c name=value` or `--name=value`) expanded.
fn startup_settings(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in params {
        if name != "options" {
            out.push((name.clone(), value.clone()));
            continue;
        }
        let mut words = value.split_whitespace();
        while let Some(word) = words.next() {
            let setting = match word {
                "-c" => words.next(),
                w => w.strip_prefix("--").or_else(|| w.strip_prefix("-c")),
            };
            if let Some((k, v)) = setting.and_then(|s| s.split_once('=')) {
                out.push((k.replace('-', "_"), v.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_on_a_follower_is_told_what_the_leader_would_say() {
        let params =
            vec![("in_hot_standby".to_string(), "on".to_string()), ("server_version".to_string(), "15.18".to_string())];
        let told = as_the_leader_reports(&params, true);
        assert_eq!(told[0], ("in_hot_standby".to_string(), "off".to_string()));
        assert_eq!(told[1], params[1]);
        assert_eq!(as_the_leader_reports(&params, false), params);
    }

    #[test]
    fn startup_options_expand_to_settings() {
        let params = vec![
            ("application_name".to_string(), "psql".to_string()),
            ("options".to_string(), "-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB".to_string()),
        ];
        assert_eq!(
            startup_settings(&params),
            vec![
                ("application_name".to_string(), "psql".to_string()),
                ("search_path".to_string(), "a,b".to_string()),
                ("statement_timeout".to_string(), "5s".to_string()),
                ("work_mem".to_string(), "4MB".to_string()),
            ]
        );
    }
}
