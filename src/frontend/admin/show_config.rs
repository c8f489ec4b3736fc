//! SHOW CONFIG: every key of the running configuration and its value, passwords masked.

use super::Table;
use crate::frontend::shared::Shared;

pub fn show_config(shared: &Shared) -> Table {
    let mut table = Table::new(&["key", "value"]);
    let value = toml::Value::try_from(shared.config().as_written()).unwrap_or(toml::Value::Table(Default::default()));
    let mut rows = Vec::new();
    flatten("", &value, &mut rows);
    for (key, value) in rows {
        table.row(vec![Some(key), Some(value)]);
    }
    table
}

/// One (dotted key, value) per leaf, arrays of tables by index (`users[0].name`).
pub(super) fn flatten(prefix: &str, value: &toml::Value, rows: &mut Vec<(String, String)>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                flatten(&key, value, rows);
            }
        }
        toml::Value::Array(items) if items.iter().all(toml::Value::is_table) && !items.is_empty() => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, rows);
            }
        }
        _ if is_secret(prefix) => rows.push((prefix.to_string(), "********".to_string())),
        toml::Value::String(s) => rows.push((prefix.to_string(), s.clone())),
        other => rows.push((prefix.to_string(), other.to_string())),
    }
}

fn is_secret(key: &str) -> bool {
    key.rsplit('.').next().is_some_and(|last| last.contains("password") || last.contains("secret"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dotted_and_passwords_masked() {
        let value: toml::Value =
            toml::from_str("[pool]\nsize = 3\n[[users]]\nname = \"app\"\npassword = \"hunter2\"\n").unwrap();
        let mut rows = Vec::new();
        flatten("", &value, &mut rows);
        assert_eq!(
            rows,
            vec![
                ("pool.size".to_string(), "3".to_string()),
                ("users[0].name".to_string(), "app".to_string()),
                ("users[0].password".to_string(), "********".to_string()),
            ]
        );
    }
}
