//! Routing one unit of work (a transaction, or a statement outside one): which node it needs
//! (leader or follower, by its classification and the session's override), the proxy's own
//! answers (pgcausal.* commands, a deferred BEGIN), leasing the connection, and which server
//! errors make a read that sent nothing yet safe to run elsewhere.

use super::*;
use crate::config::OnTimeout;
use crate::consistency::{Fallback, ReadPlan, ReadPolicy};
use crate::frontend::proxy_settings::RouteOverride;
use crate::route::Target;
use crate::topology::Snapshot;

impl Session<'_> {
    /// The classification of a message that carries or names SQL (once per Parse for statements).
    pub(super) fn classify_message(&mut self, tag: u8, total: usize) -> Option<Arc<Classification>> {
        let body = &self.cbuf[5..total];
        let classifier = &self.shared.classifier;
        fn named(body: &[u8]) -> Option<&[u8]> {
            messages::read_cstr(body).map(|(name, _)| name)
        }
        let statement_name = match tag {
            fe::QUERY => return messages::read_cstr(body).map(|(q, _)| classifier.classify(q)),
            fe::PARSE => {
                let (_, rest) = messages::read_cstr(body)?;
                return messages::read_cstr(rest).map(|(q, _)| classifier.classify_statement(q));
            }
            fe::BIND => messages::read_cstr(body).and_then(|(_, rest)| named(rest))?,
            fe::DESCRIBE if body.first() == Some(&target::STATEMENT) => named(&body[1..])?,
            _ => return None,
        };
        // Looked up in place: the name is not copied out of the message.
        let statement = self.state.statements.get_mut(statement_name)?;
        if statement.classification.is_none() {
            statement.classification = Some(classifier.classify_statement(statement.query()));
        }
        statement.classification.clone()
    }

    /// The kind of node the next unit of work needs.
    pub(super) fn want(&mut self, class: Option<&Classification>) -> Want {
        let routing = &self.config.routing;
        if std::mem::take(&mut self.unit.force_leader)
            || !routing.enabled
            || self.config.proxy.pool_mode == PoolMode::Session
            || self.state.pins.is_pinned()
        {
            return Want::Leader;
        }
        class.map_or(Want::Leader, |c| want(c, self.proxy.route, self.unit.deferred_begin.is_some()))
    }

    /// A read unit on a follower is done with when the next statement needs the leader (outside
    /// a transaction): wait for it to end and lease the leader then. A unit that has run nothing
    /// yet and holds no unnamed statement (Parse/Describe + Flush, as asyncpg prepares) is ended
    /// by the proxy with a Sync of its own. True when processing must pause.
    pub(super) fn must_wait_for_another_node(&mut self, class: Option<&Classification>) -> bool {
        let Some(leased) = self.server.as_ref() else { return false };
        let Some(c) = class else { return false };
        let moves = leased.follower
            && self.tx_status == TxStatus::Idle
            && self.config.proxy.pool_mode == PoolMode::Transaction
            && want(c, self.proxy.route, false) == Want::Leader;
        if !moves {
            return false;
        }
        if !self.unsynced {
            return true;
        }
        if leased.executed || leased.unnamed_parsed {
            return false; // cannot move: the write runs here and the follower refuses it (25006)
        }
        self.release_hold();
        self.to_server.extend_from_slice(messages::SYNC);
        self.inflight.push(Request::InjectedSync, &mut self.to_client);
        self.unsynced = false;
        true
    }

    /// `SET/SHOW/RESET pgcausal.*`: answered by the proxy, in order with other answers; as a
    /// simple Query (`simple`, then ReadyForQuery follows) or as the Execute of its portal.
    pub(super) async fn answer_proxy_command(&mut self, c: &Classification, simple: bool) {
        let token = if proxy_settings::needs_token(c) {
            let shared = self.shared;
            let snapshot = shared.topology.snapshot();
            self.floor.follow_timeline(&snapshot, &shared.positions);
            Some(self.floor.token(&snapshot, &shared.positions, self.config.consistency.wait_timeout).await)
        } else {
            None
        };
        let reply = match proxy_settings::answer(c, &mut self.proxy, &mut self.floor, token.as_deref(), simple) {
            Ok(reply) => reply.freeze(),
            Err(e) => {
                e.count();
                self.discard_until_sync = !simple; // an extended batch skips to its Sync
                e.error_response(Severity::Error).freeze()
            }
        };
        self.push_reply(reply);
        if simple {
            self.answer_sync();
        }
    }

    /// The proxy's answer to a message about a prepared `pgcausal.*` command (see
    /// `proxy_statements`), which it consumes.
    pub(super) async fn take_proxy_step(&mut self, step: Step, total: usize) {
        match step {
            Step::Pass => return,
            Step::Reply(reply) => self.push_reply(reply),
            Step::Refuse(refused) => self.refused(Err(refused)),
            Step::Run(command) => Box::pin(self.answer_proxy_command(&command, false)).await,
        }
        self.consume(total);
    }

    /// Where the extended protocol's messages about the client's prepared `pgcausal.*` commands
    /// are answered; every other message passes.
    pub(super) fn proxy_statement_step(&mut self, tag: u8, total: usize, class: Option<&Arc<Classification>>) -> Step {
        let body = &self.cbuf[5..total];
        let statements = &mut self.state.proxy_statements;
        if let Some(command) = class.filter(|c| tag == fe::PARSE && c.is_proxy_command()) {
            let client_has =
                messages::read_cstr(body).is_some_and(|(name, _)| self.state.statements.get(name).is_some());
            return statements.parse_command(body, Arc::clone(command), client_has);
        }
        if statements.is_empty() {
            return Step::Pass;
        }
        match tag {
            fe::PARSE => statements.parse_other(body),
            fe::BIND => statements.bind(body),
            fe::DESCRIBE => statements.describe(body),
            fe::EXECUTE => statements.execute(body),
            fe::CLOSE => statements.close(body),
            fe::SYNC if self.tx_status == TxStatus::Idle && self.unit.deferred_begin.is_none() => {
                statements.transaction_ended();
                Step::Pass
            }
            _ => Step::Pass,
        }
    }

    /// Where a read unit runs: a follower that reached the session's floor (Some), or the
    /// leader (None) when none did in time or none is in rotation.
    async fn plan_read(&mut self, snapshot: &Snapshot, tried: &[usize]) -> Result<Option<usize>, ProxyError> {
        let shared = self.shared;
        if self.floor.follow_timeline(snapshot, &shared.positions).is_some() {
            metrics::counter!(crate::metrics::FLOOR_CLAMPS).increment(1);
        }
        let consistency = &self.config.consistency;
        let policy = ReadPolicy {
            wait: consistency.wait_timeout,
            error_on_timeout: consistency.on_timeout == OnTimeout::Error,
            leader_shares: self.config.routing.leader_reads == LeaderReads::Always,
        };
        let plan = self.floor.plan_read(snapshot, &shared.positions, &shared.balancer, &policy, tried);
        match plan.await {
            ReadPlan::Follower(node) => Ok(Some(node)),
            ReadPlan::LeaderShare => Ok(None),
            ReadPlan::Leader(Fallback::NoFollower) if self.config.routing.leader_reads == LeaderReads::Never => {
                Err(ProxyError::NoFollower)
            }
            ReadPlan::Leader(reason) => {
                shared.fallbacks.count(reason);
                Ok(None)
            }
            ReadPlan::Error(message) => {
                shared.fallbacks.count(Fallback::Error);
                Err(ProxyError::FloorTimeout(message))
            }
        }
    }

    /// A plain BEGIN (not READ ONLY) is answered here; its node is chosen by the next statement
    /// (`SET TRANSACTION READ ONLY` sends the whole transaction to a follower). COMMIT or
    /// ROLLBACK of such a transaction that ran nothing is answered here too.
    pub(super) fn answer_transaction_control(&mut self, tag: u8, total: usize, class: Option<&Classification>) -> bool {
        let Some(c) = class.filter(|c| tag == fe::QUERY && c.statement_count == 1) else { return false };
        if !self.config.routing.enabled
            || self.config.proxy.pool_mode == PoolMode::Session
            || self.state.pins.is_pinned()
        {
            return false;
        }
        let reply = match (c.tx, self.unit.deferred_begin.is_some()) {
            (TxControl::Begin { read_only: false }, false) if self.proxy.route != RouteOverride::Leader => {
                self.unit.deferred_begin = Some(Bytes::copy_from_slice(&self.cbuf[..total]));
                self.tx_status = TxStatus::InBlock;
                messages::command_complete_and_ready("BEGIN", TxStatus::InBlock)
            }
            (TxControl::Commit, true) => {
                self.end_unit();
                self.tx_status = TxStatus::Idle;
                messages::command_complete_and_ready("COMMIT", TxStatus::Idle)
            }
            (TxControl::Rollback, true) => {
                self.end_unit();
                self.tx_status = TxStatus::Idle;
                messages::command_complete_and_ready("ROLLBACK", TxStatus::Idle)
            }
            _ => return false,
        };
        self.inflight.push(Request::Reply(reply), &mut self.to_client);
        true
    }

    /// Sends a deferred BEGIN ahead of the statement that chose the node (its answer swallowed).
    pub(super) fn send_deferred_begin(&mut self) {
        if let Some(begin) = self.unit.deferred_begin.take() {
            self.to_server.extend_from_slice(&begin);
            self.inflight.push(Request::Query { swallow: true }, &mut self.to_client);
        }
    }

    /// Leases a server connection for a unit of work: a follower for reads (balanced, skipping
    /// nodes that fail to connect; the leader as fallback), else the leader, waiting a bounded
    /// time for one to be known and reachable.
    pub(super) async fn acquire(&mut self, want: Want, needs: Needs) -> Result<(), ProxyError> {
        let shared = self.shared;
        // The rare waits here are boxed: inline, their state would sit in every session's future.
        if shared.lifecycle.is_paused() {
            Box::pin(self.wait_for_resume()).await;
        }
        // Read the clock only once there is a wait: most leases need none.
        let mut started: Option<Instant> = None;
        let leader_wait = self.config.failover.hold_timeout;
        let mut deadline = || *started.get_or_insert_with(Instant::now) + leader_wait;
        let mut tried = std::mem::take(&mut self.unit.exclude);
        loop {
            let snapshot = shared.topology.snapshot();
            let follower = match want {
                Want::Follower => match self.plan_read(&snapshot, &tried).await? {
                    Some(n) => Some(n).filter(|&n| Some(n) != snapshot.leader),
                    None => None,
                },
                Want::Leader => None,
            };
            let node = match follower {
                Some(n) => n,
                None => match snapshot.leader {
                    Some(leader) => leader,
                    None => {
                        let wait = deadline().saturating_duration_since(Instant::now());
                        Box::pin(shared.topology.leader(wait)).await.ok_or_else(|| {
                            ProxyError::NoLeader(format!(
                                "none of {} nodes is an up primary",
                                self.config.active_nodes().count()
                            ))
                        })?
                    }
                },
            };
            match self.lease(node, follower.is_some(), needs).await {
                Ok(()) => return Ok(()),
                // A node that refuses connections (down, starting, shutting down) is skipped for
                // reads, and waited out for writes: the monitors will find the leader.
                Err(ProxyError::Backend(e)) if unreachable(&e) && follower.is_some() => tried.push(node),
                Err(ProxyError::Backend(e)) if unreachable(&e) && Instant::now() < deadline() => {
                    Box::pin(crate::control::sleep(self.config.monitor.interval)).await;
                }
                Err(ProxyError::Backend(e)) if unreachable(&e) => {
                    let node = shared.pools.nodes[node].name.clone();
                    return Err(ProxyError::LeaderUnreachable { node, waited: leader_wait, error: e.to_string() });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// PAUSE: new units (and logins) wait here for RESUME.
    pub(super) async fn wait_for_resume(&mut self) {
        self.entry.set_status(ClientStatus::Waiting);
        self.shared.lifecycle.gate().await;
    }

    /// `prepare_server`, entered only when the connection's state differs from the client's
    /// (most leases: it does not, and no future is built for them).
    pub(super) async fn prepare_server_if_needed(&mut self) -> Result<(), ProxyError> {
        let Some(leased) = self.server.as_ref() else { return Ok(()) };
        let conn = &*leased.lease;
        let differs = leased.foreign_sequences
            || leased.drop_foreign_statements
            || self.state.settings.current() != &conn.settings
            || sql_prepared::may_lack(&self.state.sql_statements, &conn.sql_statements);
        if !differs {
            return Ok(());
        }
        Box::pin(self.prepare_server()).await
    }

    /// This client's pool (database, user) on `node`, looked up once per session.
    pub(super) fn node_pool(&mut self, node: usize) -> &Pool {
        let (shared, login) = (self.shared, &self.login);
        if node >= self.pools.by_node.len() {
            self.pools.by_node.resize(node + 1, None); // a node a reload added since login
        }
        self.pools.by_node[node]
            .get_or_insert_with(|| shared.pools.pool(node, &login.database, &login.user, &login.server_secret))
    }

    /// Leases a connection on one node.
    pub(super) async fn lease(&mut self, node: usize, follower: bool, needs: Needs) -> Result<(), ProxyError> {
        let shared = self.shared;
        let home = if needs.sequence_state { self.pools.affinity.sequences } else { self.pools.affinity.last };
        let home = home.filter(|&(n, _)| n == node);
        let pool = self.node_pool(node);
        let metrics = &shared.pools.nodes[node].metrics;
        let (lease, waited) = pool.lease(shared.pools.acquire_timeout(), home.map(|(_, pid)| pid)).await;
        let mut lease = match lease {
            Ok(lease) => lease,
            Err(LeaseError::Timeout(_)) => {
                metrics.pool_timeouts.increment(1);
                let waited = waited.unwrap_or_default();
                return Err(ProxyError::PoolTimeout { node: shared.pools.nodes[node].name.clone(), waited });
            }
            Err(LeaseError::Backend(e)) => return Err(e.into()),
        };
        // Only leases that waited: the rest are counted by pgcausal_routed_total.
        if let Some(waited) = waited {
            metrics.pool_wait.record(waited.as_secs_f64());
        }
        if follower { &metrics.routed_reads } else { &metrics.routed_leader }.increment(1);
        shared.pools.nodes[node].unit_routed();
        let foreign_sequences = needs.sequence_state && lease.sequences.foreign_to(self.entry.id);
        lease.sequences.leased_by(self.entry.id);
        self.key.target.set(node, lease.pid, lease.secret);
        self.entry.set_status(ClientStatus::Active);
        self.unit.started.get_or_insert_with(Instant::now);
        self.entry.set_server(Some((node, lease.pid, lease.created_unix_ms)));
        let outstanding = shared.balancer.lease(node);
        let incarnation = shared.positions.nodes[node].sample().incarnation;
        let scanner = BackendScanner::default();
        self.server = Some(Leased {
            lease,
            node,
            follower,
            incarnation,
            scanner,
            _outstanding: outstanding,
            executed: false,
            unnamed_parsed: false,
            unnamed_here: false,
            lsn_probe_sent: false,
            temp_check_due: false,
            foreign_sequences,
            drop_foreign_statements: needs.node_local,
            resync_due: false,
            sql_prepares: Vec::new(),
        });
        // Reads outside a transaction on a follower may be re-run: hold their answers back.
        if follower && self.tx_status == TxStatus::Idle && self.unit.deferred_begin.is_none() {
            self.unit.hold = Some(std::mem::take(&mut self.spare_hold));
        }
        Ok(())
    }
}

/// A connection failure that says nothing about the client's request: try elsewhere or later.
pub(super) fn unreachable(e: &BackendError) -> bool {
    match e {
        BackendError::Io(_) | BackendError::Timeout(_) => true,
        BackendError::Server { code, .. } => {
            <[u8; 5]>::try_from(code.as_bytes()).is_ok_and(|code| retry_on(&code).is_some())
        }
        _ => false,
    }
}

/// The kind of node a unit of work needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    Leader,
    Follower,
}

/// Where a statement with this classification runs, given the session's override.
/// `in_deferred_begin`: a plain BEGIN is waiting for its first statement to pick the node.
pub(super) fn want(c: &Classification, route: RouteOverride, in_deferred_begin: bool) -> Want {
    let hard_leader = c.target == Target::Leader && !c.reason.is_soft();
    match route {
        RouteOverride::Leader => return Want::Leader,
        RouteOverride::Follower if !hard_leader => return Want::Follower,
        _ => {}
    }
    if in_deferred_begin {
        return if c.tx == TxControl::SetTransactionReadOnly { Want::Follower } else { Want::Leader };
    }
    match (c.tx, c.target) {
        (TxControl::Begin { read_only }, _) => {
            if read_only {
                Want::Follower
            } else {
                Want::Leader
            }
        }
        (_, Target::Follower) => Want::Follower,
        (_, Target::Leader) => Want::Leader,
    }
}

/// Server errors after which a read that sent nothing to the client yet can run again elsewhere:
/// `Some(true)` means "on the leader" (the follower refused a write), `Some(false)` "on another node".
pub(super) fn retry_on(code: &[u8; 5]) -> Option<bool> {
    use crate::error::sqlstate::*;
    const ELSEWHERE: [[u8; 5]; 4] =
        [bytes(ADMIN_SHUTDOWN), bytes(CRASH_SHUTDOWN), bytes(CANNOT_CONNECT_NOW), bytes(SERIALIZATION_FAILURE)];
    if *code == bytes(READ_ONLY_SQL_TRANSACTION) {
        Some(true)
    } else if ELSEWHERE.contains(code) || code.starts_with(CONNECTION_EXCEPTION_CLASS.as_bytes()) {
        Some(false) // shutdown, conflict with recovery, connection exception
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{classify, FunctionCatalog};

    fn c(sql: &str) -> Classification {
        classify(sql, &FunctionCatalog::builtin())
    }

    #[test]
    fn wants_follow_classification_overrides_and_deferred_begin() {
        let auto = RouteOverride::Auto;
        assert_eq!(want(&c("SELECT 1"), auto, false), Want::Follower);
        assert_eq!(want(&c("INSERT INTO t VALUES (1)"), auto, false), Want::Leader);
        assert_eq!(want(&c("BEGIN READ ONLY"), auto, false), Want::Follower);
        assert_eq!(want(&c("BEGIN"), auto, false), Want::Leader);
        assert_eq!(want(&c("SET TRANSACTION READ ONLY"), auto, true), Want::Follower);
        assert_eq!(want(&c("SELECT 1"), auto, true), Want::Leader);
        assert_eq!(want(&c("SELECT 1"), RouteOverride::Leader, false), Want::Leader);
        assert_eq!(want(&c("DELETE FROM t"), RouteOverride::Follower, false), Want::Leader);
    }

    #[test]
    fn retryable_errors() {
        assert_eq!(retry_on(b"25006"), Some(true));
        assert_eq!(retry_on(b"08006"), Some(false));
        assert_eq!(retry_on(b"23505"), None);
    }

    #[test]
    fn every_registered_retry_reason_is_one_the_session_retries_on() {
        for reason in crate::metrics::RETRY_REASONS.iter().filter(|r| **r != "connection_lost") {
            let code: [u8; 5] = reason.as_bytes().try_into().expect("a SQLSTATE");
            assert!(retry_on(&code).is_some(), "{reason}");
        }
    }
}
