//! Bringing a server connection to the client's state (settings, SQL-level prepared statements,
//! sequences, temp objects) when it differs: entered only then, off the usual query's path.

use super::*;
use crate::lexical::starts_with_word;

impl Session<'_> {
    /// SQL-level PREPARE/EXECUTE/DEALLOCATE: prepares the statement on this connection first
    /// when needed, or answers the query itself. False when the query must not be sent.
    pub(super) async fn plan_sql_prepare(&mut self, total: usize) -> bool {
        // In a failed transaction PostgreSQL rejects these unchanged (25P02): let it.
        if self.tx_status == TxStatus::Failed {
            return true;
        }
        let Some((sql, _)) = messages::read_cstr(&self.cbuf[5..total]) else { return true };
        let sql = sql_text(sql);
        let query = sql_prepared::inspect(&sql);
        if matches!(query, SqlPrepare::Other) {
            return true;
        }
        let conn = &mut self.server.as_mut().expect("leased").lease;
        let plan = sql_prepared::plan(&query, &mut self.state.sql_statements, &mut conn.sql_statements);
        if let (SqlPrepare::Prepare { name, .. }, Plan::Forward { .. }) = (&query, &plan) {
            self.server.as_mut().expect("leased").sql_prepares.push((name.clone(), true));
        }
        match plan {
            Plan::Forward { inject: None } => true,
            Plan::Forward { inject: Some(inject) } if self.inflight.is_empty() && self.to_server.is_empty() => {
                // Nothing in flight: prepare first and wait, so a failure is the one answer.
                let (name, prepare) =
                    (query.name().unwrap_or_default().to_string(), matches!(query, SqlPrepare::Prepare { .. }));
                Box::pin(self.prepare_sql_now(name, prepare, &inject)).await
            }
            Plan::Forward { inject: Some(inject) } => {
                if let SqlPrepare::Execute { name } = &query {
                    self.server.as_mut().expect("leased").sql_prepares.push((name.clone(), false));
                }
                for step in &inject {
                    let _ = postgres_protocol::message::frontend::query(step, &mut self.to_server);
                    let out = match self.unit.hold.as_mut() {
                        Some(h) => &mut h.held,
                        None => &mut self.to_client,
                    };
                    self.inflight.push(Request::Query { swallow: true }, out);
                }
                true
            }
            Plan::Answer { tag } => {
                let mut reply = BytesMut::new();
                messages::put_command_complete(&mut reply, tag);
                self.push_reply(reply.freeze());
                self.answer_sync();
                false
            }
            Plan::Error { code, message } => {
                crate::metrics::error(code.as_bytes(), "proxy");
                self.push_reply(messages::error_response(Severity::Error.as_str(), &code, &message).freeze());
                self.answer_sync();
                false
            }
        }
    }

    /// Runs the statements an EXECUTE or PREPARE (`prepare`) of `name` needs first (DEALLOCATE
    /// of a namesake, the client's PREPARE) and waits for them. False when one failed: its
    /// error is the answer.
    async fn prepare_sql_now(&mut self, name: String, prepare: bool, inject: &[String]) -> bool {
        let conn = &mut self.server.as_mut().expect("leased").lease;
        let steps: Vec<&str> = inject.iter().map(String::as_str).collect();
        let outcome = match Box::pin(conn.run_each(&steps)).await {
            Ok(results) => results.into_iter().find(Result::is_err).unwrap_or(Ok(())),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => true,
            Err(BackendError::Server { code, message }) => {
                conn.sql_statements.prepare_failed(&name, &code);
                if prepare {
                    self.state.sql_statements.forget(&name);
                }
                crate::metrics::error(code.as_bytes(), "server");
                self.push_reply(messages::error_response(Severity::Error.as_str(), &code, &message).freeze());
                self.answer_sync();
                false
            }
            Err(e) => {
                // The connection failed under the PREPARE: closed, the client told.
                self.release_hold();
                self.discard_server();
                self.refuse(&ProxyError::Backend(e));
                self.answer_sync();
                false
            }
        }
    }

    /// The unit that sent SQL-level PREPAREs failed: the statements were not created.
    pub(super) fn sql_prepare_failed(&mut self, code: &[u8; 5]) {
        let code = String::from_utf8_lossy(code);
        let Some(leased) = self.server.as_mut() else { return };
        for (name, client_own) in leased.sql_prepares.drain(..) {
            leased.lease.sql_statements.prepare_failed(&name, &code);
            if client_own {
                self.state.sql_statements.forget(&name);
            }
        }
    }

    /// Tracks the session state a Query or Parse changes.
    pub(super) fn observe_sql(&mut self, classification: &Classification) {
        if !classification.session.is_empty() {
            self.state.settings.apply(&classification.session);
        }
        if !classification.pins.is_empty() || !classification.unpins.is_empty() {
            for kind in self.state.pins.apply(classification) {
                metrics::counter!(crate::metrics::SESSION_PINS, "kind" => kind).increment(1);
            }
        }
        // DISCARD ALL and DEALLOCATE drop the server's statements, ours included.
        let discard = classification.session.contains(&SessionEffect::DiscardAll);
        if discard || classification.keyword == crate::route::Keyword::Deallocate {
            if let Some(leased) = self.server.as_mut() {
                leased.lease.statements.clear();
            }
            if discard {
                self.state.statements.clear();
                self.state.sql_statements.clear();
                if let Some(leased) = self.server.as_mut() {
                    leased.lease.sql_statements.clear();
                }
            }
        }
    }

    /// The SQL this message runs if it is DDL (CREATE/ALTER/DROP), which may change the types
    /// and row shapes prepared statements were made with.
    pub(super) fn ddl_sql(&self, tag: u8, total: usize) -> Option<Vec<u8>> {
        let body = &self.cbuf[5..total];
        let sql = match tag {
            fe::QUERY => messages::read_cstr(body).map(|(q, _)| q),
            fe::PARSE => messages::read_cstr(body).and_then(|(_, rest)| messages::read_cstr(rest)).map(|(q, _)| q),
            fe::BIND => messages::read_cstr(body)
                .and_then(|(_, rest)| messages::read_cstr(rest))
                .and_then(|(name, _)| self.state.statements.get(name))
                .map(|s| s.query()),
            _ => None,
        };
        sql.filter(|q| [&b"create"[..], b"alter", b"drop"].iter().any(|w| starts_with_word(q, w))).map(<[u8]>::to_vec)
    }

    /// Brings a newly leased server connection to the client's state before any of the
    /// client's messages go to it, waiting for the server's answers: a client's statement
    /// never runs in a state that is not exactly its own. Settings first: if their replay
    /// fails, the connection is closed, never reused, and the message gets that error. Then the
    /// client's SQL-level prepared statements, one query each; one that fails here is left
    /// out, and its EXECUTE prepares it again (its table may exist by then).
    pub(super) async fn prepare_server(&mut self) -> Result<(), ProxyError> {
        let Some(leased) = self.server.as_mut() else { return Ok(()) };
        let conn = &mut *leased.lease;
        let current = self.state.settings.current();
        let mut sql = current.sync_sql(&conn.settings);
        if std::mem::take(&mut leased.foreign_sequences) {
            // Another client's nextval may be here: currval/lastval must say "not yet defined".
            sql = Some(sql.map_or_else(|| "DISCARD SEQUENCES".to_string(), |s| format!("DISCARD SEQUENCES; {s}")));
            conn.sequences = crate::backend::conn::SequenceUse::Only(self.entry.id);
        }
        if std::mem::take(&mut leased.drop_foreign_statements) {
            if let Some(drop) = sql_prepared::drop_foreign(&self.state.sql_statements, &mut conn.sql_statements) {
                sql = Some(sql.map_or_else(|| drop.clone(), |s| format!("{drop}; {s}")));
            }
        }
        let replays = sql_prepared::replays(&self.state.sql_statements, &mut conn.sql_statements);
        if sql.is_none() && replays.is_empty() {
            return Ok(());
        }
        let mut queries: Vec<&str> = sql.iter().map(String::as_str).collect();
        queries.extend(replays.iter().map(|r| r.sql.as_str()));
        tracing::debug!(
            node = leased.node,
            settings = sql.is_some(),
            statements = replays.len(),
            "replaying session state"
        );
        let run = crate::control::timeout(self.config.pool.connect_timeout, conn.run_each(&queries));
        let outcome = match Box::pin(run).await {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BackendError::Timeout("session state replay".into())),
        };
        let mut results = match outcome {
            Ok(results) => results.into_iter(),
            Err(e) => return Err(self.replay_failed(e)),
        };
        if sql.is_some() {
            if let Some(Err(e)) = results.next() {
                return Err(self.replay_failed(e));
            }
        }
        let leased = self.server.as_mut().expect("still held");
        if sql.is_some() {
            leased.lease.settings = self.state.settings.current().clone();
        }
        for (replay, result) in replays.iter().zip(results) {
            if let Err(BackendError::Server { code, .. }) = result {
                tracing::info!(name = %replay.name, %code, "a client's prepared statement could not be created on a server connection");
                metrics::counter!(crate::metrics::STATE_REPLAY_FAILURES, "kind" => "prepared_statement").increment(1);
                sql_prepared::replay_failed(&mut leased.lease.sql_statements, replay);
            }
        }
        Ok(())
    }

    /// The backstop behind parsing for temporary objects: after a unit that may have made or
    /// dropped some (see `may_touch_temp_objects`), once the connection is idle, ask the server
    /// whether this backend holds any, and pin the client to it if so (unpin if none are left).
    /// Units that ran no such statement never pay for it.
    pub(super) async fn check_temp_objects(&mut self) -> Result<(), ProxyError> {
        if self.config.proxy.pool_mode != PoolMode::Transaction || !self.server_is_clean() {
            return Ok(());
        }
        let leased = self.server.as_mut().expect("clean means held");
        if !std::mem::take(&mut leased.temp_check_due) {
            return Ok(());
        }
        if leased.follower {
            return Ok(());
        }
        let check = crate::control::timeout(self.config.pool.connect_timeout, leased.lease.query_value(TEMP_CHECK));
        match Box::pin(check).await {
            Ok(Ok(value)) => {
                if self.state.pins.server_temp(value.as_deref() == Some("t")) {
                    metrics::counter!(crate::metrics::SESSION_PINS, "kind" => "temp_objects").increment(1);
                }
                Ok(())
            }
            failed => {
                // The connection's state is unknown: it must not serve another client.
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                tracing::warn!(%error, "asking the server about temporary objects failed; closing that connection");
                self.release_hold();
                self.discard_server();
                Ok(())
            }
        }
    }

    /// The state replay before a unit failed (`e`): when its follower failed under it (died,
    /// cut; `replay_failed` excluded it), nothing of the unit was sent, so it moves to another
    /// node; any other failure is the unit's answer.
    pub(super) async fn prepare_on_another_node(
        &mut self,
        mut e: ProxyError,
        want: Want,
        needs: Needs,
    ) -> Result<(), ProxyError> {
        loop {
            let follower_failed = matches!(&e, ProxyError::StateReplay(b) if unit::unreachable(b));
            if !follower_failed || self.unit.exclude.is_empty() || self.unit.retries >= 3 {
                return Err(e);
            }
            self.unit.retries += 1;
            metrics::counter!(crate::metrics::ROUTE_RETRIES, "reason" => "connection_lost").increment(1);
            self.acquire(want, needs).await?;
            match self.prepare_server_if_needed().await {
                Ok(()) => return Ok(()),
                Err(next) => e = next,
            }
        }
    }

    /// The replay of the client's state failed: that connection is closed (its state is not
    /// the client's), the failure logged and counted; the error is the client's answer.
    fn replay_failed(&mut self, e: BackendError) -> ProxyError {
        self.release_hold();
        let follower = self.server.as_ref().is_some_and(|l| l.follower);
        let (node, _) = self.discard_server();
        if follower && unit::unreachable(&e) {
            self.unit.exclude.push(node); // the follower failed, not the replay: see prepare_on_another_node
        }
        let node = &self.shared.pools.nodes[node].name;
        tracing::warn!(%node, error = %e, "replaying a client's session state failed; closing that server connection");
        metrics::counter!(crate::metrics::STATE_REPLAY_FAILURES, "kind" => "settings").increment(1);
        ProxyError::StateReplay(e)
    }
}

/// Whether this backend holds temporary relations, functions, types, statistics objects,
/// operators or collations. pg_my_temp_schema() is 0 until the backend first makes a
/// temporary object, so most backends skip the catalog scans.
const TEMP_CHECK: &str = "SELECT CASE WHEN pg_catalog.pg_my_temp_schema() = 0 THEN false ELSE \
    EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_proc WHERE pronamespace = pg_catalog.pg_my_temp_schema()) \
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_type WHERE typnamespace = pg_catalog.pg_my_temp_schema()) \
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_statistic_ext WHERE stxnamespace = pg_catalog.pg_my_temp_schema()) \
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_operator WHERE oprnamespace = pg_catalog.pg_my_temp_schema()) \
    OR EXISTS (SELECT 1 FROM pg_catalog.pg_collation WHERE collnamespace = pg_catalog.pg_my_temp_schema()) END";
