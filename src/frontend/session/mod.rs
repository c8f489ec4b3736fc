//! One client session after login: reads client messages, leases a server connection when work
//! arrives, and pumps bytes both ways (rows are never decoded) until the client leaves.
//!
//! The path of a query: client socket → `cbuf` → `process_client` (frame, account, lease) →
//! `to_server` → server socket → server `rbuf` → `process_server` (scan headers, count
//! ReadyForQuery) → `to_client` → client socket. Both directions are pumped in one `select!`, so
//! a client that pipelines more than the socket buffers hold can never deadlock the server.

mod login;
mod output;
mod restore;
mod unit;

#[cfg(feature = "fuzzing")]
pub(crate) use output::scan_server_output;

use unit::Want;

use super::cancel::CancelKey;
use super::client_state::{ClientSettings, ClientState};
use super::client_stream::ClientStream;
use super::clients::{signal, wait as signal_wait, ClientEntry, ClientStatus};
use super::containment::contained;
use super::inflight::{Inflight, Request};
use super::proxy_settings::{self, ProxySettings};
use super::proxy_statements::Step;
use super::requests::{answer_without_server, answerable_without_server, Outbound, Refused};
use super::sql_prepared::{self, Plan, SqlPrepare};
use super::startup::ClientLogin;
use crate::backend::settings::Settings;
use crate::backend::statements::ServerStatements;
use crate::backend::BackendError;
use crate::backend::{Lease, LeaseError, Pool};
use crate::config::{Config, LeaderReads, PoolMode};
use crate::consistency::floor::Outstanding;
use crate::consistency::Floor;
use crate::error::ProxyError;
use crate::frontend::shared::Shared;
use crate::protocol::framing::{self, BackendScanner, ServerMessages, Verdict};
use crate::protocol::messages::{self, Severity};
use crate::protocol::{be, fe, target, TxStatus};
use crate::route::{Classification, SessionEffect, TxControl};
use bytes::{Buf, Bytes, BytesMut};
use std::io;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Why a server connection ended when the server closed it (its backend exited or was killed).
const SERVER_CLOSED: &str = "the server closed the connection";

/// Stop reading a side while this much is queued for the other.
const HIGH_WATER: usize = 256 * 1024;

/// The server connection a session holds, with where it is in the server's output and what
/// this lease of it has done: created at lease, dropped when the connection goes back or is closed.
struct Leased {
    lease: Lease,
    node: usize,
    /// Leased to serve reads on a follower (the leader when it serves reads counts as not).
    follower: bool,
    /// The node's incarnation when leased (a restart in between voids what was read there).
    incarnation: i64,
    scanner: BackendScanner,
    _outstanding: Outstanding,
    /// Something was executed on it (the work can no longer move to another node).
    executed: bool,
    /// An unnamed statement was parsed on it (it lives only on this connection).
    unnamed_parsed: bool,
    /// It holds the client's unnamed statement.
    unnamed_here: bool,
    /// An LSN query was injected after a write (`consistency.write_lsn = same_connection`).
    lsn_probe_sent: bool,
    /// It ran DDL, DO/CALL or an unparsed statement: it may hold or have dropped temporary
    /// objects, which the server is asked about once it is idle.
    temp_check_due: bool,
    /// It may hold another client's `nextval` state, which this unit must not see.
    foreign_sequences: bool,
    /// The unit reads node- or backend-local views: other clients' SQL-level statements go first.
    drop_foreign_statements: bool,
    /// Its settings must be brought back to the client's before the next unit (held connections:
    /// a RESET of a startup setting went to the server's own default).
    resync_due: bool,
    /// SQL-level PREPAREs sent on it whose answers are still to come (client's own: true),
    /// forgotten if they fail.
    sql_prepares: Vec<(String, bool)>,
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

/// One unit of work: a transaction, or a statement outside one. It lives from the unit's first
/// message (a deferred BEGIN included) through any re-runs on other nodes until the server's
/// ReadyForQuery ends it (or the connection is lost); `end_unit` is the one place it is reset.
#[derive(Default)]
struct Unit {
    /// A statement that writes ran (its commit raises the floor).
    wrote: bool,
    /// A plain BEGIN answered by the proxy, sent with the first statement that picks the node.
    deferred_begin: Option<Bytes>,
    /// The answer of a read on a follower, held back until it can no longer need a re-run.
    hold: Option<Hold>,
    /// Re-runs so far (bounded, so a failing statement cannot loop).
    retries: u8,
    /// The next lease goes to the leader (a follower refused the unit as a write).
    force_leader: bool,
    /// Nodes not to use for the next lease (they just failed the unit).
    exclude: Vec<usize>,
    /// When it first leased a connection (for the unit latency histogram).
    started: Option<Instant>,
}

/// This client's pools (its database and user) on each node, and the connections it prefers.
struct ClientPools {
    /// Looked up once per node, on first use.
    by_node: Vec<Option<Pool>>,
    affinity: Affinity,
}

/// Which of the pools' connections this client prefers: (node, server pid).
#[derive(Default)]
struct Affinity {
    /// The connection of the last writing unit on the leader: where its `nextval` state is,
    /// for a later `currval`/`lastval`.
    sequences: Option<(usize, u32)>,
    /// The connection of the last unit: taken again when idle, so clients tend to keep their
    /// own backends (less mixing of backend-local state).
    last: Option<(usize, u32)>,
}

/// What a unit needs from the connection it leases, beyond the kind of node.
#[derive(Default, Clone, Copy)]
struct Needs {
    /// It calls `currval`/`lastval`: the connection where the client's `nextval` ran.
    sequence_state: bool,
    /// It reads node- or backend-local views (pg_prepared_statements, ...).
    node_local: bool,
}

enum Event {
    ClientRead(usize),
    ServerRead(usize),
    /// Bytes went to the client.
    ClientWrote(usize),
    /// Bytes went to the server.
    Wrote,
    ServerFailed(io::Error),
    /// KILL, a shutdown at an idle point, an idle timeout, or SHRINK.
    Signalled,
    /// A shrunk session's client sent something: a buffer is needed again.
    ClientReadable,
}

/// What processing a client message leaves the loop to do.
enum Flow {
    /// Go on with the next message.
    Next,
    /// Stop reading messages until the server makes progress (the unit must end first).
    Pause,
}

pub struct Session<'a> {
    shared: &'a Shared,
    /// The configuration as of login (a RELOAD applies to sessions that start after it).
    config: Arc<Config>,
    /// The login and the client's socket, held by the client task (once, not moved in here:
    /// a moved-from value keeps its room in an async fn's state).
    login: &'a ClientLogin,
    key: CancelKey,
    /// Its entry among connected clients (its id numbers it among all sessions since start,
    /// whose state a server connection holds), and the signals it listens for.
    entry: Arc<ClientEntry>,
    client: &'a mut ClientStream,
    cbuf: BytesMut,
    /// Bytes at the start of `cbuf` that are a unit being sent again.
    replaying: usize,
    to_client: BytesMut,
    to_server: BytesMut,
    server: Option<Leased>,
    pools: ClientPools,
    /// Requests sent (or answered by the proxy) whose answers are still to come, in order.
    inflight: Inflight,
    /// What a server would keep for this client: settings, pins, prepared statements.
    state: ClientState,
    /// Extended-protocol messages went out after the last Sync: the server must be kept.
    unsynced: bool,
    /// Transaction status from the last ReadyForQuery.
    tx_status: TxStatus,
    /// After the proxy failed a message of an extended batch, skip to Sync as a server would.
    discard_until_sync: bool,
    closing: bool,
    /// The wait word last published for the idle watch, and how many waits there were.
    waiting: (u64, u64),
    /// The proxy's own settings (`SET pgcausal.route = ...`).
    proxy: ProxySettings,
    /// The session's consistency level and LSN floor.
    floor: Floor,
    unit: Unit,
    /// The buffers of the last hold, kept for the next (no allocation per read unit).
    spare_hold: Hold,
    /// Bytes from and to the client not yet added to the counters.
    traffic: crate::metrics::ClientTraffic,
}

/// Runs a logged-in client to the end of its session.
pub async fn run(
    client: &mut ClientStream,
    login: &ClientLogin,
    shared: &Shared,
    entry: Arc<ClientEntry>,
) -> Result<(), ProxyError> {
    let config = shared.config();
    let mut session = Session {
        key: shared.cancels.register(),
        entry,
        client,
        // Empty to start, as if shrunk: a client that logs in and waits holds no buffer; its
        // first message brings one.
        cbuf: BytesMut::new(),
        replaying: 0,
        to_client: BytesMut::new(),
        to_server: BytesMut::new(),
        server: None,
        pools: ClientPools { by_node: vec![None; config.nodes.len()], affinity: Affinity::default() },
        inflight: Inflight::default(),
        state: ClientState::default(),
        unsynced: false,
        tx_status: TxStatus::Idle,
        discard_until_sync: false,
        closing: false,
        waiting: (signal_wait::BUSY, 0),
        proxy: ProxySettings::default(),
        floor: Floor::new(config.consistency.level, config.consistency.max_staleness),
        unit: Unit::default(),
        spare_hold: Hold::default(),
        traffic: Default::default(),
        login,
        shared,
        config,
    };
    // Login and failure paths are boxed: their state would otherwise sit in every session's future.
    let started = contained("session start", Box::pin(session.start())).await;
    if let Err(e) = started.unwrap_or_else(|_| session.after_panic()) {
        Box::pin(super::fail(&mut session.client.writer, &e)).await;
        return Err(e);
    }
    let result = contained("session", session.pump()).await.unwrap_or_else(|_| session.after_panic());
    if let Err(e) = &result {
        Box::pin(session.fail(e)).await;
    }
    session.finish();
    session.traffic.flush();
    result
}

impl Session<'_> {
    async fn pump(&mut self) -> Result<(), ProxyError> {
        loop {
            self.process_client().await?;
            self.write_through_to_server()?;
            if self.server.as_ref().is_some_and(|l| l.temp_check_due) {
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
                Event::ServerRead(0) => {
                    self.server_lost(io::Error::new(io::ErrorKind::UnexpectedEof, SERVER_CLOSED))?
                }
                Event::ServerFailed(e) => self.server_lost(e)?,
                Event::ServerRead(_) => self.process_server()?,
                Event::Signalled
                    if self.entry.signals() & (signal::KILL | signal::SHUTDOWN | signal::IDLE_TIMEOUT) == 0 =>
                {
                    self.shrink() // SHRINK alone
                }
                Event::ClientReadable => self.cbuf.reserve(1024),
                Event::Signalled if self.entry.signals() & signal::IDLE_TIMEOUT != 0 => {
                    return Err(match self.waiting.0 {
                        signal_wait::IDLE_IN_TRANSACTION => ProxyError::IdleInTransactionTimeout,
                        _ => ProxyError::IdleSessionTimeout,
                    })
                }
                Event::Signalled => return Err(ProxyError::AdminShutdown),
                Event::ClientRead(n) => {
                    self.traffic.received += n as u64;
                    self.publish_wait(signal_wait::BUSY);
                }
                Event::ClientWrote(n) => self.traffic.sent += n as u64,
                Event::Wrote => {}
            }
        }
    }

    /// Tells the idle watch what the session now waits for (a store only when it changes).
    fn publish_wait(&mut self, state: u64) {
        if self.waiting.0 != state {
            self.waiting.1 += u64::from(state != signal_wait::BUSY);
            self.waiting.0 = state;
            self.entry.set_waiting(signal_wait::encode(state, self.waiting.1));
        }
    }

    /// Waits for the first socket that can make progress in either direction.
    async fn next_event(&mut self) -> Result<Event, ProxyError> {
        if self.to_client.is_empty() && self.to_server.is_empty() && self.inflight.is_empty() {
            // Nothing owed either way: the session waits for its client.
            let state = match self.tx_status {
                TxStatus::Idle => signal_wait::IDLE,
                _ => signal_wait::IDLE_IN_TRANSACTION,
            };
            self.publish_wait(state);
        }
        // A shutdown closes the session at an idle point: between units, or a held connection
        // (session mode, pins) with nothing in flight.
        let idle_point = self.server.is_none()
            || ((self.config.proxy.pool_mode == PoolMode::Session || self.state.pins.is_pinned())
                && self.server_is_clean());
        let signals = signal::KILL | signal::IDLE_TIMEOUT | if idle_point { signal::SHUTDOWN } else { 0 };
        let want_client = self.to_server.len() < HIGH_WATER;
        // Shrunk (idle a while, see `shrink`): no buffer until the client sends again.
        let shrunk = self.cbuf.capacity() == 0 && self.server.is_none();
        if !shrunk && self.cbuf.capacity() - self.cbuf.len() < 512 {
            self.cbuf.reserve(8 * 1024);
        }
        let want_server = self.to_client.len() < HIGH_WATER;
        let (client_rd, client_wr) = (&mut self.client.reader, &mut self.client.writer);
        let (cbuf, to_client, to_server) = (&mut self.cbuf, &mut self.to_client, &mut self.to_server);
        let entry = &*self.entry;
        let Some(leased) = self.server.as_mut() else {
            // Idle between units: give back what a large result or COPY made the buffers grow to.
            shrink_if_idle(cbuf, 1024);
            shrink_if_idle(to_server, 0);
            shrink_if_idle(to_client, 0);
            if shrunk {
                return tokio::select! {
                    biased;
                    r = client_wr.write_buf(to_client), if !to_client.is_empty() => r.map(Event::ClientWrote),
                    r = client_rd.readable(), if want_client => r.map(|()| Event::ClientReadable),
                    _ = entry.signalled(signals) => Ok(Event::Signalled),
                }
                .map_err(ProxyError::ClientIo);
            }
            let signals = signals | signal::SHRINK;
            return tokio::select! {
                biased; // fixed order, no random draw per wait: output first keeps buffers short
                r = client_wr.write_buf(to_client), if !to_client.is_empty() => r.map(Event::ClientWrote),
                r = client_rd.read_buf(cbuf), if want_client => r.map(Event::ClientRead),
                _ = entry.signalled(signals) => Ok(Event::Signalled),
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
            r = client_wr.write_buf(to_client), if !to_client.is_empty() => Ok(r.map(Event::ClientWrote)?),
            r = conn.writer.write_buf(to_server), if !to_server.is_empty() => {
                Ok(r.map_or_else(Event::ServerFailed, |_| Event::Wrote))
            }
            r = conn.reader.read_buf(&mut conn.rbuf), if want_server => {
                Ok(r.map_or_else(Event::ServerFailed, Event::ServerRead))
            }
            r = client_rd.read_buf(cbuf), if want_client => Ok(r.map(Event::ClientRead)?),
            // Watched while the client may send: a KILL during a statement takes effect once its
            // answer is in (no waker registration per query while the server works).
            _ = entry.signalled(signals), if want_client => Ok(Event::Signalled),
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
        let max = self.config.proxy.max_message_size;
        matches!(framing::peek_header(&self.cbuf, max), Ok(Some((_, total))) if self.cbuf.len() >= total)
    }

    /// Consumes a processed message from `cbuf`.
    fn consume(&mut self, total: usize) {
        self.cbuf.advance(total);
        self.replaying = self.replaying.saturating_sub(total);
    }

    /// Frames complete client messages, routes each unit of work to a node, and queues the
    /// messages for its server connection: each message is answered by the proxy, or finds its
    /// server connection and goes to it.
    async fn process_client(&mut self) -> Result<(), ProxyError> {
        let max = self.config.proxy.max_message_size;
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
            if !fe::known_after_login(tag) {
                return Err(ProxyError::UnknownMessageType(tag));
            }
            if self.discard_until_sync && tag != fe::SYNC {
                self.consume(total);
                continue;
            }
            let class = self.classify_message(tag, total);
            // The async steps are entered only when they may have work: most messages take the
            // synchronous path, with no future built for them.
            let maybe_proxy =
                class.as_ref().is_some_and(|c| c.has_proxy_command()) || !self.state.proxy_statements.is_empty();
            if maybe_proxy && self.answered_by_proxy(tag, total, class.as_ref()).await {
                continue;
            }
            if self.server.is_none() && self.answered_without_server(tag, total, class.as_deref())? {
                continue;
            }
            let flow = match self.server.as_ref() {
                Some(leased) if !leased.resync_due => Ok(self.flow_on_held_server(class.as_deref())),
                _ => self.find_server(class.as_deref()).await,
            };
            match flow {
                Ok(Flow::Next) => {}
                Ok(Flow::Pause) => break,
                Err(e) => {
                    self.refuse_message(tag, total, &e);
                    continue;
                }
            }
            let ddl = self.forward_first(tag, total, class.as_deref());
            if tag == fe::QUERY && names_sql_statements(class.as_deref()) && !self.plan_sql_prepare(total).await {
                self.consume(total);
                continue;
            }
            self.forward_rest(tag, total, class.as_deref(), ddl)?;
        }
        Ok(())
    }

    /// A message for the unit on the held connection: on it, or pause until the unit ends.
    fn flow_on_held_server(&mut self, class: Option<&Classification>) -> Flow {
        if self.must_wait_for_another_node(class) {
            Flow::Pause
        } else {
            Flow::Next
        }
    }

    /// `pgcausal.*` commands, simple or prepared, which the proxy answers itself (consumed).
    async fn answered_by_proxy(&mut self, tag: u8, total: usize, class: Option<&Arc<Classification>>) -> bool {
        if let Some(c) = class.filter(|c| matches!(tag, fe::QUERY | fe::PARSE) && c.has_proxy_command()) {
            if !c.is_proxy_command() {
                // Sent on, PostgreSQL would keep it as a custom setting on a shared connection.
                self.refuse_message(tag, total, &ProxyError::ProxyCommandNotAlone);
                return true;
            }
            if tag == fe::QUERY {
                Box::pin(self.answer_proxy_command(c, true)).await;
                self.consume(total);
                return true;
            }
        }
        let step = self.proxy_statement_step(tag, total, class);
        if matches!(step, Step::Pass) {
            return false;
        }
        self.take_proxy_step(step, total).await;
        true
    }

    /// Makes sure the message has its server connection, in the client's state: leases one for
    /// a new unit, or pauses when the unit on the held one must end first.
    async fn find_server(&mut self, class: Option<&Classification>) -> Result<Flow, ProxyError> {
        if self.server.as_ref().is_some_and(|l| l.resync_due) && self.server_is_clean() {
            self.server.as_mut().expect("held").resync_due = false;
            self.prepare_server_if_needed().await?;
        }
        if self.server.is_some() {
            return Ok(self.flow_on_held_server(class));
        }
        let want = self.want(class);
        let needs = Needs {
            sequence_state: class.is_some_and(|c| c.sequence_state),
            node_local: class.is_some_and(|c| c.reason == crate::route::Reason::NodeLocal),
        };
        self.acquire(want, needs).await?;
        if let Err(e) = self.prepare_server_if_needed().await {
            Box::pin(self.prepare_on_another_node(e, want, needs)).await?;
        }
        self.send_deferred_begin();
        Ok(Flow::Next)
    }

    /// Messages answered with no server at all: a Sync or Close with nothing to sync, a plain
    /// BEGIN (deferred), COMMIT/ROLLBACK of a deferred BEGIN. Consumed when true.
    fn answered_without_server(
        &mut self,
        tag: u8,
        total: usize,
        class: Option<&Classification>,
    ) -> Result<bool, ProxyError> {
        let msg = &self.cbuf[..total];
        if answerable_without_server(tag, msg) {
            self.discard_until_sync = false;
            self.unsynced = false;
            let schema = self.shared.ddl.generation();
            let (statements, inflight) = (&mut self.state.statements, &mut self.inflight);
            let result =
                answer_without_server(tag, msg, statements, inflight, &mut self.to_client, self.tx_status, schema);
            self.consume(total);
            self.refused(result?);
            return Ok(true);
        }
        if self.answer_transaction_control(tag, total, class) {
            self.consume(total);
            return Ok(true);
        }
        Ok(false)
    }

    /// Sends one message of the unit to its server connection, tracking the session state it
    /// changes and the requests whose answers are due: first the bookkeeping (it returns the
    /// DDL to record once the message has gone), then, after a SQL-level PREPARE/EXECUTE had
    /// its statements made (`plan_sql_prepare`), `forward_rest`.
    fn forward_first(&mut self, tag: u8, total: usize, class: Option<&Classification>) -> Option<Vec<u8>> {
        self.discard_until_sync = false;
        self.account(tag);
        let observe = self.observed(tag, total, class);
        if let Some(c) = class {
            self.unit.wrote |= c.writes;
            if may_touch_temp_objects(c) {
                self.server.as_mut().expect("leased").temp_check_due = true;
            }
        }
        // Recorded once the message has gone out: the DDL statement itself is not affected.
        let ddl = observe.filter(|c| is_ddl(c)).and_then(|_| self.ddl_sql(tag, total));
        if let Some(c) = observe.filter(|_| tag != fe::BIND) {
            self.observe_sql(c);
        }
        if tag == fe::FLUSH {
            // The client now waits for what was answered so far: nothing may be held back.
            self.release_hold();
        }
        ddl
    }

    /// The message goes to the server (see `forward_first`).
    fn forward_rest(
        &mut self,
        tag: u8,
        total: usize,
        class: Option<&Classification>,
        ddl: Option<Vec<u8>>,
    ) -> Result<(), ProxyError> {
        self.track_unnamed(tag, total);
        if let Some(hold) = self.unit.hold.as_mut() {
            hold.replay.extend_from_slice(&self.cbuf[..total]);
        }
        let to_client = match self.unit.hold.as_mut() {
            Some(h) => &mut h.held,
            None => &mut self.to_client,
        };
        let result = if matches!(tag, fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE) {
            // Messages that name statements: client names become server names.
            let leased = self.server.as_mut().expect("leased above");
            let mut outbound = Outbound {
                to_server: &mut self.to_server,
                to_client,
                inflight: &mut self.inflight,
                server: &mut leased.lease.statements,
                client: &mut self.state.statements,
                replaying: self.replaying > 0,
                schema: self.shared.ddl.generation(),
                ddl: &self.shared.ddl,
            };
            outbound.message(tag, &self.cbuf[..total])
        } else {
            // A Query, Execute, Sync, ...: forwarded as it is, its answer awaited in order.
            self.to_server.extend_from_slice(&self.cbuf[..total]);
            if let Some(request) = Request::of_message(tag) {
                self.inflight.push(request, to_client);
            }
            Ok(Ok(()))
        };
        if let Some(ddl) = ddl {
            self.shared.ddl.record(&String::from_utf8_lossy(&ddl));
        }
        if let Some(c) = self.observed(tag, total, class).filter(|_| tag == fe::BIND) {
            // After the Bind went out: a statement like DISCARD ALL may drop the client's statements.
            self.observe_sql(c);
        }
        self.consume(total);
        self.refused(result?);
        Ok(())
    }

    /// The classification whose session effects this message has: session state changes when
    /// SQL runs, that is a Query, an unnamed Parse (bound right away), or the Bind of a named
    /// statement (a named Parse alone runs nothing).
    fn observed<'c>(&self, tag: u8, total: usize, class: Option<&'c Classification>) -> Option<&'c Classification> {
        let named = self.cbuf.get(5).is_some_and(|&b| b != 0);
        match tag {
            fe::QUERY => class,
            fe::PARSE if !named => class,
            fe::BIND
                if self.cbuf[5..total]
                    .iter()
                    .position(|&b| b == 0)
                    .is_some_and(|p| self.cbuf.get(6 + p) != Some(&0)) =>
            {
                class
            }
            _ => None,
        }
    }

    /// Keeps the client's unnamed statement, and parses it again on a connection that lacks it
    /// before a Bind or Describe names it (psql's `\gdesc` describes it after a Sync).
    pub(super) fn track_unnamed(&mut self, tag: u8, total: usize) {
        let body = &self.cbuf[5..total];
        let leased = self.server.as_mut().expect("leased");
        let unnamed = &mut self.state.unnamed_parse;
        // Bind and Describe look at names only when there is a statement to restore.
        let restorable = !leased.unnamed_here && !unnamed.is_empty();
        let names_unnamed = match tag {
            fe::PARSE if body.first() == Some(&0) => {
                unnamed.clear();
                unnamed.extend_from_slice(&self.cbuf[..total]);
                leased.unnamed_here = true;
                return;
            }
            fe::QUERY => {
                unnamed.clear(); // a simple Query drops the unnamed statement
                leased.unnamed_here = false;
                return;
            }
            fe::BIND if restorable => messages::read_cstr(body).is_some_and(|(_, rest)| rest.first() == Some(&0)),
            fe::DESCRIBE if restorable => body.first() == Some(&target::STATEMENT) && body.get(1) == Some(&0),
            _ => false,
        };
        if names_unnamed {
            self.to_server.extend_from_slice(unnamed);
            let out = match self.unit.hold.as_mut() {
                Some(h) => &mut h.held,
                None => &mut self.to_client,
            };
            self.inflight.push(Request::Parse { hash: None, swallow: true }, out);
            leased.unnamed_here = true;
            leased.unnamed_parsed = true;
            self.unsynced = true;
        }
    }

    /// A message the proxy refused like PostgreSQL would: its error, then skip to Sync.
    fn refused(&mut self, result: Result<(), Refused>) {
        if let Err(refused) = result {
            refused.count();
            self.push_reply(refused.0);
            self.discard_until_sync = true;
        }
    }

    /// Per-message bookkeeping: whether the server must be kept until a Sync, and query counts.
    fn account(&mut self, tag: u8) {
        let leased = self.server.as_mut().expect("accounted on its server");
        let queries = &self.shared.pools.nodes[leased.node].metrics.queries;
        match tag {
            fe::SYNC => self.unsynced = false,
            fe::PARSE => {
                self.unsynced = true;
                leased.unnamed_parsed |= self.cbuf.get(5) == Some(&0);
            }
            fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::FLUSH => self.unsynced = true,
            fe::EXECUTE => {
                self.unsynced = true;
                leased.executed = true;
                queries.increment(1);
            }
            fe::QUERY | fe::FUNCTION_CALL => {
                leased.executed = true;
                queries.increment(1);
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
        e.count();
        self.push_reply(e.error_response(Severity::Error).freeze());
    }

    /// Ends the session with `e`: what is queued for the client goes first (answers that came
    /// before the failure, or the rest of a message begun), then the FATAL.
    async fn fail(&mut self, e: &ProxyError) {
        if !self.to_client.is_empty() && !matches!(e, ProxyError::ClientIo(_)) {
            let flush = self.client.writer.write_all(&self.to_client);
            let _ = crate::control::timeout(std::time::Duration::from_secs(1), flush).await;
        }
        super::fail(&mut self.client.writer, e).await;
    }

    /// After a panic nothing the session holds can be trusted: its server connection is closed
    /// (never pooled) and the client gets the proxy's XX000 error.
    fn after_panic(&mut self) -> Result<(), ProxyError> {
        if let Some(leased) = self.server.take() {
            leased.lease.discard();
        }
        self.to_client.clear(); // it may end in half a message
        Err(ProxyError::Internal)
    }

    /// Idle between transactions for a while (told so by the idle watch): the buffers go back
    /// to the allocator, and come back with the client's next message. Statements, settings
    /// and the floor stay.
    fn shrink(&mut self) {
        self.entry.clear_signals(signal::SHRINK);
        for buf in [&mut self.cbuf, &mut self.to_client, &mut self.to_server] {
            if buf.is_empty() {
                *buf = BytesMut::new();
            }
        }
        self.spare_hold = Hold::default();
        self.inflight.shrink();
    }

    /// Returns a clean server to its pool (reset first in session mode); closes any other.
    fn finish(&mut self) {
        let clean = self.server_is_clean();
        if let Some(mut leased) = self.server.take() {
            self.key.target.clear();
            if clean {
                // Pinned state (LISTEN, temp tables, locks) must not reach the next client.
                leased.lease.needs_reset =
                    self.config.proxy.pool_mode == PoolMode::Session || self.state.pins.is_pinned();
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

/// PREPARE, EXECUTE, DEALLOCATE or EXPLAIN (EXECUTE): SQL-level prepared statements, which
/// follow the client across connections. The first keyword rules the rest out without a look
/// at the text.
fn names_sql_statements(class: Option<&Classification>) -> bool {
    use crate::route::Keyword;
    let keyword = class.map_or(Keyword::None, |c| c.keyword);
    matches!(keyword, Keyword::Prepare | Keyword::Execute | Keyword::Deallocate | Keyword::Explain)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexical::starts_with_word;

    #[test]
    fn statements_start_with_whole_words() {
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
