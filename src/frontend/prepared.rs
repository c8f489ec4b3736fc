//! Named prepared statements under transaction pooling: a client's statement names map to
//! server-side statements named after a hash of their SQL and parameter types, prepared on
//! demand on whichever server connection runs the client's work.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::backend::statements::server_name;
use crate::protocol::{messages, target};
use crate::route::Classification;
use std::sync::Arc;

/// A client's named statement: what to send to prepare it anywhere.
#[derive(Debug, Clone)]
pub struct Statement {
    pub hash: u64,
    /// Everything after the name in the client's Parse: query\0, parameter count and types.
    pub tail: Bytes,
    /// Where it runs, classified once (cleared when a follower proved it writes).
    pub classification: Option<Arc<Classification>>,
    /// The DDL generation it was prepared in.
    pub schema: u64,
}

impl Statement {
    /// The SQL text.
    pub fn query(&self) -> &[u8] {
        messages::read_cstr(&self.tail).map_or(&[][..], |(q, _)| q)
    }
}

/// The statements one client has prepared, by the client's own names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Bytes, Statement>,
}

impl ClientStatements {
    pub fn get(&self, name: &[u8]) -> Option<&Statement> {
        self.by_name.get(name)
    }

    pub fn get_mut(&mut self, name: &[u8]) -> Option<&mut Statement> {
        self.by_name.get_mut(name)
    }

    /// Registers a Parse; false if the name is taken (PostgreSQL's 42P05).
    /// `schema` is the proxy's DDL generation: after DDL, the same text is a new server statement
    /// (one prepared before could still name a dropped type or an old row shape).
    pub fn insert(&mut self, name: &[u8], tail: &[u8], schema: u64) -> Option<Statement> {
        if self.by_name.contains_key(name) {
            return None;
        }
        let hash = statement_hash(tail, schema);
        let statement = Statement { hash, tail: Bytes::copy_from_slice(tail), classification: None, schema };
        self.by_name.insert(Bytes::copy_from_slice(name), statement.clone());
        Some(statement)
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.by_name.remove(name).is_some()
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
    }
}

/// Identity of a statement: same SQL text and parameter types (and DDL generation), same server
/// statement.
pub fn statement_hash(tail: &[u8], schema: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tail.hash(&mut h);
    schema.hash(&mut h);
    h.finish()
}

/// Parse of a statement under its server name.
pub fn put_parse(out: &mut BytesMut, statement: &Statement) {
    messages::put_parse(out, &server_name(statement.hash), &statement.tail);
}

/// Close of a server statement.
pub fn put_close_statement(out: &mut BytesMut, hash: u64) {
    messages::put_close(out, target::STATEMENT, &server_name(hash));
}

/// Bind with the statement name replaced: `portal` and `rest` are copied from the client's Bind.
pub fn put_bind(out: &mut BytesMut, portal: &[u8], hash: u64, rest: &[u8]) {
    messages::put_bind(out, portal, &server_name(hash), rest);
}

/// Describe of a statement under its server name.
pub fn put_describe_statement(out: &mut BytesMut, hash: u64) {
    messages::put_describe(out, target::STATEMENT, &server_name(hash));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_sql_and_types_share_a_server_name() {
        let mut a = ClientStatements::default();
        let s1 = a.insert(b"s1", b"SELECT $1\0\0\x01\0\0\0\x17", 0).unwrap();
        assert!(a.insert(b"s1", b"SELECT 2\0\0\0", 0).is_none(), "duplicate names are refused");
        let mut b = ClientStatements::default();
        let other = b.insert(b"mine", b"SELECT $1\0\0\x01\0\0\0\x17", 0).unwrap();
        assert_eq!(s1.hash, other.hash);
        let int8 = b.insert(b"int8", b"SELECT $1\0\0\x01\0\0\0\x14", 0).unwrap();
        assert_ne!(s1.hash, int8.hash);
        assert!(server_name(s1.hash).starts_with(b"pgcausal_"));
        assert!(a.remove(b"s1") && !a.remove(b"s1"));
    }

    #[test]
    fn rewritten_messages_are_well_formed() {
        let mut out = BytesMut::new();
        put_bind(&mut out, b"", 0xabc, b"\0\0\0\0\0\0");
        let len = i32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(len + 1, out.len());
        assert_eq!(&out[6..31], b"pgcausal_0000000000000abc");
    }
}
