//! `FunctionCatalog`: which function calls force a SELECT to the leader (volatile set plus overrides).
//!
//! The caller loads `(schema, name, provolatile)` rows from `pg_proc`, builds a
//! catalog, keeps it in an `Arc` and swaps it in via `Classifier::set_catalog`.
//! Until then [`FunctionCatalog::builtin`] covers the well-known writers, so
//! routing is safe from the first query.
//!
//! Names are matched case-insensitively (lowercased once at build time; the
//! scanner lowercases call names into a stack buffer), which can only err
//! towards the leader. An unqualified call matches a volatile function of that
//! name in any schema, because the session's search_path is unknown here.

use std::collections::HashSet;

/// Volatile built-ins that write, take locks, or only make sense on the
/// primary. Always in the leader set, before and after the catalog loads.
const DEFAULT_LEADER_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    // currval/lastval read state left by nextval in this session, which ran on the leader.
    "currval",
    "lastval",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_notify",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_from_bytea",
    "lo_put",
    "lo_open",
    "lo_write",
    "lowrite",
    "lo_truncate",
    "lo_truncate64",
    "pg_promote",
    "pg_create_restore_point",
    "pg_switch_wal",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_logical_emit_message",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_export_snapshot",
    // The answer differs on a follower; apps ask it to find the primary.
    "pg_is_in_recovery",
    // These act on backends of the server they run on.
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "dblink_exec",
    "dblink_connect",
    "dblink_connect_u",
];

/// Volatile built-ins that are harmless on a follower (randomness, clocks,
/// sleeping; `set_config` is reported as a session effect instead).
const DEFAULT_READ_ONLY_FUNCTIONS: &[&str] = &[
    "random",
    "random_normal",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "clock_timestamp",
    "timeofday",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "set_config",
    // Introspection that reads, never writes (volatile only because the answer varies).
    "pg_is_in_recovery",
    "inet_server_port",
    "inet_server_addr",
    "inet_client_port",
    "inet_client_addr",
    "pg_backend_pid",
    "pg_postmaster_start_time",
    "pg_last_wal_replay_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_is_wal_replay_paused",
    "txid_current_if_assigned",
    "pg_stat_get_activity",
    "pg_current_logfile",
    "statement_timestamp",
];

/// Config overrides applied on top of the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionOverrides {
    /// Always route to the leader. `name` or `schema.name`; either form also
    /// matches calls of that name in any schema (erring towards the leader).
    pub write_functions: Vec<String>,
    /// Never force the leader (e.g. `random`). A bare name matches calls in any
    /// schema; `schema.name` matches only calls written with that schema.
    /// `write_functions` wins when a name is in both.
    pub read_only_functions: Vec<String>,
}

/// The set of function names whose call sends a read to the leader.
#[derive(Clone, Debug)]
pub struct FunctionCatalog {
    /// Built-in defaults, matched by bare name whatever schema the call names.
    builtin_leader: HashSet<Box<str>>,
    /// Volatile functions from pg_proc, under `name` and `schema.name`.
    leader: HashSet<Box<str>>,
    forced_leader: HashSet<Box<str>>,
    read_only: HashSet<Box<str>>,
    loaded: bool,
}

impl Default for FunctionCatalog {
    fn default() -> Self {
        Self::builtin()
    }
}

fn lowercase(name: &str) -> Box<str> {
    name.trim().to_ascii_lowercase().into_boxed_str()
}

/// Adds `schema.name` and `name` for a qualified entry, `name` alone otherwise.
fn insert_with_bare_name(set: &mut HashSet<Box<str>>, name: &str) {
    let name = lowercase(name);
    if let Some((_, bare)) = name.rsplit_once('.') {
        set.insert(bare.into());
    }
    set.insert(name);
}

impl FunctionCatalog {
    /// The built-in default lists, used until the catalog is loaded.
    pub fn builtin() -> Self {
        Self::with_overrides(&FunctionOverrides::default())
    }

    /// The built-in defaults plus config overrides (catalog not loaded yet).
    pub fn with_overrides(overrides: &FunctionOverrides) -> Self {
        let mut catalog = FunctionCatalog {
            builtin_leader: DEFAULT_LEADER_FUNCTIONS.iter().map(|&n| n.into()).collect(),
            leader: HashSet::new(),
            forced_leader: HashSet::new(),
            read_only: DEFAULT_READ_ONLY_FUNCTIONS.iter().map(|&n| n.into()).collect(),
            loaded: false,
        };
        for name in &overrides.write_functions {
            insert_with_bare_name(&mut catalog.forced_leader, name);
        }
        for name in &overrides.read_only_functions {
            catalog.read_only.insert(lowercase(name));
        }
        catalog
    }

    /// Builds from `pg_proc` rows `(nspname, proname, provolatile)`; rows with
    /// `provolatile = 'v'` enter the leader set under both `name` and `schema.name`.
    pub fn from_pg_proc<I, S, N>(rows: I, overrides: &FunctionOverrides) -> Self
    where
        I: IntoIterator<Item = (S, N, char)>,
        S: AsRef<str>,
        N: AsRef<str>,
    {
        let mut catalog = Self::with_overrides(overrides);
        for (schema, name, volatility) in rows {
            if volatility == 'v' {
                let (schema, name) = (lowercase(schema.as_ref()), lowercase(name.as_ref()));
                catalog.leader.insert(format!("{schema}.{name}").into());
                catalog.leader.insert(name);
            }
        }
        catalog.loaded = true;
        catalog
    }

    /// Whether this catalog came from `pg_proc` (false: built-in defaults only).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Number of names (bare and qualified) in the leader set.
    pub fn len(&self) -> usize {
        self.builtin_leader.len() + self.leader.len() + self.forced_leader.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a call sends the statement to the leader. `schema` and `name`
    /// must already be lowercase; `qualified` is `schema.name` when `schema` is
    /// given (the caller builds it in a stack buffer, so this never allocates).
    pub fn needs_leader(&self, schema: Option<&str>, name: &str, qualified: &str) -> bool {
        let key = if schema.is_some() { qualified } else { name };
        if self.forced_leader.contains(key) || self.forced_leader.contains(name) {
            return true;
        }
        if self.read_only.contains(key) || self.read_only.contains(name) {
            return false;
        }
        self.leader.contains(key) || self.builtin_leader.contains(name)
    }

    /// Convenience form of [`needs_leader`](Self::needs_leader) for `name` or `schema.name`
    /// in any case (allocates; for tests and tools, not the hot path).
    pub fn is_leader_function(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match name.rsplit_once('.') {
            Some((schema, bare)) => self.needs_leader(Some(schema), bare, &name),
            None => self.needs_leader(None, &name, &name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_defaults() {
        let c = FunctionCatalog::builtin();
        assert!(!c.is_loaded());
        assert!(c.is_leader_function("nextval"));
        assert!(c.is_leader_function("PG_CATALOG.NextVal"));
        assert!(!c.is_leader_function("random"));
        assert!(!c.is_leader_function("lower"));
    }

    #[test]
    fn catalog_rows_and_overrides() {
        let rows = [
            ("app", "write_fn", 'v'),
            ("app", "Stable_Fn", 's'),
            ("pg_catalog", "random", 'v'),
            ("pg_catalog", "now", 's'),
        ];
        let overrides = FunctionOverrides {
            write_functions: vec!["app.audit".into(), "random".into()],
            read_only_functions: vec!["app.cheap".into(), "random".into()],
        };
        let c = FunctionCatalog::from_pg_proc(rows, &overrides);
        assert!(c.is_loaded());
        assert!(c.is_leader_function("app.write_fn"));
        assert!(c.is_leader_function("write_fn"));
        assert!(!c.is_leader_function("other.write_fn"));
        assert!(!c.is_leader_function("app.stable_fn"));
        assert!(c.is_leader_function("audit"));
        // write_functions beats read_only_functions and the default read-only list.
        assert!(c.is_leader_function("random"));
        assert!(!c.is_leader_function("now"));
    }

    #[test]
    fn read_only_override_beats_catalog() {
        let rows = [("app", "cheap", 'v'), ("pg_catalog", "random", 'v')];
        let overrides = FunctionOverrides { write_functions: vec![], read_only_functions: vec!["app.cheap".into()] };
        let c = FunctionCatalog::from_pg_proc(rows, &overrides);
        assert!(!c.is_leader_function("app.cheap"));
        // The qualified entry does not cover unqualified calls, which might resolve elsewhere.
        assert!(c.is_leader_function("cheap"));
        // The default read-only list survives loading.
        assert!(!c.is_leader_function("random"));
    }
}
