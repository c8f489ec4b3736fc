//! Session state a server would keep for the client (settings, and state that cannot move such as
//! LISTEN or temp tables), tracked from classified SQL with transaction semantics, so it can follow
//! the client across server connections or pin the client to one.

use super::prepared::ClientStatements;
use super::proxy_statements::ProxyStatements;
use super::sql_prepared::ClientSqlStatements;
use crate::backend::settings::Settings;
use crate::route::{Classification, Pin, SessionEffect, Unpin};
use bytes::BytesMut;
use std::collections::BTreeSet;

/// The client's settings: committed ones, and a working copy while a transaction runs.
/// Everything a server would keep for this client across its transactions, which the proxy
/// keeps instead and brings to whichever server connection runs the client's next unit.
#[derive(Default)]
pub struct ClientState {
    /// Session settings, replayed on each server connection the client uses.
    pub settings: ClientSettings,
    /// State that ties the client to its current server connection (LISTEN, temp tables, ...).
    pub pins: Pins,
    /// Named protocol-level prepared statements.
    pub statements: ClientStatements,
    /// Prepared `pgcausal.*` commands (extended protocol), answered by the proxy.
    pub proxy_statements: ProxyStatements,
    /// SQL-level prepared statements (PREPARE name AS ...).
    pub sql_statements: ClientSqlStatements,
    /// The unnamed statement (its last unnamed Parse, whole), which PostgreSQL keeps across
    /// Syncs until the next unnamed Parse or simple Query.
    pub unnamed_parse: BytesMut,
}

#[derive(Debug, Default)]
pub struct ClientSettings {
    /// What the client logged in with: RESET returns to these, as in PostgreSQL.
    startup: Settings,
    committed: Settings,
    pending: Option<Settings>,
    /// An error or rollback happened in the current transaction.
    failed: bool,
    /// Startup settings the client RESET in this transaction: the server went to its own
    /// default for them, while for the client they hold the startup value again.
    server_diverged: Vec<String>,
}

impl ClientSettings {
    pub fn from_startup(settings: Settings) -> ClientSettings {
        ClientSettings { startup: settings.clone(), committed: settings, ..ClientSettings::default() }
    }

    /// What a server running the client's work must carry.
    pub fn current(&self) -> &Settings {
        self.pending.as_ref().unwrap_or(&self.committed)
    }

    /// Records the effects of statements sent; they count once their transaction commits.
    pub fn apply(&mut self, effects: &[SessionEffect]) {
        let mut changed = false;
        for effect in effects {
            let working = self.pending.get_or_insert_with(|| self.committed.clone());
            match effect {
                SessionEffect::Set { name, value, local: false } => working.set(name, value),
                SessionEffect::SetConfigCall { name, value, is_local: false } => working.set_text(name, value),
                SessionEffect::Reset { name } => {
                    working.reset(name);
                    if self.startup.get(name).is_some() {
                        working.adopt(&self.startup, name);
                        self.server_diverged.push(name.clone());
                    }
                }
                SessionEffect::ResetAll | SessionEffect::DiscardAll => {
                    if *effect == SessionEffect::ResetAll {
                        working.reset_all();
                    } else {
                        working.clear();
                    }
                    for name in self.startup.names() {
                        working.adopt(&self.startup, name);
                        self.server_diverged.push(name.to_string());
                    }
                }
                _ => continue, // SET LOCAL dies with its transaction; proxy commands never reach a server
            }
            changed = true;
        }
        if !changed && self.pending.as_ref() == Some(&self.committed) {
            self.pending = None;
        }
    }

    /// An ErrorResponse, or a ROLLBACK: changes of this transaction will not stick.
    pub fn transaction_failed(&mut self) {
        self.failed = true;
    }

    /// At ReadyForQuery 'I': settles the transaction's changes and updates what the server
    /// carries now (unknown when a failed transaction had changes: savepoints may have kept some).
    /// Without changes the server already carries the committed settings: nothing to copy.
    pub fn end_transaction(&mut self, server: &mut Settings) {
        let failed = std::mem::take(&mut self.failed);
        let diverged = std::mem::take(&mut self.server_diverged);
        let Some(pending) = self.pending.take() else { return };
        let unsure = failed && pending != self.committed;
        if !failed {
            self.committed = pending;
        }
        if unsure {
            *server = Settings::unknown();
            return;
        }
        server.clone_from(&self.committed);
        for name in &diverged {
            server.reset(name); // the next sync brings the startup value back
        }
    }
}

/// State that lives in one server backend and cannot be replayed elsewhere.
#[derive(Debug, Default)]
pub struct Pins {
    channels: BTreeSet<String>,
    listen_all: bool,
    temp_tables: BTreeSet<String>,
    cursors: BTreeSet<String>,
    advisory_locks: bool,
    untracked: bool,
    /// The server said this backend holds temporary objects (the backstop behind parsing).
    server_temp: bool,
}

impl Pins {
    /// Applies a statement's pins and unpins; returns the kinds newly pinned (for the metric).
    pub fn apply(&mut self, c: &Classification) -> Vec<&'static str> {
        let mut new = Vec::new();
        for unpin in &c.unpins {
            match unpin {
                Unpin::UnlistenAll => {
                    self.channels.clear();
                    self.listen_all = false;
                }
                Unpin::Unlisten { channel } => {
                    self.channels.remove(channel);
                }
                Unpin::DiscardAll => *self = Pins::default(),
                Unpin::DiscardTemp => {
                    self.temp_tables.clear();
                    self.server_temp = false;
                }
                Unpin::AdvisoryUnlockAll => self.advisory_locks = false,
                Unpin::DropTable { names } => names.iter().for_each(|n| {
                    self.temp_tables.remove(n);
                }),
                Unpin::CloseCursor { name } => {
                    self.cursors.remove(name);
                }
                Unpin::CloseAllCursors => self.cursors.clear(),
                Unpin::FinishPrepared => {}
            }
        }
        let was = self.is_pinned();
        for pin in &c.pins {
            let kind = match pin {
                Pin::Listen { channel } => {
                    self.channels.insert(channel.clone());
                    "listen"
                }
                Pin::TempTable { name } => {
                    self.temp_tables.insert(name.clone());
                    "temp_table"
                }
                Pin::AdvisoryLock => {
                    self.advisory_locks = true;
                    "advisory_lock"
                }
                Pin::HoldCursor { name } => {
                    self.cursors.insert(name.clone());
                    "hold_cursor"
                }
                // A prepared transaction belongs to no backend once prepared.
                Pin::PrepareTransaction => continue,
                Pin::UntrackedSessionState => {
                    self.untracked = true;
                    "untracked_state"
                }
            };
            if !was {
                new.push(kind);
            }
        }
        new
    }

    /// What the server said after a unit that may have made or dropped temporary objects;
    /// true when that newly pins the client.
    pub fn server_temp(&mut self, holds_temp: bool) -> bool {
        let newly = holds_temp && !self.is_pinned();
        self.server_temp = holds_temp;
        if !holds_temp {
            self.temp_tables.clear(); // none left, whatever the names said
        }
        newly
    }

    /// True while the client must keep its server connection.
    pub fn is_pinned(&self) -> bool {
        !self.channels.is_empty()
            || self.listen_all
            || !self.temp_tables.is_empty()
            || !self.cursors.is_empty()
            || self.advisory_locks
            || self.untracked
            || self.server_temp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> SessionEffect {
        SessionEffect::Set { name: name.into(), value: value.into(), local: false }
    }

    #[test]
    fn settings_stick_only_when_their_transaction_commits() {
        let mut s = ClientSettings::default();
        let mut server = Settings::default();
        s.apply(&[set("search_path", "a")]);
        s.end_transaction(&mut server);
        assert_eq!(&server, s.current());
        let committed = s.current().clone();
        s.apply(&[set("search_path", "b")]);
        s.transaction_failed();
        s.end_transaction(&mut server);
        assert_eq!(server, Settings::unknown(), "server state uncertain after a failed change");
        assert_eq!(s.current(), &committed, "rolled-back SET does not stick");
        server = committed.clone(); // as the next unit's sync leaves it
        s.apply(&[SessionEffect::Set { name: "work_mem".into(), value: "'1MB'".into(), local: true }]);
        s.end_transaction(&mut server);
        assert_eq!(server, committed, "SET LOCAL leaves nothing behind");
        s.apply(&[SessionEffect::DiscardAll]);
        s.end_transaction(&mut server);
        assert!(server.is_empty());
    }

    #[test]
    fn reset_returns_the_startup_value() {
        let mut startup = Settings::default();
        startup.set_text("DateStyle", "Postgres, MDY");
        let mut s = ClientSettings::from_startup(startup.clone());
        let mut server = startup.clone();
        s.apply(&[set("datestyle", "'ISO'")]);
        s.end_transaction(&mut server);
        s.apply(&[SessionEffect::Reset { name: "DateStyle".into() }]);
        s.end_transaction(&mut server);
        assert_eq!(s.current(), &startup, "RESET returns the startup value");
        assert_eq!(server, Settings::default(), "the server went to its own default for DateStyle");
        assert_eq!(
            s.current().sync_sql(&server).unwrap(),
            "RESET \"datestyle\"; SELECT pg_catalog.set_config('datestyle', 'Postgres, MDY', false)"
        );
        server = s.current().clone();
        s.apply(&[set("work_mem", "'2MB'"), SessionEffect::ResetAll]);
        s.end_transaction(&mut server);
        assert_eq!(s.current(), &startup, "RESET ALL likewise");
        s.apply(&[SessionEffect::DiscardAll]);
        s.end_transaction(&mut server);
        assert_eq!(s.current(), &startup, "DISCARD ALL likewise");
    }
}
