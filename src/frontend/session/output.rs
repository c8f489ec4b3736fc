//! Server output: request accounting, holding back a retryable read and re-running it, releasing
//! the server connection when its unit is over, and losing it.

use super::*;
use crate::config::WriteLsn;

impl Session<'_> {
    /// Scans what the server sent, tracks requests and ReadyForQuery, and passes answers on.
    pub(super) fn process_server(&mut self) -> Result<(), ProxyError> {
        let leased = self.server.as_mut().expect("reading from a held server");
        let conn = &mut *leased.lease;
        let mut sink = ServerSide {
            inflight: &mut self.inflight,
            statements: &mut conn.statements,
            tx_status: &mut self.tx_status,
            settings: &mut self.state.settings,
            server_settings: &mut conn.settings,
            server_params: &mut conn.params,
            holding: self.unit.hold.is_some(),
            hold_event: None,
            first_error: None,
            transaction_ended: false,
            capture_lsn: leased.lsn_probe_sent,
            captured_lsn: None,
            between_units_ours: self.config.proxy.pool_mode == PoolMode::Transaction
                && !self.state.pins.is_pinned()
                && !self.unsynced,
            closed_between_units: None,
        };
        let out = match self.unit.hold.as_mut() {
            Some(h) => &mut h.held,
            None => &mut self.to_client,
        };
        let was_empty = out.is_empty();
        let n = leased.scanner.scan(&conn.rbuf, out, &mut sink);
        conn.rbuf.advance(n);
        let first_error = sink.first_error;
        let hold_event = sink.hold_event;
        let transaction_ended = sink.transaction_ended;
        let closed_between_units = sink.closed_between_units.take();
        if let Some(lsn) = sink.captured_lsn {
            leased.lsn_probe_sent = false;
            self.floor.write_position(lsn);
        }
        if let Some(code) = first_error.filter(|_| !leased.sql_prepares.is_empty()) {
            self.sql_prepare_failed(&code);
        }
        if self.inflight.is_empty() {
            self.server.as_mut().expect("still held").sql_prepares.clear();
        }
        match hold_event {
            Some(HoldEvent::Retry { leader, code }) if self.unit.retries < 3 => {
                self.retry_unit(leader, &String::from_utf8_lossy(&code));
                return Ok(());
            }
            Some(_) => self.release_hold(),
            None => {}
        }
        if transaction_ended {
            self.client_unit_answered();
        }
        if let Some(message) = closed_between_units {
            self.drop_closed_server(&message);
        }
        // Write straight through while the client keeps up: one syscall, no select round.
        if was_empty && self.unit.hold.is_none() && !self.to_client.is_empty() {
            match self.client.writer.try_write(&self.to_client) {
                Ok(w) => {
                    self.to_client.advance(w);
                    self.traffic.sent += w as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(ProxyError::ClientIo(e)),
            }
        }
        Ok(())
    }

    /// The client's unit is answered (ReadyForQuery, idle): the floor learns where it ran, a
    /// write's position is asked of its own connection, and the unit ends.
    fn client_unit_answered(&mut self) {
        let leased = self.server.as_mut().expect("still held");
        let wrote = self.unit.wrote;
        self.floor.unit_ended(leased.node, leased.follower, leased.incarnation, wrote);
        self.entry.unit_ended(self.floor.level as u8, self.floor.timeline(), self.floor.lsn());
        if let Some(started) = self.unit.started {
            self.shared.pools.nodes[leased.node].metrics.unit_latency(leased.follower).record(started.elapsed());
        }
        self.traffic.flush();
        self.pools.affinity.last = Some((leased.node, leased.lease.pid));
        if wrote && !leased.follower {
            self.pools.affinity.sequences = self.pools.affinity.last;
            crate::consistency::acks::acknowledged();
        }
        let same_connection = self.config.consistency.write_lsn == WriteLsn::SameConnection;
        if wrote && !leased.follower && same_connection && self.floor.level.read_your_writes() {
            // Ask the write's own connection where WAL ends now; it returns to the pool after.
            let _ = postgres_protocol::message::frontend::query(LSN_QUERY, &mut self.to_server);
            self.inflight.push(Request::Query { swallow: true }, &mut self.to_client);
            leased.lsn_probe_sent = true;
        }
        // A held connection (session mode, pins) gets no replay at its next lease: check now.
        let held = self.config.proxy.pool_mode == PoolMode::Session || self.state.pins.is_pinned();
        leased.resync_due = held && leased.lease.settings != *self.state.settings.current();
        self.end_unit();
    }

    /// Ends the unit of work: the one place its state is reset. Output still held back is
    /// passed on first.
    pub(super) fn end_unit(&mut self) {
        self.release_hold();
        self.unit = Unit::default();
    }

    /// Closes the held server connection (never reused) and drops what was queued for it;
    /// returns its node and whether one of its messages was cut off half-way to the client.
    pub(super) fn discard_server(&mut self) -> (usize, bool) {
        let leased = self.server.take().expect("a held server");
        self.key.target.clear();
        self.entry.set_server(None);
        self.entry.set_status(ClientStatus::Idle);
        self.to_server.clear();
        let mid_message = leased.scanner.mid_message();
        leased.lease.discard();
        (leased.node, mid_message)
    }

    /// The server ended a connection whose unit was over (an error after the last
    /// ReadyForQuery, such as FATAL 57P01 from a shutdown): the client is not told, since its
    /// next unit runs on another connection; this one is closed, never reused.
    fn drop_closed_server(&mut self, message: &str) {
        self.release_hold();
        let (node, _) = self.discard_server();
        let node = &self.shared.pools.nodes[node].name;
        tracing::info!(%node, message, "server closed a connection between units");
        // Only the proxy's own LSN query can be pending on it: the client's unit was over.
        self.inflight.clear();
    }

    /// The held read produced its first row or finished: pass everything on.
    pub(super) fn release_hold(&mut self) {
        if let Some(mut hold) = self.unit.hold.take() {
            if self.to_client.is_empty() {
                std::mem::swap(&mut self.to_client, &mut hold.held); // no copy in the usual case
            } else {
                self.to_client.extend_from_slice(&hold.held);
            }
            self.recycle_hold(hold);
        }
    }

    /// Keeps a finished hold's buffers for the next read unit.
    fn recycle_hold(&mut self, mut hold: Hold) {
        hold.held.clear();
        hold.replay.clear();
        self.spare_hold = hold;
    }

    /// Runs the held unit again: on the leader (a follower refused it as a write, which is then
    /// remembered) or on another node (the follower failed). Nothing of it reached the client.
    pub(super) fn retry_unit(&mut self, leader: bool, reason: &str) {
        let hold = self.unit.hold.take().expect("retrying a held unit");
        let (node, _) = self.discard_server(); // mid-unit: never reused
        tracing::debug!(node = %self.shared.pools.nodes[node].name, reason, leader, "re-running a read unit");
        self.inflight.clear();
        self.unsynced = false;
        self.tx_status = TxStatus::Idle;
        self.unit.retries += 1;
        metrics::counter!(crate::metrics::ROUTE_RETRIES, "reason" => reason.to_string()).increment(1);
        if leader {
            self.remember_leader_only(&hold.replay);
            self.unit.force_leader = true;
        } else {
            self.unit.exclude.push(node);
        }
        let mut cbuf = BytesMut::with_capacity(hold.replay.len() + self.cbuf.len());
        cbuf.extend_from_slice(&hold.replay);
        cbuf.extend_from_slice(&self.cbuf);
        self.replaying = hold.replay.len();
        self.cbuf = cbuf;
        self.recycle_hold(hold);
    }

    /// Marks every statement of a refused unit as leader-only, for the classifier and this client.
    pub(super) fn remember_leader_only(&mut self, replay: &[u8]) {
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
                        let statement = self.state.statements.get_mut(name)?;
                        statement.classification = None;
                        Some(statement.query().to_vec())
                    })
                }
                _ => None,
            };
            if let Some(sql) = sql {
                self.shared.classifier.remember_leader_only(&sql);
            }
            rest = &rest[total.min(rest.len())..];
        }
    }

    /// True when the held server has answered everything and sits idle outside a transaction.
    pub(super) fn server_is_clean(&self) -> bool {
        self.server.as_ref().is_some_and(|l| {
            self.inflight.is_empty()
                && !self.unsynced
                && self.to_server.is_empty()
                && self.tx_status == TxStatus::Idle
                && !l.scanner.mid_message()
                && l.lease.rbuf.is_empty()
        })
    }

    /// In transaction mode, hands the server back as soon as its transaction is over.
    pub(super) fn maybe_release(&mut self) -> bool {
        if self.config.proxy.pool_mode == PoolMode::Transaction
            && self.server_is_clean()
            && !self.state.pins.is_pinned()
        {
            self.release_hold();
            self.key.target.clear();
            self.server = None;
            self.entry.set_server(None);
            self.entry.set_status(ClientStatus::Idle);
            return true;
        }
        false
    }

    /// The server connection failed under us (its node died, froze and was cut, or a network
    /// error): a held read that sent the client nothing runs again on another node; otherwise
    /// what was pending fails with 08006 naming the node and why. The client keeps its session
    /// unless it was inside a transaction (which is gone: it must not go on as if it were open),
    /// in session mode or pinned (its session state is gone too), or holds part of a message.
    pub(super) fn server_lost(&mut self, error: io::Error) -> Result<(), ProxyError> {
        if self.unit.hold.is_some() && self.unit.retries < 3 {
            self.retry_unit(false, "connection_lost");
            return Ok(());
        }
        self.release_hold();
        let leased = self.server.as_ref().expect("a held server");
        let reason = leased.lease.cut_reason().map_or_else(|| error.to_string(), str::to_string);
        let in_transaction = self.tx_status != TxStatus::Idle;
        let (node, mid_message) = self.discard_server();
        let node = self.shared.pools.nodes[node].name.clone();
        tracing::warn!(%node, %reason, in_transaction, "server connection lost");
        let lost = ProxyError::ServerLost { node, reason, mid_message };
        // Session mode and pins (LISTEN, temp tables, ...): the state the client counts on is gone.
        let session_state = self.config.proxy.pool_mode == PoolMode::Session || self.state.pins.is_pinned();
        if mid_message || in_transaction || session_state {
            return Err(lost);
        }
        let sync_points = self.inflight.sync_points();
        self.inflight.clear();
        if sync_points > 0 || self.unsynced {
            self.refuse(&lost);
            for _ in 0..sync_points {
                self.to_client.extend_from_slice(&messages::ready_for_query(TxStatus::Idle));
            }
            self.discard_until_sync = self.unsynced;
        }
        self.unsynced = false;
        self.tx_status = TxStatus::Idle;
        self.end_unit();
        Ok(())
    }
}

/// The session's view of server output: request accounting, statement cache, transaction status.
struct ServerSide<'a> {
    inflight: &'a mut Inflight,
    statements: &'a mut ServerStatements,
    tx_status: &'a mut TxStatus,
    settings: &'a mut ClientSettings,
    server_settings: &'a mut Settings,
    /// The connection's ParameterStatus values (what the next login on it is told).
    server_params: &'a mut Vec<(String, String)>,
    /// Output is held back (a retryable read): watch for its first row or a retryable error.
    holding: bool,
    hold_event: Option<HoldEvent>,
    /// The first ErrorResponse's SQLSTATE in this batch of output.
    first_error: Option<[u8; 5]>,
    /// A client transaction (or statement outside one) ended: ReadyForQuery 'I'.
    transaction_ended: bool,
    /// An injected LSN query is in flight: read its row.
    capture_lsn: bool,
    captured_lsn: Option<u64>,
    /// Transaction pooling, not pinned: once the unit is over, the connection is not the client's.
    between_units_ours: bool,
    /// The server's error message, when one arrived after the unit was over.
    closed_between_units: Option<String>,
}

/// The leader's flush position as an integer (one DataRow with one text column).
const LSN_QUERY: &str = "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::int8";

/// The integer in a one-column text DataRow.
fn data_row_integer(msg: &[u8]) -> Option<u64> {
    let len = i32::from_be_bytes(msg.get(7..11)?.try_into().ok()?);
    std::str::from_utf8(msg.get(11..11 + usize::try_from(len).ok()?)?).ok()?.parse().ok()
}

impl ServerMessages for ServerSide<'_> {
    fn streams(&self, tag: u8) -> bool {
        // The row of an injected LSN query is read whole; every other row streams.
        framing::streams(tag) && !(self.capture_lsn && tag == be::DATA_ROW && self.inflight.answering_injected_query())
    }

    fn decide(&mut self, tag: u8, msg: &[u8]) -> Verdict {
        if tag == be::ERROR_RESPONSE
            && self.between_units_ours
            && self.inflight.is_empty()
            && *self.tx_status == TxStatus::Idle
        {
            self.closed_between_units = Some(messages::message_of(&msg[5..]));
            return Verdict::Swallow;
        }
        if self.capture_lsn && tag == be::DATA_ROW && self.inflight.answering_injected_query() {
            self.captured_lsn = data_row_integer(msg);
        }
        let (verdict, outcome) = self.inflight.on_server_message(tag);
        if let Some(hash) = outcome.failed_parse {
            self.statements.remove(hash);
        }
        match tag {
            be::READY_FOR_QUERY => *self.tx_status = TxStatus::from_byte(*msg.get(5).unwrap_or(&b'I')),
            be::PARAMETER_STATUS => crate::backend::conn::note_parameter(self.server_params, &msg[5..]),
            _ => {}
        }
        // Answers to the proxy's own injected queries (settings sync, BEGIN) are not the client's:
        // they neither end its transaction nor show that its read went through.
        if verdict == Verdict::Swallow {
            return verdict;
        }
        if self.holding && self.hold_event.is_none() {
            self.hold_event = match tag {
                be::ERROR_RESPONSE => Some(match unit::retry_on(&crate::error::sqlstate_of(&msg[5..])) {
                    Some(leader) => HoldEvent::Retry { leader, code: crate::error::sqlstate_of(&msg[5..]) },
                    None => HoldEvent::Release,
                }),
                // Rows, completion, COPY, or the end of the unit: the read has gone through.
                be::DATA_ROW
                | be::COMMAND_COMPLETE
                | be::EMPTY_QUERY
                | be::PORTAL_SUSPENDED
                | be::COPY_IN_RESPONSE
                | be::COPY_OUT_RESPONSE
                | be::COPY_BOTH_RESPONSE
                | be::READY_FOR_QUERY
                | be::FUNCTION_CALL_RESPONSE => Some(HoldEvent::Release),
                _ => None,
            };
        }
        match tag {
            be::READY_FOR_QUERY if *self.tx_status == TxStatus::Idle => {
                self.settings.end_transaction(self.server_settings);
                self.transaction_ended = true;
            }
            be::ERROR_RESPONSE => {
                let code = crate::error::sqlstate_of(&msg[5..]);
                crate::metrics::error(&code, "server");
                self.first_error.get_or_insert(code);
                self.settings.transaction_failed();
            }
            be::COMMAND_COMPLETE if msg[5..].starts_with(b"ROLLBACK") => self.settings.transaction_failed(),
            _ => {}
        }
        verdict
    }

    fn replies_due(&mut self) -> bool {
        self.inflight.replies_due()
    }

    fn emit(&mut self, out: &mut BytesMut) {
        self.inflight.emit_due_replies(out);
    }
}

/// What [`scan_server_output`] saw.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) struct Scanned {
    /// Bytes of the input used (a trailing partial message waits).
    pub used: usize,
    /// What reached the client.
    pub to_client: Vec<u8>,
    /// The server's error that closed the connection between units.
    pub closed_between_units: Option<String>,
}

/// Server bytes through the session's own sink, as in transaction pooling on a fresh
/// connection (the unit tests and the fuzz targets).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn scan_server_output(
    scanner: &mut BackendScanner,
    bytes: &[u8],
    inflight: &mut Inflight,
    tx_status: TxStatus,
) -> Scanned {
    let (mut statements, mut settings) = (ServerStatements::default(), ClientSettings::default());
    let (mut server_settings, mut params, mut tx_status) = (Settings::default(), Vec::new(), tx_status);
    let mut sink = ServerSide {
        inflight,
        statements: &mut statements,
        tx_status: &mut tx_status,
        settings: &mut settings,
        server_settings: &mut server_settings,
        server_params: &mut params,
        holding: false,
        hold_event: None,
        first_error: None,
        transaction_ended: false,
        capture_lsn: false,
        captured_lsn: None,
        between_units_ours: true,
        closed_between_units: None,
    };
    let mut out = BytesMut::new();
    let used = scanner.scan(bytes, &mut out, &mut sink);
    Scanned { used, to_client: out.to_vec(), closed_between_units: sink.closed_between_units }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server bytes through a `ServerSide` in transaction pooling: (what reaches the client, the
    /// error that closed the connection between units).
    fn scan(bytes: &[u8], inflight: &mut Inflight, tx_status: TxStatus) -> (Vec<u8>, Option<String>) {
        let scanned = scan_server_output(&mut BackendScanner::default(), bytes, inflight, tx_status);
        assert_eq!(scanned.used, bytes.len());
        (scanned.to_client, scanned.closed_between_units)
    }

    fn fatal_57p01() -> Vec<u8> {
        let body = b"SFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";
        [&[b'E'][..], &((body.len() + 4) as u32).to_be_bytes(), body].concat()
    }

    #[test]
    fn an_error_after_the_unit_is_over_closes_the_connection_not_the_client() {
        // The answer and the shutdown's FATAL in one read: the client gets its answer only.
        let complete: &[u8] = &[b'C', 0, 0, 0, 13, b'S', b'E', b'L', b'E', b'C', b'T', b' ', b'1', 0];
        let answer = [complete, &messages::ready_for_query(TxStatus::Idle)].concat();
        let mut inflight = Inflight::default();
        inflight.push(Request::Query { swallow: false }, &mut BytesMut::new());
        let (out, closed) = scan(&[answer.clone(), fatal_57p01()].concat(), &mut inflight, TxStatus::Idle);
        assert_eq!(out, answer);
        assert_eq!(closed.as_deref(), Some("terminating connection due to administrator command"));
        // While a query is in flight the error is the client's.
        inflight.push(Request::Query { swallow: false }, &mut BytesMut::new());
        let (out, closed) = scan(&fatal_57p01(), &mut inflight, TxStatus::Idle);
        assert_eq!((out, closed), (fatal_57p01(), None));
        // So it is inside a transaction (idle_in_transaction_session_timeout ends the client's).
        let (out, closed) = scan(&fatal_57p01(), &mut Inflight::default(), TxStatus::InBlock);
        assert_eq!((out, closed), (fatal_57p01(), None));
    }
}
