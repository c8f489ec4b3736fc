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
use super::startup::{put_login_ok, ClientLogin};
use super::state::{ClientSettings, Pins};
use crate::backend::settings::Settings;
use crate::backend::statements::ServerStatements;
use crate::backend::{Lease, Pool};
use crate::config::PoolMode;
use crate::error::ProxyError;
use crate::protocol::framing::{self, BackendScanner, ServerMessages, Verdict};
use crate::protocol::{fe, messages};
use crate::proxy::Shared;
use crate::route::SessionEffect;
use bytes::{Buf, Bytes, BytesMut};
use deadpool::managed::{Object, PoolError};
use std::io;
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
    scanner: BackendScanner,
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
        settings: ClientSettings::default(),
        pins: Pins::default(),
        unsynced: false,
        tx_status: b'I',
        discard_until_sync: false,
        closing: false,
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
        self.acquire().await?;
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
            self.maybe_release();
            if self.closing {
                return Ok(());
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

    /// Frames complete client messages and queues them for the server, leasing one if needed.
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
                self.cbuf.advance(total);
                continue;
            }
            let msg = &self.cbuf[..total];
            if self.server.is_none() && answerable_without_server(tag, msg) {
                self.discard_until_sync = false;
                self.unsynced = false;
                let result =
                    answer_without_server(tag, msg, &mut self.statements, &mut self.inflight, &mut self.to_client);
                self.cbuf.advance(total);
                self.refused(result?);
                continue;
            }
            if self.server.is_none() {
                let acquired = self.acquire().await;
                if acquired.is_ok() {
                    self.sync_settings();
                }
                if let Err(e) = acquired {
                    self.cbuf.advance(total);
                    self.refuse(&e);
                    if matches!(tag, fe::QUERY | fe::SYNC | fe::FUNCTION_CALL) {
                        self.answer_sync();
                    } else {
                        self.discard_until_sync = true;
                    }
                    continue;
                }
            }
            self.discard_until_sync = false;
            self.account(tag);
            if matches!(tag, fe::QUERY | fe::PARSE) {
                self.observe_sql(tag, total);
            }
            let leased = self.server.as_mut().expect("leased above");
            let mut outbound = Outbound {
                to_server: &mut self.to_server,
                to_client: &mut self.to_client,
                inflight: &mut self.inflight,
                server: &mut leased.lease.statements,
                client: &mut self.statements,
            };
            let result = outbound.message(tag, &self.cbuf[..total]);
            self.cbuf.advance(total);
            self.refused(result?);
        }
        Ok(())
    }

    /// A message the proxy refused like PostgreSQL would: its error, then skip to Sync.
    fn refused(&mut self, result: Result<(), Refused>) {
        if let Err(Refused(error)) = result {
            crate::metrics::error(b"42", "proxy");
            self.inflight.push(Request::Reply(error), &mut self.to_client);
            self.discard_until_sync = true;
        }
    }

    /// Classifies the SQL of a Query or Parse and tracks the session state it changes.
    fn observe_sql(&mut self, tag: u8, total: usize) {
        let body = &self.cbuf[5..total];
        let sql = match tag {
            fe::PARSE => messages::read_cstr(body).and_then(|(_, rest)| messages::read_cstr(rest)).map(|(q, _)| q),
            _ => messages::read_cstr(body).map(|(q, _)| q),
        };
        let Some(sql) = sql else { return };
        let classification = self.shared.classifier.classify(&String::from_utf8_lossy(sql));
        if !classification.session.is_empty() {
            self.settings.apply(&classification.session);
        }
        if !classification.pins.is_empty() || !classification.unpins.is_empty() {
            for kind in self.pins.apply(&classification) {
                metrics::counter!(crate::metrics::SESSION_PINS, "kind" => kind).increment(1);
            }
        }
        // DISCARD ALL and DEALLOCATE drop the server's statements, ours included.
        if classification.session.contains(&SessionEffect::DiscardAll) || starts_with_word(sql, b"deallocate") {
            if let Some(leased) = self.server.as_mut() {
                leased.lease.statements.clear();
            }
            if classification.session.contains(&SessionEffect::DiscardAll) {
                self.statements.clear();
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
        };
        let was_empty = self.to_client.is_empty();
        let n = leased.scanner.scan(&conn.rbuf, &mut self.to_client, &mut sink);
        conn.rbuf.advance(n);
        // Write straight through while the client keeps up: one syscall, no select round.
        if was_empty && !self.to_client.is_empty() {
            match self.client_wr.try_write(&self.to_client) {
                Ok(w) => self.to_client.advance(w),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ProxyError::ClientIo(e)),
            }
        }
        Ok(())
    }

    /// Leases a connection to the leader (routing comes later), waiting a bounded time.
    async fn acquire(&mut self) -> Result<(), ProxyError> {
        let shared = self.shared;
        let node = shared.topology.leader(shared.config.proxy.leader_wait_timeout).await.ok_or_else(|| {
            ProxyError::NoLeader(format!("none of {} nodes is an up primary", shared.config.nodes.len()))
        })?;
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
        self.key.target.set(node, lease.pid, lease.secret);
        self.server = Some(Leased { lease, node, scanner: BackendScanner::default() });
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
    fn maybe_release(&mut self) {
        if self.mode == PoolMode::Transaction && self.server_is_clean() && !self.pins.is_pinned() {
            self.key.target.clear();
            self.server = None;
        }
    }

    /// The server connection failed under us: fail what was pending, keep the client if we can.
    fn server_lost(&mut self, error: io::Error) -> Result<(), ProxyError> {
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
        self.inflight.push(Request::Reply(ready), &mut self.to_client);
    }

    /// Answers with an ErrorResponse (severity ERROR) for a failure the session survives.
    fn refuse(&mut self, e: &ProxyError) {
        crate::metrics::error(e.sqlstate().as_bytes(), "proxy");
        let error = messages::error_response("ERROR", e.sqlstate(), &e.to_string()).freeze();
        self.inflight.push(Request::Reply(error), &mut self.to_client);
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
}

impl ServerMessages for ServerSide<'_> {
    fn decide(&mut self, tag: u8, msg: &[u8]) -> Verdict {
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
                crate::metrics::error(&messages::sqlstate_of(&msg[5..]), "server");
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
