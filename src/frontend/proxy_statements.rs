//! `pgcausal.*` commands a client sends over the extended protocol: the statements and portals
//! that name them live in the proxy, which answers Parse, Bind, Describe, Execute and Close for
//! them itself. Nothing of them reaches a server.

use super::requests::{duplicate, Refused};
use crate::protocol::messages::{
    self, Format, ResultSet, BIND_COMPLETE, CLOSE_COMPLETE, NO_DATA, NO_PARAMETERS, PARSE_COMPLETE,
};
use crate::protocol::target;
use crate::route::{Classification, SessionEffect};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;

/// The client's prepared `pgcausal.*` commands, by statement and by portal name.
#[derive(Default)]
pub struct ProxyStatements {
    statements: HashMap<Vec<u8>, Arc<Classification>>,
    /// Portal -> its command, and whether the Bind asked for binary results.
    portals: HashMap<Vec<u8>, (Arc<Classification>, bool)>,
}

/// What the proxy does with a client message that may concern its statements.
pub enum Step {
    /// Not about a `pgcausal.*` statement: handle it as usual.
    Pass,
    /// Answer with these bytes.
    Reply(Bytes),
    /// Run the command (an Execute of its portal) and answer with its result.
    Run(Arc<Classification>),
    Refuse(Refused),
}

impl ProxyStatements {
    /// Nothing prepared: every message passes (the check costs nothing for other clients).
    pub fn is_empty(&self) -> bool {
        self.statements.is_empty() && self.portals.is_empty()
    }

    /// A Parse of a lone `pgcausal.*` command; `client_has` says whether the client already has
    /// an ordinary statement by that name.
    pub fn parse_command(&mut self, body: &[u8], command: Arc<Classification>, client_has: bool) -> Step {
        let Some((name, _)) = messages::read_cstr(body) else { return Step::Pass };
        if !name.is_empty() && (client_has || self.statements.contains_key(name)) {
            return Step::Refuse(duplicate(name));
        }
        self.statements.insert(name.to_vec(), command);
        Step::Reply(Bytes::from_static(PARSE_COMPLETE))
    }

    /// Any other Parse: it replaces an unnamed command, and may not reuse a command's name.
    pub fn parse_other(&mut self, body: &[u8]) -> Step {
        let Some((name, _)) = messages::read_cstr(body) else { return Step::Pass };
        if name.is_empty() {
            self.statements.remove(name);
        } else if self.statements.contains_key(name) {
            return Step::Refuse(duplicate(name));
        }
        Step::Pass
    }

    /// Bind: of a command's statement, answered here; of anything else, it replaces the portal.
    pub fn bind(&mut self, body: &[u8]) -> Step {
        let Some((portal, rest)) = messages::read_cstr(body) else { return Step::Pass };
        let Some((statement, rest)) = messages::read_cstr(rest) else { return Step::Pass };
        let Some(command) = self.statements.get(statement).cloned() else {
            self.portals.remove(portal);
            return Step::Pass;
        };
        self.portals.insert(portal.to_vec(), (command, binary_results(rest)));
        Step::Reply(Bytes::from_static(BIND_COMPLETE))
    }

    pub fn describe(&self, body: &[u8]) -> Step {
        let Some((&kind, rest)) = body.split_first() else { return Step::Pass };
        let Some((name, _)) = messages::read_cstr(rest) else { return Step::Pass };
        let mut out = BytesMut::new();
        match kind {
            target::STATEMENT => match self.statements.get(name) {
                Some(command) => {
                    out.extend_from_slice(NO_PARAMETERS); // the commands take none
                    put_row_description(&mut out, command, false);
                }
                None => return Step::Pass,
            },
            target::PORTAL => match self.portals.get(name) {
                Some((command, binary)) => put_row_description(&mut out, command, *binary),
                None => return Step::Pass,
            },
            _ => return Step::Pass,
        }
        Step::Reply(out.freeze())
    }

    pub fn execute(&self, body: &[u8]) -> Step {
        let Some((portal, _)) = messages::read_cstr(body) else { return Step::Pass };
        match self.portals.get(portal) {
            Some((command, _)) => Step::Run(Arc::clone(command)),
            None => Step::Pass,
        }
    }

    pub fn close(&mut self, body: &[u8]) -> Step {
        let Some((&kind, rest)) = body.split_first() else { return Step::Pass };
        let Some((name, _)) = messages::read_cstr(rest) else { return Step::Pass };
        let removed = match kind {
            target::STATEMENT => self.statements.remove(name).is_some(),
            target::PORTAL => self.portals.remove(name).is_some(),
            _ => false,
        };
        if removed {
            Step::Reply(Bytes::from_static(CLOSE_COMPLETE))
        } else {
            Step::Pass
        }
    }

    /// A transaction ended: its portals are gone, as on a server.
    pub fn transaction_ended(&mut self) {
        self.portals.clear();
    }
}

/// The column a SHOW answers with, if the command is one.
fn shown_column(command: &Classification) -> Option<String> {
    command.session.iter().find_map(|e| match e {
        SessionEffect::ProxyShow { name } => Some(name.to_ascii_lowercase()),
        _ => None,
    })
}

/// RowDescription of a SHOW (one text column), or NoData for SET and RESET.
fn put_row_description(out: &mut BytesMut, command: &Classification, binary: bool) {
    match shown_column(command) {
        Some(column) => {
            let format = if binary { Format::Binary } else { Format::Text };
            ResultSet::new(&[&column]).put_description(out, format);
        }
        None => out.extend_from_slice(NO_DATA),
    }
}

/// Whether a Bind's result format codes (after its parameters) ask for binary: `text` has the
/// same bytes either way, only the RowDescription says which.
fn binary_results(rest: &[u8]) -> bool {
    let read_i16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|s| i16::from_be_bytes([s[0], s[1]]));
    let Some(formats) = read_i16(rest, 0) else { return false };
    let mut at = 2 + 2 * formats.max(0) as usize;
    let Some(params) = read_i16(rest, at) else { return false };
    at += 2;
    for _ in 0..params.max(0) {
        let Some(len) = rest.get(at..at + 4).map(|s| i32::from_be_bytes([s[0], s[1], s[2], s[3]])) else {
            return false;
        };
        at += 4 + len.max(0) as usize;
    }
    matches!(read_i16(rest, at), Some(n) if n > 0) && read_i16(rest, at + 2) == Some(1)
}

/// The tags of the messages in `bytes`, in order.
#[cfg(test)]
fn tags(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        out.push(rest[0]);
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        rest = &rest[1 + len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{classify, FunctionCatalog};

    fn command(sql: &str) -> Arc<Classification> {
        Arc::new(classify(sql, &FunctionCatalog::builtin()))
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn reply(step: Step) -> Vec<u8> {
        match step {
            Step::Reply(b) => b.to_vec(),
            _ => panic!("expected a reply"),
        }
    }

    #[test]
    fn a_prepared_show_is_answered_through_its_statement_and_portal() {
        let mut p = ProxyStatements::default();
        assert!(p.is_empty());
        let show = command("SHOW pgcausal.lsn");
        assert_eq!(reply(p.parse_command(&cstr("s1"), show.clone(), false)), PARSE_COMPLETE);
        assert!(matches!(p.parse_command(&cstr("s1"), show, false), Step::Refuse(_)), "duplicate name");
        assert!(matches!(p.parse_other(&cstr("s1")), Step::Refuse(_)), "an ordinary statement may not reuse it");
        assert_eq!(tags(&reply(p.describe(&[b"S".as_slice(), &cstr("s1")].concat()))), b"tT");
        // Bind portal "" to s1: no parameters, one result format code, binary.
        let bind = [cstr(""), cstr("s1"), vec![0, 0, 0, 0, 0, 1, 0, 1]].concat();
        assert_eq!(reply(p.bind(&bind)), BIND_COMPLETE);
        let described = reply(p.describe(&[b"P".as_slice(), &cstr("")].concat()));
        assert_eq!(tags(&described), b"T");
        assert_eq!(&described[described.len() - 2..], &[0, 1], "binary format code");
        assert!(matches!(p.execute(&cstr("")), Step::Run(_)));
        // An ordinary Bind to the same portal replaces it.
        assert!(matches!(p.bind(&[cstr(""), cstr("other"), vec![0, 0, 0, 0, 0, 0]].concat()), Step::Pass));
        assert!(matches!(p.execute(&cstr("")), Step::Pass));
        assert_eq!(reply(p.close(&[b"S".as_slice(), &cstr("s1")].concat())), CLOSE_COMPLETE);
        assert!(p.is_empty());
    }

    #[test]
    fn a_prepared_set_describes_no_data() {
        let mut p = ProxyStatements::default();
        let set = command("SET pgcausal.route = leader");
        reply(p.parse_command(&cstr(""), set, false));
        assert_eq!(tags(&reply(p.describe(&[b"S".as_slice(), &cstr("")].concat()))), b"tn");
        assert!(matches!(p.parse_other(&cstr("")), Step::Pass));
        assert!(p.is_empty(), "the next unnamed Parse replaces it");
    }

    #[test]
    fn bind_result_formats_are_read_after_the_parameters() {
        // 1 parameter format (text), 1 parameter of 3 bytes, 1 result format: binary.
        let rest = [vec![0, 1, 0, 0, 0, 1, 0, 0, 0, 3], b"abc".to_vec(), vec![0, 1, 0, 1]].concat();
        assert!(binary_results(&rest));
        assert!(!binary_results(&[0, 0, 0, 0, 0, 0]));
        assert!(!binary_results(&[0, 0]), "truncated");
    }
}
