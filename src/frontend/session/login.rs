//! Completing a client's login on the session: its startup settings, and the ParameterStatus
//! values it is told (from a leader connection, or remembered from an earlier identical login).

use super::*;

impl Session<'_> {
    /// Completes the client's login. The first login with a set of startup settings leases a
    /// leader connection (which proves the database and role work), applies the settings there,
    /// and passes on the ParameterStatus values the server reports. In transaction mode later
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
        self.acquire(Want::Leader, Needs::default()).await?;
        self.unit.hold = None;
        let leased = self.server.as_mut().expect("just acquired");
        let conn = &mut *leased.lease;
        // Applied here rather than injected, so the ParameterStatus the client sees reflect them.
        if let Some(sql) = startup.sync_sql(&conn.settings) {
            conn.run(&sql).await?;
            conn.settings = startup.clone();
        }
        if let Some(pool) = &self.pools.by_node[leased.node] {
            pool.remember_login_params(server_startup, &conn.params);
        }
        self.state.settings = ClientSettings::from_startup(startup);
        messages::put_login_ok(&mut out, &conn.params, self.key.pid, self.key.secret);
        self.client.writer.write_all(&out).await?;
        self.maybe_release();
        Ok(())
    }

    /// What an earlier login with these startup settings was told by the current leader's pool
    /// (transaction mode only: session mode keeps the leased connection anyway).
    fn remembered_login(&mut self, startup: &[(String, String)]) -> Option<crate::backend::pool::LoginParams> {
        if self.config.proxy.pool_mode != PoolMode::Transaction {
            return None;
        }
        let leader = self.shared.topology.snapshot().leader?;
        self.node_pool(leader).login_params(startup)
    }
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
