//! Which SQL-level prepared statements (PREPARE name AS ...) one server connection holds, and
//! which PREPARE text each name is (bounded, least recently used dropped first).

use std::collections::HashMap;

/// Server connections keep at most this many SQL-level names (least recently used dropped first).
pub const SERVER_SQL_CAPACITY: usize = 1000;

/// What a server connection holds: name -> (hash of the PREPARE text or None if unknown, last use).
#[derive(Debug, Default)]
pub struct ServerSqlStatements {
    by_name: HashMap<String, (Option<u64>, u64)>,
    tick: u64,
}

impl ServerSqlStatements {
    /// A PREPARE of `name` (the client's or an injected one) failed: the server does not hold it.
    pub fn forget(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// Like `forget`, except that 42P05 means the server holds a `name` we did not track
    /// (e.g. from a multi-statement string): it is then dropped before the next PREPARE.
    pub fn prepare_failed(&mut self, name: &str, sqlstate: &str) {
        match sqlstate {
            crate::error::sqlstate::DUPLICATE_PREPARED_STATEMENT => {
                self.by_name.insert(name.to_string(), (None, self.tick));
            }
            _ => self.forget(name),
        }
    }

    /// Whether the server holds `name` and which statement (None: unknown); marks it used.
    pub fn get(&mut self, name: &str) -> Option<Option<u64>> {
        self.tick += 1;
        let (hash, used) = self.by_name.get_mut(name)?;
        *used = self.tick;
        Some(*hash)
    }

    /// Records `name`; when full, forgets the least recently used name and returns it to DEALLOCATE.
    pub fn insert(&mut self, name: &str, hash: u64) -> Option<String> {
        self.tick += 1;
        let mut victim = None;
        if !self.by_name.contains_key(name) && self.by_name.len() >= SERVER_SQL_CAPACITY {
            victim = self.by_name.iter().min_by_key(|(_, (_, used))| *used).map(|(n, _)| n.clone());
            self.by_name.remove(victim.as_deref()?);
        }
        self.by_name.insert(name.to_string(), (Some(hash), self.tick));
        victim
    }

    /// Whether the server holds `name` and which statement (None: unknown), without marking it used.
    pub fn holds(&self, name: &str) -> Option<Option<u64>> {
        self.by_name.get(name).map(|(hash, _)| *hash)
    }

    /// DISCARD ALL or DEALLOCATE ALL ran on the server: it holds no statements (other clients
    /// re-prepare on demand).
    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    /// Forgets every name for which `keep(name, hash)` is false, and returns them (to DEALLOCATE).
    pub fn remove_unless(&mut self, keep: impl Fn(&str, Option<u64>) -> bool) -> Vec<String> {
        let gone: Vec<String> =
            self.by_name.iter().filter(|(name, (hash, _))| !keep(name, *hash)).map(|(name, _)| name.clone()).collect();
        for name in &gone {
            self.by_name.remove(name);
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
