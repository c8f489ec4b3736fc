//! One client session after login: reads client messages, leases a server connection when work
//! arrives, and pumps bytes both ways (rows are never decoded) until the client leaves.
//!
//! The path of a query: client socket → `cbuf` → `process_client` (frame, account, lease) →
//! `to_server` → server socket → server `rbuf` → `process_server` (scan headers, count
//! ReadyForQuery) → `to_client` → client socket. Both directions are pumped in one `select!`, so
//! a client that pipelines more than the socket buffers hold can never deadlock the server.

mod output;
mod restore;
mod unit;

use super::cancel::CancelKey;
use super::client_state::{ClientSettings, Pins};
use super::inflight::{Inflight, Request};
use super::placement::{self, Want};
use super::prepared::ClientStatements;
use super::proxy_settings::{self, ProxySettings};
use super::proxy_statements::{ProxyStatements, Step};
use super::requests::{answer_without_server, answerable_without_server, Outbound, Refused};
use super::sql_prepared::{self, ClientSqlStatements, Plan, SqlPrepare};
use super::startup::{put_login_ok, ClientLogin};
use crate::backend::settings::Settings;
use crate::backend::statements::ServerStatements;
use crate::backend::BackendError;
use crate::backend::{Lease, LeaseError, Pool};
use crate::config::{LeaderReads, PoolMode};
use crate::consistency::Floor;
use crate::error::ProxyError;
use crate::frontend::shared::Shared;
use crate::protocol::framing::{self, BackendScanner, ServerMessages, Verdict};
use crate::protocol::{fe, messages, TxStatus};
use crate::route::{Classification, SessionEffect, TxControl};
use crate::topology::balance::Outstanding;
use bytes::{Buf, Bytes, BytesMut};
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
    /// The node's incarnation when leased (a restart in between voids what was read there).
    incarnation: i64,
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
    /// The client's prepared `pgcausal.*` commands (extended protocol), answered by the proxy.
    proxy_statements: ProxyStatements,
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
    tx_status: TxStatus,
    /// After the proxy failed a message of an extended batch, skip to Sync as a server would.
    discard_until_sync: bool,
    closing: bool,
    /// The proxy's own settings (`SET pgcausal.route = ...`).
    proxy: ProxySettings,
    /// The session's consistency level and LSN floor.
    floor: Floor,
    /// The current unit ran a statement that writes (its commit raises the floor).
    unit_wrote: bool,
    /// An LSN query was injected after a write (`consistency.write_lsn = same_connection`).
    lsn_probe_sent: bool,
    /// The current unit ran DDL, DO/CALL or an unparsed statement: it may have made or
    /// dropped temporary objects, which the server is asked about once the unit is over.
    unit_ddl: bool,
    /// The current unit has executed something (it can no longer move to another node).
    unit_executed: bool,
    /// The current unit parsed an unnamed statement (it lives only on this connection).
    unit_unnamed: bool,
    /// A plain BEGIN answered by the proxy, sent with the first statement that picks the node.
    deferred_begin: Option<Bytes>,
    hold: Option<Hold>,
    /// The buffers of the last hold, kept for the next (no allocation per read unit).
    spare_hold: Hold,
    /// Bytes at the start of `cbuf` that are a unit being sent again.
    replaying: usize,
    /// Retries of the current unit (bounded, so a failing statement cannot loop).
    unit_retries: u8,
    /// The next lease goes to the leader (a follower refused the unit as a write).
    force_leader: bool,
    /// Nodes not to use for the next lease (they just failed the unit).
    exclude: Vec<usize>,
    /// The client's unnamed statement (its last unnamed Parse, whole), which PostgreSQL keeps
    /// across Syncs until the next unnamed Parse or simple Query.
    unnamed_parse: BytesMut,
    /// The leased connection holds the client's unnamed statement.
    unnamed_here: bool,
    /// The held connection's settings must be brought back to the client's before its next
    /// unit (a RESET of a startup setting went to the server's own default).
    resync_due: bool,
    /// This session, among all sessions since start (whose state a server connection holds).
    id: u64,
    /// (node, server pid) of the connection of this client's last writing unit on the leader:
    /// where its `nextval` state is, for a later `currval`/`lastval`.
    sequence_home: Option<(usize, u32)>,
    /// (node, server pid) of the connection of this client's last unit: taken again when idle,
    /// so clients tend to keep their own backends (less mixing of backend-local state).
    last_conn: Option<(usize, u32)>,
    /// The unit being leased calls `currval`/`lastval`.
    sequence_unit: bool,
    /// The unit being leased reads node- or backend-local views (pg_prepared_statements, ...).
    node_local_unit: bool,
    /// The leased connection may hold another client's `nextval` state, which that unit must not see.
    discard_sequences: bool,
}

/// Numbers sessions (never reused, unlike cancel keys).
static NEXT_SESSION_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Runs a logged-in client to the end of its session.
pub async fn run(stream: TcpStream, login: ClientLogin, shared: &Shared) -> Result<(), ProxyError> {
    let (client_rd, client_wr) = stream.into_split();
    let mut session = Session {
        key: shared.cancels.register(),
        mode: shared.config.proxy.pool_mode,
        client_rd,
        client_wr,
        // Small to start: idle clients should cost little; reads reserve room as they go.
        cbuf: BytesMut::with_capacity(1024),
        to_client: BytesMut::new(),
        to_server: BytesMut::new(),
        server: None,
        pools: vec![None; shared.config.nodes.len()],
        inflight: Inflight::default(),
        statements: ClientStatements::default(),
        sql_statements: ClientSqlStatements::default(),
        proxy_statements: ProxyStatements::default(),
        sql_prepares: Vec::new(),
        settings: ClientSettings::default(),
        pins: Pins::default(),
        unsynced: false,
        tx_status: TxStatus::Idle,
        discard_until_sync: false,
        closing: false,
        proxy: ProxySettings::default(),
        floor: Floor::new(shared.config.consistency.level, shared.config.consistency.max_staleness),
        unit_wrote: false,
        unit_ddl: false,
        lsn_probe_sent: false,
        unit_executed: false,
        unit_unnamed: false,
        deferred_begin: None,
        hold: None,
        spare_hold: Hold::default(),
        replaying: 0,
        unit_retries: 0,
        force_leader: false,
        exclude: Vec::new(),
        unnamed_parse: BytesMut::new(),
        unnamed_here: false,
        resync_due: false,
        id: NEXT_SESSION_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        sequence_home: None,
        last_conn: None,
        sequence_unit: false,
        node_local_unit: false,
        discard_sequences: false,
        login,
        shared,
    };
    // Login and failure paths are boxed: their state would otherwise sit in every session's future.
    if let Err(e) = Box::pin(session.start()).await {
        Box::pin(super::fail(&mut session.client_wr, &e)).await;
        return Err(e);
    }
    let result = session.pump().await;
    if let Err(e) = &result {
        Box::pin(super::fail(&mut session.client_wr, e)).await;
    }
    session.finish();
    result
}

impl Session<'_> {
    /// Completes the client's login. The first login with a set of startup settings leases a
    /// leader connection (which proves the database and role work), applies the settings there,
    /// and passes on the ParameterStatus values the server reports. In transaction mode later
    /// logins with the same settings are answered from those values without a server, so a busy
    /// leader pool does not keep clients from logging in; their settings reach each server
    /// connection with their first unit of work, like any SET.
    async fn start(&mut self) -> Result<(), ProxyError> {
        let mut startup = Settings::default();
        let mut server_startup = Vec::new();
        for (name, value) in startup_settings(&self.login.params) {
            if name.to_ascii_lowercase().starts_with("pgcausal.") {
                proxy_settings::apply_setting(&name, Some(&value), &mut self.proxy, &mut self.floor)
                    .map_err(|(_, message)| ProxyError::Protocol(format!("invalid startup option: {message}")))?;
            } else {
                startup.set_text(&name, &value);
                server_startup.push((name, value));
            }
        }
        let mut out = BytesMut::new();
        if let Some(params) = self.remembered_login(&server_startup) {
            self.settings = ClientSettings::from_startup(startup);
            put_login_ok(&mut out, &params, self.key.pid, self.key.secret);
            self.client_wr.write_all(&out).await?;
            return Ok(());
        }
        self.acquire(Want::Leader).await?;
        self.hold = None;
        let leased = self.server.as_mut().expect("just acquired");
        let conn = &mut *leased.lease;
        // Applied here rather than injected, so the ParameterStatus the client sees reflect them.
        if let Some(sql) = startup.sync_sql(&conn.settings) {
            conn.run(&sql).await?;
            conn.settings = startup.clone();
        }
        if let Some(pool) = &self.pools[leased.node] {
            pool.remember_login_params(server_startup, &conn.params);
        }
        self.settings = ClientSettings::from_startup(startup);
        put_login_ok(&mut out, &conn.params, self.key.pid, self.key.secret);
        self.client_wr.write_all(&out).await?;
        self.maybe_release();
        Ok(())
    }

    /// What an earlier login with these startup settings was told by the current leader's pool
    /// (transaction mode only: session mode keeps the leased connection anyway).
    fn remembered_login(&mut self, startup: &[(String, String)]) -> Option<crate::backend::pool::LoginParams> {
        if self.mode != PoolMode::Transaction {
            return None;
        }
        let leader = self.shared.topology.snapshot().leader?;
        self.node_pool(leader).login_params(startup)
    }

    async fn pump(&mut self) -> Result<(), ProxyError> {
        loop {
            self.process_client().await?;
            self.write_through_to_server()?;
            if self.unit_ddl {
                self.check_temp_objects().await?; // an async call only after units that may need it
            }
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
        if self.cbuf.capacity() - self.cbuf.len() < 512 {
            self.cbuf.reserve(8 * 1024);
        }
        let want_server = self.to_client.len() < HIGH_WATER;
        let (client_rd, client_wr) = (&mut self.client_rd, &mut self.client_wr);
        let (cbuf, to_client, to_server) = (&mut self.cbuf, &mut self.to_client, &mut self.to_server);
        let Some(leased) = self.server.as_mut() else {
            // Idle between units: give back what a large result or COPY made the buffers grow to.
            shrink_if_idle(cbuf, 1024);
            shrink_if_idle(to_server, 0);
            shrink_if_idle(to_client, 0);
            return tokio::select! {
                biased; // fixed order, no random draw per wait: output first keeps buffers short
                r = client_wr.write_buf(to_client), if !to_client.is_empty() => r.map(|_| Event::Wrote),
                r = client_rd.read_buf(cbuf), if want_client => r.map(Event::ClientRead),
            }
            .map_err(ProxyError::ClientIo);
        };
        // While the server owes an answer that needs nothing more from the client, and nothing
        // waits to go to the client, the client's socket is not watched: one wakeup-registration
        // less per query. Pipelined input waits in the socket until the answer arrives.
        let want_client = want_client && !(to_client.is_empty() && self.inflight.answer_owed_without_input());
        let conn = &mut *leased.lease;
        if conn.rbuf.capacity() - conn.rbuf.len() < 4096 {
            conn.rbuf.reserve(16 * 1024);
        }
        tokio::select! {
            biased;
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

    /// Sends what was just queued for the server at once when its socket takes it: one syscall,
    /// no wait in `select!` for writability that is almost always there.
    fn write_through_to_server(&mut self) -> Result<(), ProxyError> {
        let Some(leased) = self.server.as_mut() else { return Ok(()) };
        if self.to_server.is_empty() {
            return Ok(());
        }
        match leased.lease.writer.try_write(&self.to_server) {
            Ok(n) => self.to_server.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.server_lost(e)?,
        }
        Ok(())
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
            if let Some(c) = class.as_deref().filter(|c| matches!(tag, fe::QUERY | fe::PARSE) && c.has_proxy_command())
            {
                if !c.is_proxy_command() {
                    // Sent on, PostgreSQL would keep it as a custom setting on a shared connection.
                    self.refuse_message(tag, total, &ProxyError::ProxyCommandNotAlone);
                    continue;
                }
                if tag == fe::QUERY {
                    Box::pin(self.answer_proxy_command(c, true)).await;
                    self.consume(total);
                    continue;
                }
            }
            let step = self.proxy_statement_step(tag, total, class.as_ref());
            if !matches!(step, Step::Pass) {
                self.take_proxy_step(step, total).await;
                continue;
            }
            if self.resync_due && self.server_is_clean() {
                self.resync_due = false;
                if let Err(e) = self.prepare_server_if_needed().await {
                    self.refuse_message(tag, total, &e);
                    continue;
                }
            }
            if self.server.is_none() {
                let msg = &self.cbuf[..total];
                let schema = self.shared.ddl.generation();
                if answerable_without_server(tag, msg) {
                    self.discard_until_sync = false;
                    self.unsynced = false;
                    let result = answer_without_server(
                        tag,
                        msg,
                        &mut self.statements,
                        &mut self.inflight,
                        &mut self.to_client,
                        self.tx_status,
                        schema,
                    );
                    self.consume(total);
                    self.refused(result?);
                    continue;
                }
                if self.answer_transaction_control(tag, total, class.as_deref()) {
                    self.consume(total);
                    continue;
                }
                let want = self.want(class.as_deref());
                self.sequence_unit = class.as_deref().is_some_and(|c| c.sequence_state);
                self.node_local_unit = class.as_deref().is_some_and(|c| c.reason == crate::route::Reason::NodeLocal);
                if let Err(e) = self.acquire(want).await {
                    self.refuse_message(tag, total, &e);
                    continue;
                }
                if let Err(e) = self.prepare_server_if_needed().await {
                    self.refuse_message(tag, total, &e);
                    continue;
                }
                self.send_deferred_begin();
            } else if self.must_wait_for_another_node(class.as_deref()) {
                break;
            }
            self.discard_until_sync = false;
            self.account(tag);
            // Session state changes when SQL runs: a Query, an unnamed Parse (bound right away),
            // or the Bind of a named statement (a named Parse alone runs nothing).
            let named = self.cbuf.get(5).is_some_and(|&b| b != 0);
            let observe = match tag {
                fe::QUERY => class.as_deref(),
                fe::PARSE if !named => class.as_deref(),
                fe::BIND
                    if self.cbuf[5..total]
                        .iter()
                        .position(|&b| b == 0)
                        .is_some_and(|p| self.cbuf.get(6 + p) != Some(&0)) =>
                {
                    class.as_deref()
                }
                _ => None,
            };
            if let Some(c) = &class {
                self.unit_wrote |= c.writes;
                self.unit_ddl |= may_touch_temp_objects(c);
            }
            // Recorded once the message has gone out: the DDL statement itself is not affected.
            let ddl = observe.as_ref().filter(|c| is_ddl(c)).and_then(|_| self.ddl_sql(tag, total));
            if let Some(c) = observe.as_ref().filter(|_| tag != fe::BIND) {
                self.observe_sql(c);
            }
            if tag == fe::FLUSH {
                // The client now waits for what was answered so far: nothing may be held back.
                self.release_hold();
            }
            if tag == fe::QUERY && !self.plan_sql_prepare(total, class.as_deref()).await {
                self.consume(total);
                continue;
            }
            self.track_unnamed(tag, total);
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
                schema: self.shared.ddl.generation(),
                ddl: &self.shared.ddl,
            };
            let result = outbound.message(tag, &self.cbuf[..total]);
            if let Some(ddl) = ddl {
                self.shared.ddl.record(&String::from_utf8_lossy(&ddl));
            }
            if let Some(c) = observe.as_ref().filter(|_| tag == fe::BIND) {
                // After the Bind went out: a statement like DISCARD ALL may drop the client's statements.
                self.observe_sql(c);
            }
            self.consume(total);
            self.refused(result?);
        }
        Ok(())
    }

    /// A message the proxy refused like PostgreSQL would: its error, then skip to Sync.
    fn refused(&mut self, result: Result<(), Refused>) {
        if let Err(Refused(error)) = result {
            crate::metrics::error(b"42", "proxy");
            self.push_reply(error);
            self.discard_until_sync = true;
        }
    }

    /// Per-message bookkeeping: whether the server must be kept until a Sync, and query counts.
    fn account(&mut self, tag: u8) {
        let node = self.server.as_ref().map_or(0, |l| l.node);
        match tag {
            fe::SYNC => self.unsynced = false,
            fe::PARSE => {
                self.unsynced = true;
                self.unit_unnamed |= self.cbuf.get(5) == Some(&0);
            }
            fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::FLUSH => self.unsynced = true,
            fe::EXECUTE => {
                self.unsynced = true;
                self.unit_executed = true;
                self.shared.pools.nodes[node].metrics.queries.increment(1);
            }
            fe::QUERY | fe::FUNCTION_CALL => {
                self.unit_executed = true;
                self.shared.pools.nodes[node].metrics.queries.increment(1);
            }
            _ => {}
        }
    }

    /// Answers a Sync (or a failed Query) with ReadyForQuery, after whatever is still in flight.
    fn answer_sync(&mut self) {
        let ready = Bytes::copy_from_slice(&messages::ready_for_query(self.tx_status));
        self.push_reply(ready);
    }

    /// Queues the proxy's own answer, in order with what is in flight. A held read is let go
    /// first: re-running it elsewhere would drop this answer along with its own.
    fn push_reply(&mut self, reply: Bytes) {
        self.release_hold();
        self.inflight.push(Request::Reply(reply), &mut self.to_client);
    }

    /// Refuses one client message with an error, as a server would: a Query (or Sync, or
    /// FunctionCall) is then done; an extended-protocol message skips the rest up to Sync.
    fn refuse_message(&mut self, tag: u8, total: usize, e: &ProxyError) {
        self.consume(total);
        self.refuse(e);
        if matches!(tag, fe::QUERY | fe::SYNC | fe::FUNCTION_CALL) {
            self.answer_sync();
        } else {
            self.discard_until_sync = true;
        }
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
                // Pinned state (LISTEN, temp tables, locks) must not reach the next client.
                leased.lease.needs_reset = self.mode == PoolMode::Session || self.pins.is_pinned();
            } else {
                leased.lease.discard();
            }
        }
    }
}

/// Buffers above this size are released when empty and idle (each client keeps little).
const KEEP_IDLE: usize = 64 * 1024;

fn shrink_if_idle(buf: &mut BytesMut, initial: usize) {
    if buf.is_empty() && buf.capacity() > KEEP_IDLE {
        *buf = BytesMut::with_capacity(initial);
    }
}

/// DDL may change the types and row shapes prepared statements were made with.
fn is_ddl(c: &Classification) -> bool {
    use crate::route::Keyword;
    matches!(c.keyword, Keyword::Create | Keyword::Alter | Keyword::Drop)
}

/// Statements that may create or drop temporary objects in forms parsing does not follow
/// (CREATE TEMP ... AS in a transaction, pg_temp.name, DO blocks, functions, unparsed text).
fn may_touch_temp_objects(c: &Classification) -> bool {
    use crate::route::{Keyword, Reason};
    is_ddl(c)
        || matches!(c.keyword, Keyword::Do | Keyword::Call | Keyword::Discard)
        || matches!(c.reason, Reason::Unparsed | Reason::UnparsedRead)
        || c.statement_count > 1
}

/// SQL text for classification: borrowed when it is UTF-8 (the usual case), lossy otherwise.
fn sql_text(sql: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(sql) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(sql),
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
    use crate::lexical::starts_with_word;

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
    }

    #[test]
    fn idle_buffers_give_back_what_a_large_result_grew() {
        let mut big = BytesMut::with_capacity(1 << 20);
        shrink_if_idle(&mut big, 1024);
        assert!(big.capacity() < KEEP_IDLE);
        let mut busy = BytesMut::with_capacity(1 << 20);
        busy.extend_from_slice(b"x");
        shrink_if_idle(&mut busy, 1024);
        assert!(busy.capacity() >= 1 << 20, "a buffer with bytes in it is kept");
        assert!(!starts_with_word(b"deallocated", b"deallocate"));
    }
}
