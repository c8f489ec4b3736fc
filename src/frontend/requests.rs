//! Turns client messages into server requests: client statement names become server statement
//! names (prepared on demand), and the proxy answers what needs no server (Close of a statement).

use super::inflight::{Inflight, Request};
use super::prepared::{self, ClientStatements, Statement};
use crate::backend::statements::ServerStatements;
use crate::error::ProxyError;
use crate::protocol::messages::{self, Severity, CLOSE_COMPLETE, PARSE_COMPLETE};
use crate::protocol::{fe, target, TxStatus};
use bytes::{Bytes, BytesMut};

/// Everything one client message may touch on its way to the server.
pub struct Outbound<'a> {
    pub to_server: &'a mut BytesMut,
    pub to_client: &'a mut BytesMut,
    pub inflight: &'a mut Inflight,
    pub server: &'a mut ServerStatements,
    pub client: &'a mut ClientStatements,
    /// The message is being sent again after a failed attempt elsewhere: its Parse already registered.
    pub replaying: bool,
    /// The proxy's DDL generation (part of server statement names).
    pub schema: u64,
    pub ddl: &'a crate::frontend::ddl::DdlLog,
}

/// A message the proxy refuses the way PostgreSQL would: an error, then skip to Sync. It holds
/// the ErrorResponse to send.
pub struct Refused(pub Bytes);

impl Refused {
    pub fn new(e: &ProxyError) -> Refused {
        Refused(e.error_response(Severity::Error).freeze())
    }

    /// Counts it in the errors metric under the class it is sent with (read back from the
    /// ErrorResponse it holds, so the count cannot disagree with what the client sees).
    pub fn count(&self) {
        crate::metrics::error(&crate::error::sqlstate_of(self.0.get(5..).unwrap_or_default()), "proxy");
    }
}

fn malformed(what: &str) -> ProxyError {
    ProxyError::Protocol(format!("malformed {what} message"))
}

/// True if the message can be answered without a server connection when none is held: outside
/// a transaction, named Parse is only recorded (prepared later where it runs), Close of a
/// statement forgets it, Sync and Flush have nothing to wait for. Without this, a client that
/// prepares synchronously while its siblings hold every server (pgbench -M prepared) deadlocks.
pub fn answerable_without_server(tag: u8, msg: &[u8]) -> bool {
    let body = &msg[5..];
    match tag {
        fe::SYNC | fe::FLUSH => true,
        fe::PARSE => body.first().is_some_and(|&b| b != 0),
        fe::CLOSE => body.first() == Some(&target::STATEMENT) && body.get(1).is_some_and(|&b| b != 0),
        _ => false,
    }
}

/// Answers such a message (see [`answerable_without_server`]) from the proxy's own state.
pub fn answer_without_server(
    tag: u8,
    msg: &[u8],
    client: &mut ClientStatements,
    inflight: &mut Inflight,
    to_client: &mut BytesMut,
    tx_status: TxStatus,
    schema: u64,
) -> Result<Result<(), Refused>, ProxyError> {
    let body = &msg[5..];
    let ready = messages::ready_for_query(tx_status);
    let reply: &[u8] = match tag {
        // No server is held: idle, or inside a BEGIN the proxy has not sent yet ('T').
        fe::SYNC => &ready,
        fe::FLUSH => return Ok(Ok(())),
        fe::PARSE => {
            let (name, tail) = messages::read_cstr(body).ok_or_else(|| malformed("Parse"))?;
            if client.insert(name, tail, schema).is_none() {
                return Ok(Err(duplicate(name)));
            }
            PARSE_COMPLETE
        }
        _ => {
            let (name, _) = messages::read_cstr(&body[1..]).ok_or_else(|| malformed("Close"))?;
            client.remove(name);
            CLOSE_COMPLETE
        }
    };
    inflight.push(Request::Reply(Bytes::copy_from_slice(reply)), to_client);
    Ok(Ok(()))
}

/// PostgreSQL's error for a Parse that reuses a statement name.
pub fn duplicate(name: &[u8]) -> Refused {
    Refused::new(&ProxyError::DuplicateStatement(String::from_utf8_lossy(name).into_owned()))
}

impl Outbound<'_> {
    /// Queues one whole client message (header included) for the server.
    pub fn message(&mut self, tag: u8, msg: &[u8]) -> Result<Result<(), Refused>, ProxyError> {
        let body = &msg[5..];
        let request = match tag {
            fe::PARSE => return self.parse(msg),
            fe::BIND => return self.bind(msg),
            fe::DESCRIBE => return self.describe(msg),
            fe::CLOSE if body.first() == Some(&target::STATEMENT) && body.get(1) != Some(&0) => {
                let (name, _) = messages::read_cstr(&body[1..]).ok_or_else(|| malformed("Close"))?;
                self.client.remove(name);
                // The server statement stays cached for other clients; the client gets its answer.
                self.inflight.push(Request::Reply(Bytes::from_static(CLOSE_COMPLETE)), self.to_client);
                return Ok(Ok(()));
            }
            _ => Request::of_message(tag),
        };
        self.to_server.extend_from_slice(msg);
        if let Some(r) = request {
            self.inflight.push(r, self.to_client);
        }
        Ok(Ok(()))
    }

    fn parse(&mut self, msg: &[u8]) -> Result<Result<(), Refused>, ProxyError> {
        let (name, tail) = messages::read_cstr(&msg[5..]).ok_or_else(|| malformed("Parse"))?;
        if name.is_empty() {
            self.to_server.extend_from_slice(msg);
            self.inflight.push(Request::Parse { hash: None, swallow: false }, self.to_client);
            return Ok(Ok(()));
        }
        let statement = match self.client.insert(name, tail, self.schema) {
            Some(statement) => statement,
            None if self.replaying => self.client.get(name).expect("registered").clone(),
            None => return Ok(Err(duplicate(name))),
        };
        if self.server.touch(statement.hash) {
            self.inflight.push(Request::Reply(Bytes::from_static(PARSE_COMPLETE)), self.to_client);
        } else {
            self.prepare(&statement, false);
        }
        Ok(Ok(()))
    }

    /// Sends a Parse under the server name, closing the least recently used statement if full.
    fn prepare(&mut self, statement: &Statement, swallow: bool) {
        if let Some(evicted) = self.server.insert(statement.hash) {
            prepared::put_close_statement(self.to_server, evicted);
            self.inflight.push(Request::Close { swallow: true }, self.to_client);
        }
        prepared::put_parse(self.to_server, statement);
        self.inflight.push(Request::Parse { hash: Some(statement.hash), swallow }, self.to_client);
    }

    /// The client's statement by name, prepared on this server connection if it is not yet.
    /// A statement over a relation that DDL has changed since it was prepared is not silently
    /// re-prepared elsewhere (its row shape may differ from what the client was told): it fails
    /// as PostgreSQL's own plan cache would, and drivers re-prepare it.
    fn ensure_prepared(&mut self, name: &[u8]) -> Result<Option<u64>, Refused> {
        let Some(statement) = self.client.get(name).cloned() else { return Ok(None) };
        if !self.server.touch(statement.hash) {
            if statement.schema < self.schema && self.ddl.touches(statement.schema, statement.query()) {
                return Err(Refused::new(&ProxyError::CachedPlanChanged));
            }
            self.prepare(&statement, true);
        }
        Ok(Some(statement.hash))
    }

    fn bind(&mut self, msg: &[u8]) -> Result<Result<(), Refused>, ProxyError> {
        let (portal, rest) = messages::read_cstr(&msg[5..]).ok_or_else(|| malformed("Bind"))?;
        let (name, rest) = messages::read_cstr(rest).ok_or_else(|| malformed("Bind"))?;
        match self.ensure_prepared(name) {
            Ok(Some(hash)) => prepared::put_bind(self.to_server, portal, hash, rest),
            // Unnamed, or unknown: the server answers (unknown names get its 26000 error).
            Ok(None) => self.to_server.extend_from_slice(msg),
            Err(refused) => return Ok(Err(refused)),
        }
        self.inflight.push(Request::Bind, self.to_client);
        Ok(Ok(()))
    }

    fn describe(&mut self, msg: &[u8]) -> Result<Result<(), Refused>, ProxyError> {
        let body = &msg[5..];
        let kind = *body.first().ok_or_else(|| malformed("Describe"))?;
        let (name, _) = messages::read_cstr(&body[1..]).ok_or_else(|| malformed("Describe"))?;
        if kind == target::PORTAL {
            self.to_server.extend_from_slice(msg);
            self.inflight.push(Request::DescribePortal, self.to_client);
            return Ok(Ok(()));
        }
        match self.ensure_prepared(name) {
            Ok(Some(hash)) => prepared::put_describe_statement(self.to_server, hash),
            Ok(None) => self.to_server.extend_from_slice(msg),
            Err(refused) => return Ok(Err(refused)),
        }
        self.inflight.push(Request::DescribeStatement, self.to_client);
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_holds_the_code_it_is_counted_under() {
        let refused = duplicate(b"s1");
        assert_eq!(&crate::error::sqlstate_of(&refused.0[5..]), b"42P05");
        refused.count();
    }
}
