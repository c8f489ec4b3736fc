//! Which proxy-named prepared statements one server connection holds (bounded, LRU).

use std::collections::HashMap;

/// Server connections keep at most this many proxy-prepared statements (closed on eviction).
pub const SERVER_CACHE_CAPACITY: usize = 500;

/// The server-side name of a statement: `pgcausal_` and 16 hex digits.
pub fn server_name(hash: u64) -> [u8; 25] {
    let mut name = *b"pgcausal_0000000000000000";
    let hex = b"0123456789abcdef";
    for i in 0..16 {
        name[9 + i] = hex[((hash >> (60 - 4 * i)) & 0xf) as usize];
    }
    name
}

/// Which proxy-named statements one server connection holds, least recently used first out.
#[derive(Debug, Default)]
pub struct ServerStatements {
    last_used: HashMap<u64, u64>,
    tick: u64,
}

impl ServerStatements {
    /// True (and marks it used) if the server holds the statement.
    pub fn touch(&mut self, hash: u64) -> bool {
        self.tick += 1;
        match self.last_used.get_mut(&hash) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records a new statement; returns the one to close if the cache is full.
    pub fn insert(&mut self, hash: u64) -> Option<u64> {
        self.tick += 1;
        let evicted = if self.last_used.len() >= SERVER_CACHE_CAPACITY {
            let (&oldest, _) = self.last_used.iter().min_by_key(|(_, &t)| t)?;
            self.last_used.remove(&oldest);
            Some(oldest)
        } else {
            None
        };
        self.last_used.insert(hash, self.tick);
        evicted
    }

    pub fn remove(&mut self, hash: u64) {
        self.last_used.remove(&hash);
    }

    /// The server dropped all its statements (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.last_used.clear();
    }

    pub fn len(&self) -> usize {
        self.last_used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_used.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_cache_evicts_the_least_recently_used() {
        let mut s = ServerStatements::default();
        for h in 0..SERVER_CACHE_CAPACITY as u64 {
            assert_eq!(s.insert(h), None);
        }
        assert!(s.touch(0));
        assert_eq!(s.insert(10_000), Some(1));
        assert!(!s.touch(1) && s.touch(0) && s.touch(10_000));
    }
}
