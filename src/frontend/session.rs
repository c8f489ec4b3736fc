//! One client session after login: reads client messages, leases a server connection when work
//! arrives, and pumps bytes both ways (rows are never decoded) until the client leaves.
//!
//! The path of a query: client socket → `cbuf` → `process_client` (frame, account, lease) →
//! `to_server` → server socket → server `rbuf` → `process_server` (scan headers, count
//! ReadyForQuery) → `to_client` → client socket. Both directions are pumped in one `select!`, so
//! a client that pipelines more than the socket buffers hold can never deadlock the server.

use super::cancel::CancelKey;
use super::inflight::{Inflight, Request};
use super::prepared::ClientStatements;
use super::requests::{answer_without_server, answerable_without_server, Outbound, Refused};
use super::routing::{self, ProxySettings, Want};
use super::sql_prepared::{self, ClientSqlStatements, Plan, SqlPrepare};
use super::startup::{put_login_ok, ClientLogin};
use super::state::{ClientSettings, Pins};
use crate::backend::settings::Settings;
use crate::backend::statements::ServerStatements;
use crate::backend::BackendError;
use crate::backend::{Lease, Pool};
use crate::config::{LeaderReads, PoolMode};
use crate::error::ProxyError;
use crate::protocol::framing::{self, BackendScanner, ServerMessages, Verdict};
use crate::protocol::{fe, messages};
use crate::proxy::Shared;
use crate::route::{Classification, SessionEffect, TxControl};
use crate::topology::balance::Outstanding;
use bytes::{Buf, Bytes, BytesMut};
use deadpool::managed::{Object, PoolError};
use std::io;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Stop reading a side while this much is queued for the other.
const HIGH_WATER: usize = 256 * 1024;

/// The server connection a session holds, with where it is in the server's output.
struct Leased {
    lease: Lease,
    node: usize,
    /// Leased to serve reads on a follower (the leader when it serves reads counts as not).
    follower: bool,
    scanner: BackendScanner,
    _outstanding: Outstanding,
}

/// A read unit on a follower whose answer is held back until its first row (or completion), so
/// it can run again elsewhere if the follower refuses it (a write in disguise) or fails.
#[derive(Default)]
struct Hold {
    /// Client messages of the unit, to send again.
    replay: BytesMut,
    /// Server output not yet passed on.
    held: BytesMut,
}

/// What the held output showed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldEvent {
    Release,
    /// Run again: on the leader if true, else on another node.
    Retry {
        leader: bool,
        code: [u8; 5],
    },
}

enum Event {
    ClientRead(usize),
    ServerRead(usize),
    Wrote,
    ServerFailed(io::Error),
}

pub struct Session<'a> {
    shared: &'a Shared,
    login: ClientLogin,
    key: CancelKey,
    mode: PoolMode,
    client_rd: OwnedReadHalf,
    client_wr: OwnedWriteHalf,
    cbuf: BytesMut,
    to_client: BytesMut,
    to_server: BytesMut,
    server: Option<Leased>,
    /// This session's pool on each node, looked up once.
    pools: Vec<Option<Pool>>,
    /// Requests sent (or answered by the proxy) whose answers are still to come, in order.
    inflight: Inflight,
    /// The client's named prepared statements.
    statements: ClientStatements,
    /// The client's SQL-level prepared statements (PREPARE name AS ...).
    sql_statements: ClientSqlStatements,
    /// SQL-level PREPAREs sent in the current unit (client's own: true), forgotten if it fails.
    sql_prepares: Vec<(String, bool)>,
    /// The client's session settings, replayed on each server connection it uses.
    settings: ClientSettings,
    /// State that ties the client to its current server connection (LISTEN, temp tables, ...).
    pins: Pins,
    /// Extended-protocol messages went out after the last Sync: the server must be kept.
    unsynced: bool,
    /// Transaction status from the last ReadyForQuery ('I', 'T' or 'E').
    tx_status: u8,
    /// After the proxy failed a message of an extended batch, skip to Sync as a server would.
    discard_until_sync: bool,
    closing: bool,
    /// The proxy's own settings (`SET pgcausal.route = ...`).
    proxy: ProxySettings,
    /// A plain BEGIN answered by the proxy, sent with the first statement that picks the node.
    deferred_begin: Option<Bytes>,
    hold: Option<Hold>,
    /// Bytes at the start of `cbuf` that are a unit being sent again.
    replaying: usize,
    /// Retries of the current unit (bounded, so a failing statement cannot loop).
    unit_retries: u8,
    /// The next lease goes to the leader (a follower refused the unit as a write).
    force_leader: bool,
    /// Nodes not to use for the next lease (they just failed the unit).
    exclude: Vec<usize>,
}

/// Runs a logged-in client to the end of its session.
pub async fn run(stream: TcpStream, login: ClientLogin, shared: &Shared) -> Result<(), ProxyError> {
    let (client_rd, client_wr) = stream.into_split();
    let mut session = Session {
        key: shared.cancels.register(),
        mode: shared.config.proxy.pool_mode,
        client_rd,
        client_wr,
        cbuf: BytesMut::with_capacity(8 * 1024),
        to_client: BytesMut::with_capacity(8 * 1024),
        to_server: BytesMut::with_capacity(8 * 1024),
        server: None,
        pools: vec![None; shared.config.nodes.len()],
        inflight: Inflight::default(),
        statements: ClientStatements::default(),
        sql_statements: ClientSqlStatements::default(),
        sql_prepares: Vec::new(),
        settings: ClientSettings::default(),
        pins: Pins::default(),
        unsynced: false,
        tx_status: b'I',
        discard_until_sync: false,
        closing: false,
        proxy: ProxySettings::default(),
        deferred_begin: None,
        hold: None,
        replaying: 0,
        unit_retries: 0,
        force_leader: false,
        exclude: Vec::new(),
        login,
        shared,
    };
    if let Err(e) = session.start().await {
        super::fail(&mut session.client_wr, &e).await;
        return Err(e);
    }
    let result = session.pump().await;
    if let Err(e) = &result {
        super::fail(&mut session.client_wr, e).await;
    }
    session.finish();
    result
}

impl Session<'_> {
    /// Leases a first server connection (which proves the database and login work), applies the
    /// client's startup parameters in session mode, and completes the client's login.
    async fn start(&mut self) -> Result<(), ProxyError> {
        self.acquire(Want::Leader).await?;
        self.hold = None;
        let conn = &mut *self.server.as_mut().expect("just acquired").lease;
        let mut startup = Settings::default();
        for (name, value) in startup_settings(&self.login.params) {
            startup.set_text(&name, &value);
        }
        // Applied here rather than injected, so the ParameterStatus the client sees reflect them.
        if let Some(sql) = startup.sync_sql(&conn.settings) {
            conn.run(&sql).await?;
            conn.settings = startup.clone();
        }
        self.settings = ClientSettings::from_startup(startup);
        let mut out = BytesMut::new();
        put_login_ok(&mut out, &conn.params, self.key.pid, self.key.secret);
        self.client_wr.write_all(&out).await?;
        self.maybe_release();
        Ok(())
    }

    async fn pump(&mut self) -> Result<(), ProxyError> {
        loop {
            self.process_client().await?;
            let released = self.maybe_release();
            if self.closing {
                return Ok(());
            }
            if released && self.has_complete_message() {
                continue; // a statement waited for this unit to end (it needs another node)
            }
            match self.next_event().await? {
                Event::ClientRead(0) => self.closing = true,
                Event::ServerRead(0) => self.server_lost(io::ErrorKind::UnexpectedEof.into())?,
                Event::ServerFailed(e) => self.server_lost(e)?,
                Event::ServerRead(_) => self.process_server()?,
                Event::ClientRead(_) | Event::Wrote => {}
            }
        }
    }

    /// Waits for the first socket that can make progress in either direction.
    async fn next_event(&mut self) -> Result<Event, ProxyError> {
        let want_client = self.to_server.len() < HIGH_WATER;
        let want_server = self.to_client.len() < HIGH_WATER;
        let (client_rd, client_wr) = (&mut self.client_rd, &mut self.client_wr);
        let (cbuf, to_client, to_server) = (&mut self.cbuf, &mut self.to_client, &mut self.to_server);
        let Some(leased) = self.server.as_mut() else {
            return tokio::select! {
                r = client_wr.write_buf(to_client), if !to_client.is_empty() => r.map(|_| Event::Wrote),
                r = client_rd.read_buf(cbuf), if want_client => r.map(Event::ClientRead),
            }
            .map_err(ProxyError::ClientIo);
        };
        let conn = &mut *leased.lease;
        tokio::select! {
            r = client_wr.write_buf(to_client), if !to_client.is_empty() => Ok(r.map(|_| Event::Wrote)?),
            r = conn.writer.write_buf(to_server), if !to_server.is_empty() => {
                Ok(r.map_or_else(Event::ServerFailed, |_| Event::Wrote))
            }
            r = conn.reader.read_buf(&mut conn.rbuf), if want_server => {
                Ok(r.map_or_else(Event::ServerFailed, Event::ServerRead))
            }
            r = client_rd.read_buf(cbuf), if want_client => Ok(r.map(Event::ClientRead)?),
        }
    }

    fn has_complete_message(&self) -> bool {
        let max = self.shared.config.proxy.max_message_size;
        matches!(framing::peek_header(&self.cbuf, max), Ok(Some((_, total))) if self.cbuf.len() >= total)
    }

    /// Consumes a processed message from `cbuf`.
    fn consume(&mut self, total: usize) {
        self.cbuf.advance(total);
        self.replaying = self.replaying.saturating_sub(total);
    }

    /// Where answers for the client go now: held back during a retryable read, else out.
    fn client_out(&mut self) -> &mut BytesMut {
        match self.hold.as_mut() {
            Some(h) => &mut h.held,
            None => &mut self.to_client,
        }
    }

    /// Frames complete client messages, routes each unit of work to a node, and queues the
    /// messages for its server connection.
    async fn process_client(&mut self) -> Result<(), ProxyError> {
        let max = self.shared.config.proxy.max_message_size;
        while self.to_server.len() < HIGH_WATER {
            let Some((tag, total)) = framing::peek_header(&self.cbuf, max)? else { break };
            if self.cbuf.len() < total {
                self.cbuf.reserve(total - self.cbuf.len());
                break;
            }
            if tag == fe::TERMINATE {
                self.closing = true;
                return Ok(());
            }
            if self.discard_until_sync && tag != fe::SYNC {
                self.consume(total);
                continue;
            }
            let class = self.classify_message(tag, total);
            if tag == fe::QUERY && class.as_ref().is_some_and(|c| c.is_proxy_command()) {
                self.answer_proxy_command(class.as_deref().expect("checked"));
                self.consume(total);
                continue;
            }
            if self.server.is_none() {
                let msg = &self.cbuf[..total];
                if answerable_without_server(tag, msg) {
                    self.discard_until_sync = false;
                    self.unsynced = false;
                    let result =
                        answer_without_server(tag, msg, &mut self.statements, &mut self.inflight, &mut self.to_client);
                    self.consume(total);
                    self.refused(result?);
                    continue;
                }
                if self.answer_transaction_control(tag, total, class.as_deref()) {
                    self.consume(total);
                    continue;
                }
                let want = self.want(class.as_deref());
                if let Err(e) = self.acquire(want).await {
                    self.consume(total);
                    self.refuse(&e);
                    if matches!(tag, fe::QUERY | fe::SYNC | fe::FUNCTION_CALL) {
                        self.answer_sync();
                    } else {
                        self.discard_until_sync = true;
                    }
                    continue;
                }
                self.sync_settings();
                self.send_deferred_begin();
            } else if self.must_wait_for_another_node(class.as_deref()) {
                break;
            }
            self.discard_until_sync = false;
            self.account(tag);
            if let Some(c) = &class {
                if tag == fe::QUERY || tag == fe::PARSE {
                    self.observe_sql(c, tag, total);
                }
            }
            if tag == fe::QUERY && !self.plan_sql_prepare(total) {
                self.consume(total);
                continue;
            }
            if let Some(hold) = self.hold.as_mut() {
                hold.replay.extend_from_slice(&self.cbuf[..total]);
            }
            let leased = self.server.as_mut().expect("leased above");
            let mut outbound = Outbound {
                to_server: &mut self.to_server,
                to_client: match self.hold.as_mut() {
                    Some(h) => &mut h.held,
                    None => &mut self.to_client,
                },
                inflight: &mut self.inflight,
                server: &mut leased.lease.statements,
                client: &mut self.statements,
                replaying: self.replaying > 0,
            };
            let result = outbound.message(tag, &self.cbuf[..total]);
            self.consume(total);
            self.refused(result?);
        }
        Ok(())
    }

    /// SQL-level PREPARE/EXECUTE/DEALLOCATE: prepares the statement on this connection first
    /// when needed, or answers the query itself. False when the query must not be sent.
    fn plan_sql_prepare(&mut self, total: usize) -> bool {
        // In a failed transaction PostgreSQL rejects these unchanged (25P02): let it.
        if self.tx_status == b'E' {
            return true;
        }
        let Some((sql, _)) = messages::read_cstr(&self.cbuf[5..total]) else { return true };
        let sql = String::from_utf8_lossy(sql);
        let query = sql_prepared::inspect(&sql);
        if matches!(query, SqlPrepare::Other) {
            return true;
        }
        let conn = &mut self.server.as_mut().expect("leased").lease;
        let plan = sql_prepared::plan(&query, &mut self.sql_statements, &mut conn.sql_statements);
        if let (SqlPrepare::Prepare { name, .. }, Plan::Forward { .. }) = (&query, &plan) {
            self.sql_prepares.push((name.clone(), true));
        }
        match plan {
            Plan::Forward { inject: None } => true,
            Plan::Forward { inject: Some(inject) } => {
                if let SqlPrepare::Execute { name } = &query {
                    self.sql_prepares.push((name.clone(), false));
                }
                let _ = postgres_protocol::message::frontend::query(&inject, &mut self.to_server);
                let out = match self.hold.as_mut() {
                    Some(h) => &mut h.held,
                    None => &mut self.to_client,
                };
                self.inflight.push(Request::Query { swallow: true }, out);
                true
            }
            Plan::Answer { tag } => {
                let mut reply = BytesMut::new();
                routing::put_command_complete(&mut reply, tag);
                self.push_reply(reply.freeze());
                self.answer_sync();
                false
            }
            Plan::Error { code, message } => {
                crate::metrics::error(code.as_bytes(), "proxy");
                self.push_reply(messages::error_response("ERROR", code, &message).freeze());
                self.answer_sync();
                false
            }
        }
    }

    /// The unit that sent SQL-level PREPAREs failed: the statements were not created.
    fn sql_prepare_failed(&mut self, code: &[u8; 5]) {
        let code = String::from_utf8_lossy(code);
        let Some(leased) = self.server.as_mut() else { return };
        for (name, client_own) in self.sql_prepares.drain(..) {
            leased.lease.sql_statements.prepare_failed(&name, &code);
            if client_own {
                self.sql_statements.forget(&name);
            }
        }
    }

    /// The classification of a message that carries or names SQL (once per Parse for statements).
    fn classify_message(&mut self, tag: u8, total: usize) -> Option<Arc<Classification>> {
        let body = &self.cbuf[5..total];
        let classifier = &self.shared.classifier;
        let named = |body: &[u8]| messages::read_cstr(body).map(|(name, _)| name.to_vec());
        let statement_name = match tag {
            fe::QUERY => {
                return messages::read_cstr(body).map(|(q, _)| classifier.classify(&String::from_utf8_lossy(q)))
            }
            fe::PARSE => {
                let (_, rest) = messages::read_cstr(body)?;
                return messages::read_cstr(rest).map(|(q, _)| classifier.classify(&String::from_utf8_lossy(q)));
            }
            fe::BIND => messages::read_cstr(body).and_then(|(_, rest)| named(rest))?,
            fe::DESCRIBE if body.first() == Some(&b'S') => named(&body[1..])?,
            _ => return None,
        };
        let statement = self.statements.get_mut(&statement_name)?;
        if statement.classification.is_none() {
            statement.classification = Some(classifier.classify(&String::from_utf8_lossy(statement.query())));
        }
        statement.classification.clone()
    }

    /// The kind of node the next unit of work needs.
    fn want(&mut self, class: Option<&Classification>) -> Want {
        let routing = &self.shared.config.routing;
        if std::mem::take(&mut self.force_leader)
            || !routing.enabled
            || self.mode == PoolMode::Session
            || self.pins.is_pinned()
        {
            return Want::Leader;
        }
        class.map_or(Want::Leader, |c| routing::want(c, self.proxy.route, self.deferred_begin.is_some()))
    }

    /// A read unit on a follower is done with when the next statement needs the leader: wait for
    /// it to end (at a Sync boundary, outside a transaction) and lease the leader then.
    fn must_wait_for_another_node(&self, class: Option<&Classification>) -> bool {
        let Some(leased) = self.server.as_ref() else { return false };
        let Some(c) = class else { return false };
        leased.follower
            && self.tx_status == b'I'
            && !self.unsynced
            && self.mode == PoolMode::Transaction
            && routing::want(c, self.proxy.route, false) == Want::Leader
    }

    /// `SET/SHOW/RESET pgcausal.*`: answered by the proxy, in order with other answers.
    fn answer_proxy_command(&mut self, c: &Classification) {
        let reply = match routing::answer_proxy_command(c, &mut self.proxy) {
            Ok(reply) => reply.freeze(),
            Err((code, message)) => {
                crate::metrics::error(code.as_bytes(), "proxy");
                messages::error_response("ERROR", code, &message).freeze()
            }
        };
        let mut out = self.client_out().split_off(0);
        self.inflight.push(Request::Reply(reply), &mut out);
        self.client_out().unsplit(out);
        self.answer_sync();
    }

    /// A plain BEGIN (not READ ONLY) is answered here; its node is chosen by the next statement
    /// (`SET TRANSACTION READ ONLY` sends the whole transaction to a follower). COMMIT or
    /// ROLLBACK of such a transaction that ran nothing is answered here too.
    fn answer_transaction_control(&mut self, tag: u8, total: usize, class: Option<&Classification>) -> bool {
        let Some(c) = class.filter(|c| tag == fe::QUERY && c.statement_count == 1) else { return false };
        if !self.shared.config.routing.enabled || self.mode == PoolMode::Session || self.pins.is_pinned() {
            return false;
        }
        let reply = match (c.tx, self.deferred_begin.is_some()) {
            (TxControl::Begin { read_only: false }, false) if self.proxy.route != routing::RouteOverride::Leader => {
                self.deferred_begin = Some(Bytes::copy_from_slice(&self.cbuf[..total]));
                self.tx_status = b'T';
                routing::local_transaction_reply("BEGIN", b'T')
            }
            (TxControl::Commit, true) => {
                self.deferred_begin = None;
                self.tx_status = b'I';
                routing::local_transaction_reply("COMMIT", b'I')
            }
            (TxControl::Rollback, true) => {
                self.deferred_begin = None;
                self.tx_status = b'I';
                routing::local_transaction_reply("ROLLBACK", b'I')
            }
            _ => return false,
        };
        self.inflight.push(Request::Reply(reply), &mut self.to_client);
        true
    }

    /// Sends a deferred BEGIN ahead of the statement that chose the node (its answer swallowed).
    fn send_deferred_begin(&mut self) {
        if let Some(begin) = self.deferred_begin.take() {
            self.to_server.extend_from_slice(&begin);
            self.inflight.push(Request::Query { swallow: true }, &mut self.to_client);
        }
    }

    /// A message the proxy refused like PostgreSQL would: its error, then skip to Sync.
    fn refused(&mut self, result: Result<(), Refused>) {
        if let Err(Refused(error)) = result {
            crate::metrics::error(b"42", "proxy");
            self.push_reply(error);
            self.discard_until_sync = true;
        }
    }

    /// Tracks the session state a Query or Parse changes.
    fn observe_sql(&mut self, classification: &Classification, tag: u8, total: usize) {
        if !classification.session.is_empty() {
            self.settings.apply(&classification.session);
        }
        if !classification.pins.is_empty() || !classification.unpins.is_empty() {
            for kind in self.pins.apply(classification) {
                metrics::counter!(crate::metrics::SESSION_PINS, "kind" => kind).increment(1);
            }
        }
        let body = &self.cbuf[5..total];
        let sql = match tag {
            fe::PARSE => messages::read_cstr(body).and_then(|(_, rest)| messages::read_cstr(rest)).map(|(q, _)| q),
            _ => messages::read_cstr(body).map(|(q, _)| q),
        };
        // DISCARD ALL and DEALLOCATE drop the server's statements, ours included.
        let discard = classification.session.contains(&SessionEffect::DiscardAll);
        if discard || sql.is_some_and(|q| starts_with_word(q, b"deallocate")) {
            if let Some(leased) = self.server.as_mut() {
                leased.lease.statements.clear();
            }
            if discard {
                self.statements.clear();
                self.sql_statements.clear();
                if let Some(leased) = self.server.as_mut() {
                    sql_prepared::server_discarded(&mut leased.lease.sql_statements);
                }
            }
        }
    }

    /// Brings a newly leased server connection to the client's settings (answers swallowed).
    fn sync_settings(&mut self) {
        let Some(leased) = self.server.as_mut() else { return };
        let current = self.settings.current();
        if let Some(sql) = current.sync_sql(&leased.lease.settings) {
            leased.lease.settings = current.clone();
            let _ = postgres_protocol::message::frontend::query(&sql, &mut self.to_server);
            self.inflight.push(Request::Query { swallow: true }, &mut self.to_client);
            if let Some(hold) = self.hold.as_mut() {
                // A retry syncs its new server itself; the replay must not carry this query.
                hold.replay.clear();
            }
        }
    }

    /// Per-message bookkeeping: whether the server must be kept until a Sync, and query counts.
    fn account(&mut self, tag: u8) {
        let node = self.server.as_ref().map_or(0, |l| l.node);
        match tag {
            fe::SYNC => self.unsynced = false,
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::FLUSH => self.unsynced = true,
            fe::EXECUTE => {
                self.unsynced = true;
                self.shared.pools.nodes[node].metrics.queries.increment(1);
            }
            fe::QUERY | fe::FUNCTION_CALL => self.shared.pools.nodes[node].metrics.queries.increment(1),
            _ => {}
        }
    }

    /// Scans what the server sent, tracks requests and ReadyForQuery, and passes answers on.
    fn process_server(&mut self) -> Result<(), ProxyError> {
        let leased = self.server.as_mut().expect("reading from a held server");
        let conn = &mut *leased.lease;
        let mut sink = ServerSide {
            inflight: &mut self.inflight,
            statements: &mut conn.statements,
            tx_status: &mut self.tx_status,
            settings: &mut self.settings,
            server_settings: &mut conn.settings,
            holding: self.hold.is_some(),
            hold_event: None,
            first_error: None,
        };
        let out = match self.hold.as_mut() {
            Some(h) => &mut h.held,
            None => &mut self.to_client,
        };
        let was_empty = out.is_empty();
        let n = leased.scanner.scan(&conn.rbuf, out, &mut sink);
        conn.rbuf.advance(n);
        let first_error = sink.first_error;
        let hold_event = sink.hold_event;
        if let Some(code) = first_error.filter(|_| !self.sql_prepares.is_empty()) {
            self.sql_prepare_failed(&code);
        }
        if self.inflight.is_empty() {
            self.sql_prepares.clear();
        }
        match hold_event {
            Some(HoldEvent::Retry { leader, code }) if self.unit_retries < 3 => {
                self.retry_unit(leader, &String::from_utf8_lossy(&code));
                return Ok(());
            }
            Some(_) => self.release_hold(),
            None => {}
        }
        // Write straight through while the client keeps up: one syscall, no select round.
        if was_empty && self.hold.is_none() && !self.to_client.is_empty() {
            match self.client_wr.try_write(&self.to_client) {
                Ok(w) => self.to_client.advance(w),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ProxyError::ClientIo(e)),
            }
        }
        Ok(())
    }

    /// The held read produced its first row or finished: pass everything on.
    fn release_hold(&mut self) {
        if let Some(hold) = self.hold.take() {
            self.to_client.extend_from_slice(&hold.held);
        }
    }

    /// Runs the held unit again: on the leader (a follower refused it as a write, which is then
    /// remembered) or on another node (the follower failed). Nothing of it reached the client.
    fn retry_unit(&mut self, leader: bool, reason: &str) {
        let hold = self.hold.take().expect("retrying a held unit");
        let leased = self.server.take().expect("retrying on a held server");
        tracing::debug!(node = %self.shared.pools.nodes[leased.node].name, reason, leader, "re-running a read unit");
        drop(Object::take(leased.lease)); // mid-unit: never reused
        self.key.target.clear();
        self.to_server.clear();
        self.inflight.clear();
        self.unsynced = false;
        self.tx_status = b'I';
        self.unit_retries += 1;
        metrics::counter!(crate::metrics::ROUTE_RETRIES, "reason" => reason.to_string()).increment(1);
        if leader {
            self.remember_leader_only(&hold.replay);
            self.force_leader = true;
        } else {
            self.exclude.push(leased.node);
        }
        let mut cbuf = BytesMut::with_capacity(hold.replay.len() + self.cbuf.len());
        cbuf.extend_from_slice(&hold.replay);
        cbuf.extend_from_slice(&self.cbuf);
        self.replaying = hold.replay.len();
        self.cbuf = cbuf;
    }

    /// Marks every statement of a refused unit as leader-only, for the classifier and this client.
    fn remember_leader_only(&mut self, replay: &[u8]) {
        let mut rest = replay;
        while let Ok(Some((tag, total))) = framing::peek_header(rest, usize::MAX) {
            let body = &rest[5..total.min(rest.len())];
            let sql: Option<Vec<u8>> = match tag {
                fe::QUERY => messages::read_cstr(body).map(|(q, _)| q.to_vec()),
                fe::PARSE => {
                    messages::read_cstr(body).and_then(|(_, r)| messages::read_cstr(r)).map(|(q, _)| q.to_vec())
                }
                fe::BIND => {
                    messages::read_cstr(body).and_then(|(_, r)| messages::read_cstr(r)).and_then(|(name, _)| {
                        let statement = self.statements.get_mut(name)?;
                        statement.classification = None;
                        Some(statement.query().to_vec())
                    })
                }
                _ => None,
            };
            if let Some(sql) = sql {
                self.shared.classifier.remember_leader_only(&String::from_utf8_lossy(&sql));
            }
            rest = &rest[total.min(rest.len())..];
        }
    }

    /// Leases a server connection for a unit of work: a follower for reads (balanced, skipping
    /// nodes that fail to connect; the leader as fallback), else the leader, waiting a bounded
    /// time for one to be known and reachable.
    async fn acquire(&mut self, want: Want) -> Result<(), ProxyError> {
        let shared = self.shared;
        let deadline = Instant::now() + shared.config.proxy.leader_wait_timeout;
        let mut tried = std::mem::take(&mut self.exclude);
        loop {
            let snapshot = shared.topology.snapshot();
            let follower = match want {
                Want::Follower => {
                    let mut candidates = snapshot.followers.clone();
                    if shared.config.routing.leader_reads == LeaderReads::Always {
                        candidates.extend(snapshot.leader);
                    }
                    let picked = shared.balancer.pick(&candidates, &tried);
                    if picked.is_none() && shared.config.routing.leader_reads == LeaderReads::Never {
                        return Err(ProxyError::NoFollower);
                    }
                    picked.filter(|&n| Some(n) != snapshot.leader)
                }
                Want::Leader => None,
            };
            let node = match follower {
                Some(n) => n,
                None => {
                    if want == Want::Follower {
                        metrics::counter!(crate::metrics::ROUTE_FALLBACKS, "reason" => "no_follower").increment(1);
                    }
                    let wait = deadline.saturating_duration_since(Instant::now());
                    shared.topology.leader(wait).await.ok_or_else(|| {
                        ProxyError::NoLeader(format!("none of {} nodes is an up primary", shared.config.nodes.len()))
                    })?
                }
            };
            match self.lease(node, follower.is_some()).await {
                Ok(()) => return Ok(()),
                // A node that refuses connections (down, starting, shutting down) is skipped for
                // reads, and waited out for writes: the monitors will find the leader.
                Err(ProxyError::Backend(e)) if unreachable(&e) && follower.is_some() => tried.push(node),
                Err(ProxyError::Backend(e)) if unreachable(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(shared.config.monitor.interval).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Leases a connection on one node.
    async fn lease(&mut self, node: usize, follower: bool) -> Result<(), ProxyError> {
        let shared = self.shared;
        let login = &self.login;
        let pool = self.pools[node]
            .get_or_insert_with(|| shared.pools.pool(node, &login.database, &login.user, &login.password));
        let metrics = &shared.pools.nodes[node].metrics;
        let started = Instant::now();
        let lease = match pool.get().await {
            Ok(lease) => lease,
            Err(PoolError::Timeout(_)) => {
                metrics.pool_timeouts.increment(1);
                return Err(ProxyError::PoolTimeout {
                    node: shared.pools.nodes[node].name.clone(),
                    waited: started.elapsed(),
                });
            }
            Err(PoolError::Backend(e)) => return Err(e.into()),
            Err(e) => return Err(ProxyError::Internal(e.to_string())),
        };
        metrics.pool_wait.record(started.elapsed().as_secs_f64());
        if follower { &metrics.routed_reads } else { &metrics.routed_leader }.increment(1);
        self.key.target.set(node, lease.pid, lease.secret);
        let outstanding = shared.balancer.lease(node);
        self.server =
            Some(Leased { lease, node, follower, scanner: BackendScanner::default(), _outstanding: outstanding });
        // Reads outside a transaction on a follower may be re-run: hold their answers back.
        self.hold = (follower && self.tx_status == b'I' && self.deferred_begin.is_none()).then(Hold::default);
        Ok(())
    }

    /// True when the held server has answered everything and sits idle outside a transaction.
    fn server_is_clean(&self) -> bool {
        self.server.as_ref().is_some_and(|l| {
            self.inflight.is_empty()
                && !self.unsynced
                && self.to_server.is_empty()
                && self.tx_status == b'I'
                && !l.scanner.mid_message()
                && l.lease.rbuf.is_empty()
        })
    }

    /// In transaction mode, hands the server back as soon as its transaction is over.
    fn maybe_release(&mut self) -> bool {
        if self.mode == PoolMode::Transaction && self.server_is_clean() && !self.pins.is_pinned() {
            self.release_hold();
            self.key.target.clear();
            self.server = None;
            self.unit_retries = 0;
            return true;
        }
        false
    }

    /// The server connection failed under us: fail what was pending, keep the client if we can.
    fn server_lost(&mut self, error: io::Error) -> Result<(), ProxyError> {
        if self.hold.is_some() && self.unit_retries < 3 {
            self.retry_unit(false, "connection_lost");
            return Ok(());
        }
        self.release_hold();
        let leased = self.server.take().expect("server was held");
        let node = &self.shared.pools.nodes[leased.node].name;
        tracing::warn!(%node, %error, "server connection lost");
        self.key.target.clear();
        self.to_server.clear();
        drop(Object::take(leased.lease));
        if leased.scanner.mid_message() || self.mode == PoolMode::Session {
            // Part of a message already reached the client, or session state is gone: it must reconnect.
            return Err(ProxyError::Backend(error.into()));
        }
        let sync_points = self.inflight.sync_points();
        self.inflight.clear();
        if sync_points > 0 || self.unsynced {
            self.refuse(&ProxyError::Backend(error.into()));
            for _ in 0..sync_points {
                self.to_client.extend_from_slice(&messages::ready_for_query(b'I'));
            }
            self.discard_until_sync = self.unsynced;
        }
        self.unsynced = false;
        self.tx_status = b'I';
        Ok(())
    }

    /// Answers a Sync (or a failed Query) with ReadyForQuery, after whatever is still in flight.
    fn answer_sync(&mut self) {
        let ready = Bytes::copy_from_slice(&messages::ready_for_query(self.tx_status));
        self.push_reply(ready);
    }

    /// Queues the proxy's own answer, in order with what is in flight.
    fn push_reply(&mut self, reply: Bytes) {
        let out = match self.hold.as_mut() {
            Some(h) => &mut h.held,
            None => &mut self.to_client,
        };
        self.inflight.push(Request::Reply(reply), out);
    }

    /// Answers with an ErrorResponse (severity ERROR) for a failure the session survives.
    fn refuse(&mut self, e: &ProxyError) {
        crate::metrics::error(e.sqlstate().as_bytes(), "proxy");
        let error = messages::error_response("ERROR", e.sqlstate(), &e.to_string()).freeze();
        self.push_reply(error);
    }

    /// Returns a clean server to its pool (reset first in session mode); closes any other.
    fn finish(&mut self) {
        let clean = self.server_is_clean();
        if let Some(mut leased) = self.server.take() {
            self.key.target.clear();
            if clean {
                leased.lease.needs_reset = self.mode == PoolMode::Session;
            } else {
                drop(Object::take(leased.lease));
            }
        }
    }
}

/// The session's view of server output: request accounting, statement cache, transaction status.
struct ServerSide<'a> {
    inflight: &'a mut Inflight,
    statements: &'a mut ServerStatements,
    tx_status: &'a mut u8,
    settings: &'a mut ClientSettings,
    server_settings: &'a mut Settings,
    /// Output is held back (a retryable read): watch for its first row or a retryable error.
    holding: bool,
    hold_event: Option<HoldEvent>,
    /// The first ErrorResponse's SQLSTATE in this batch of output.
    first_error: Option<[u8; 5]>,
}

impl ServerMessages for ServerSide<'_> {
    fn decide(&mut self, tag: u8, msg: &[u8]) -> Verdict {
        if self.holding && self.hold_event.is_none() {
            self.hold_event = match tag {
                b'E' => Some(match routing::retry_on(&messages::sqlstate_of(&msg[5..])) {
                    Some(leader) => HoldEvent::Retry { leader, code: messages::sqlstate_of(&msg[5..]) },
                    None => HoldEvent::Release,
                }),
                // Rows, completion, COPY, or the end of the unit: the read has gone through.
                b'D' | b'C' | b'I' | b's' | b'G' | b'H' | b'W' | b'Z' | b'V' => Some(HoldEvent::Release),
                _ => None,
            };
        }
        let (verdict, outcome) = self.inflight.on_server_message(tag);
        if let Some(hash) = outcome.failed_parse {
            self.statements.remove(hash);
        }
        match tag {
            b'Z' => {
                *self.tx_status = *msg.get(5).unwrap_or(&b'I');
                if *self.tx_status == b'I' {
                    *self.server_settings = self.settings.end_transaction();
                }
            }
            b'E' => {
                let code = messages::sqlstate_of(&msg[5..]);
                crate::metrics::error(&code, "server");
                self.first_error.get_or_insert(code);
                self.settings.transaction_failed();
            }
            b'C' if msg[5..].starts_with(b"ROLLBACK") => self.settings.transaction_failed(),
            _ => {}
        }
        verdict
    }

    fn after(&mut self, out: &mut BytesMut) {
        self.inflight.emit_due_replies(out);
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

/// A connection failure that says nothing about the client's request: try elsewhere or later.
fn unreachable(e: &BackendError) -> bool {
    match e {
        BackendError::Io(_) | BackendError::Timeout(_) => true,
        BackendError::Server { code, .. } => {
            <[u8; 5]>::try_from(code.as_bytes()).is_ok_and(|code| routing::retry_on(&code).is_some())
        }
        _ => false,
    }
}

/// True if `sql` starts with `word` (case-insensitive), after whitespace.
fn starts_with_word(sql: &[u8], word: &[u8]) -> bool {
    let sql = sql.trim_ascii_start();
    sql.len() >= word.len()
        && sql[..word.len()].eq_ignore_ascii_case(word)
        && sql.get(word.len()).is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_')
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
        assert!(starts_with_word(b"  DEALLOCATE ALL", b"deallocate"));
        assert!(!starts_with_word(b"deallocated", b"deallocate"));
    }
}
