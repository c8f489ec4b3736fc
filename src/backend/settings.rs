//! Session settings beyond the server defaults (SET, set_config, startup options), as statements
//! that reproduce them; a client carries its own, a server connection carries what it last got.

use crate::lexical::{quote_literal, quote_qualified};

/// Settings in the order they were made (SET SESSION AUTHORIZATION before SET ROLE matters).
/// Identity follows PostgreSQL: setting or resetting SESSION AUTHORIZATION also resets ROLE.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct Settings {
    /// (lowercase name, SQL that sets it).
    entries: Vec<(String, String)>,
    /// Nobody knows what this server carries (a failed transaction changed settings): reset all.
    unknown: bool,
}

/// Settings that RESET ALL leaves alone and that need their own RESET syntax.
fn reset_sql(name: &str) -> String {
    match name {
        "role" => "RESET ROLE".into(),
        "session_authorization" => "RESET SESSION AUTHORIZATION".into(),
        other => format!("RESET {}", quote_qualified(other)),
    }
}

/// Whether a DateStyle SET names both the output style and the field order (German implies DMY),
/// so nothing of the value before it survives.
fn sets_whole_datestyle(sql: &str) -> bool {
    let words: Vec<String> = sql
        .split(|c: char| !c.is_ascii_alphanumeric())
        .map(str::to_ascii_lowercase)
        .filter(|w| !w.is_empty())
        .collect();
    let has = |set: &[&str]| words.iter().any(|w| set.contains(&w.as_str()));
    has(&["german", "default"])
        || (has(&["iso", "sql", "postgres"]) && has(&["dmy", "mdy", "ymd", "euro", "european", "us", "noneuropean"]))
}

fn is_identity(name: &str) -> bool {
    name == "role" || name == "session_authorization"
}

/// One name per setting: `SET TIME ZONE` is `timezone`.
fn canonical(name: String) -> String {
    if name == "time zone" {
        "timezone".to_string()
    } else {
        name
    }
}

impl Settings {
    pub fn unknown() -> Settings {
        Settings { entries: Vec::new(), unknown: true }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && !self.unknown
    }

    /// Records `SET name TO value` (`value` is SQL text, as the client wrote it).
    pub fn set(&mut self, name: &str, value_sql: &str) {
        let name = name.to_ascii_lowercase();
        let sql = match name.as_str() {
            "role" => format!("SET ROLE {value_sql}"),
            "session_authorization" => format!("SET SESSION AUTHORIZATION {value_sql}"),
            _ => format!("SET {} TO {value_sql}", quote_qualified(&name)),
        };
        self.put(name, sql);
    }

    /// Records a plain-text value (startup options, set_config arguments).
    pub fn set_text(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        let sql = format!("SELECT pg_catalog.set_config({}, {}, false)", quote_literal(&name), quote_literal(value));
        self.put(name, sql);
    }

    fn put(&mut self, name: String, sql: String) {
        let name = canonical(name);
        let sql = match (name.as_str(), self.get(&name)) {
            // A DateStyle SET may change one part (style or order) and keep the other: the entry
            // replays every SET since one that set both, from the server's default.
            ("datestyle", _) if sql.starts_with("RESET") => sql, // adopted whole from another entry
            ("datestyle", Some(before)) if !sets_whole_datestyle(&sql) => format!("{before}; {sql}"),
            ("datestyle", _) => format!("RESET \"datestyle\"; {sql}"),
            _ => sql,
        };
        self.forget(&name);
        self.entries.push((name, sql));
    }

    /// Drops `name` (already canonical), and ROLE with SESSION AUTHORIZATION as PostgreSQL does.
    fn forget(&mut self, name: &str) {
        let identity = name == "session_authorization";
        self.entries.retain(|(n, _)| n != name && !(identity && n == "role"));
    }

    pub fn reset(&mut self, name: &str) {
        self.forget(&canonical(name.to_ascii_lowercase()));
    }

    /// The entry for `name` (the SQL that sets it), if any.
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = canonical(name.to_ascii_lowercase());
        self.entries.iter().find(|(n, _)| *n == name).map(|(_, sql)| sql.as_str())
    }

    /// Names this carries, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Copies `other`'s entry for `name` (RESET returning a startup value).
    pub fn adopt(&mut self, other: &Settings, name: &str) {
        let name = canonical(name.to_ascii_lowercase());
        if let Some((n, sql)) = other.entries.iter().find(|(n, _)| *n == name) {
            self.put(n.clone(), sql.clone());
        }
    }

    fn has_identity(&self) -> bool {
        self.entries.iter().any(|(n, _)| is_identity(n))
    }

    /// RESET ALL: everything but role and session authorization.
    pub fn reset_all(&mut self) {
        self.entries.retain(|(n, _)| n == "role" || n == "session_authorization");
    }

    /// DISCARD ALL: nothing left.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.unknown = false;
    }

    /// SQL turning a server that carries `from` into one that carries `self`; None if equal.
    /// Whenever either side changed its identity (or `from` is unknown) it starts from the
    /// login identity with every setting reset, then replays the client's settings in order:
    /// another client's role must never decide what the replay may do.
    pub fn sync_sql(&self, from: &Settings) -> Option<String> {
        if self == from {
            return None;
        }
        let mut sql = Vec::new();
        if from.unknown || from.has_identity() || self.has_identity() {
            sql.extend(["RESET SESSION AUTHORIZATION", "RESET ROLE", "RESET ALL"].map(String::from));
            sql.extend(self.entries.iter().map(|(_, s)| s.clone()));
            return Some(sql.join("; "));
        }
        for (name, _) in &from.entries {
            if !self.entries.iter().any(|(n, _)| n == name) {
                sql.push(reset_sql(name));
            }
        }
        // Re-apply in order from the first entry that differs, so ordering stays as the client made it.
        let same_prefix = self.entries.iter().zip(&from.entries).take_while(|(a, b)| a == b).count();
        sql.extend(self.entries[same_prefix..].iter().map(|(_, s)| s.clone()));
        Some(sql.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_resets_what_the_client_lacks_and_sets_what_differs() {
        let mut server = Settings::default();
        server.set("search_path", "other");
        server.set("work_mem", "'8MB'");
        let mut client = Settings::default();
        client.set("TimeZone", "'UTC'");
        assert_eq!(
            client.sync_sql(&server).unwrap(),
            "RESET \"search_path\"; RESET \"work_mem\"; SET \"timezone\" TO 'UTC'"
        );
        assert_eq!(client.sync_sql(&client.clone()), None);
        client.set_text("application_name", "it's");
        assert!(client
            .sync_sql(&Settings::default())
            .unwrap()
            .ends_with("set_config('application_name', 'it''s', false)"));
    }

    #[test]
    fn reset_all_keeps_role_and_discard_clears() {
        let mut s = Settings::default();
        s.set("role", "r");
        s.set("work_mem", "'4MB'");
        s.reset_all();
        assert_eq!(
            s.sync_sql(&Settings::default()).unwrap(),
            "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; SET ROLE r"
        );
        s.clear();
        assert!(s.is_empty());
        s.set("time zone", "'UTC'");
        s.reset("timezone");
        assert!(s.is_empty());
    }

    #[test]
    fn datestyle_sets_that_change_one_part_keep_the_other() {
        let mut s = Settings::default();
        s.set("DateStyle", "iso");
        s.set("datestyle", "ymd");
        assert_eq!(
            s.sync_sql(&Settings::default()).unwrap(),
            "RESET \"datestyle\"; SET \"datestyle\" TO iso; SET \"datestyle\" TO ymd"
        );
        s.set_text("DateStyle", "Postgres, MDY");
        assert_eq!(
            s.sync_sql(&Settings::default()).unwrap(),
            "RESET \"datestyle\"; SELECT pg_catalog.set_config('datestyle', 'Postgres, MDY', false)"
        );
    }

    #[test]
    fn session_authorization_resets_role_and_identity_replays_from_the_login() {
        // The reproduction of issue 13: X's role must not survive X's own SESSION AUTHORIZATION.
        let mut x = Settings::default();
        x.set("session_authorization", "a");
        x.set("role", "b");
        x.set("session_authorization", "c");
        assert_eq!(x.get("role"), None, "SESSION AUTHORIZATION resets ROLE");
        let mut y = Settings::default();
        y.set("session_authorization", "low");
        y.set("search_path", "private");
        assert_eq!(
            x.sync_sql(&y).unwrap(),
            "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL; SET SESSION AUTHORIZATION c"
        );
        // A client without identity changes on a connection that had one: back to the login.
        let plain = Settings::default();
        assert_eq!(plain.sync_sql(&y).unwrap(), "RESET SESSION AUTHORIZATION; RESET ROLE; RESET ALL");
        let mut with_role = Settings::default();
        with_role.set("role", "b");
        with_role.reset("session_authorization");
        assert_eq!(with_role.get("role"), None, "RESET SESSION AUTHORIZATION resets ROLE");
    }
}
