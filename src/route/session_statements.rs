//! Session-state statements: SET / RESET / SHOW / DISCARD, `set_config()` calls and `pgcausal.*` proxy commands.

use sqlparser::ast::{
    ContextModifier, DiscardObject, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName,
    ObjectNamePart, Query, Reset, ResetStatement, SelectItem, Set, SetExpr, TransactionAccessMode, TransactionMode,
    Value,
};

use crate::route::{Classification, Pin, Reason, SessionEffect, TxControl, Unpin};

/// Settings under this prefix belong to the proxy and never reach a server.
const PROXY_PREFIX: &str = "pgcausal.";

/// An identifier as the server stores it: unquoted ones are case-folded.
pub(crate) fn ident_name(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_ascii_lowercase(),
    }
}

/// The last part of a possibly qualified name (tables are matched by that).
pub(crate) fn last_name(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => ident_name(ident),
        Some(part) => part.to_string(),
        None => String::new(),
    }
}

/// Configuration parameter names are case-insensitive, quoted or not.
fn guc_name<'a>(parts: impl IntoIterator<Item = &'a Ident>) -> String {
    let parts: Vec<String> = parts.into_iter().map(|i| i.value.to_ascii_lowercase()).collect();
    parts.join(".")
}

fn object_guc_name(name: &ObjectName) -> String {
    guc_name(name.0.iter().filter_map(ObjectNamePart::as_ident))
}

/// SQL text for `SET name TO <value>`: the values as written, comma-separated.
fn sql_text(values: &[Expr]) -> String {
    let parts: Vec<String> = values.iter().map(Expr::to_string).collect();
    parts.join(", ")
}

/// Plain text for proxy settings: strings unquoted, unquoted identifiers lowercased.
fn plain_text(values: &[Expr]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|value| match value {
            Expr::Value(v) => v.value.clone().into_string().unwrap_or_else(|| v.value.to_string()),
            Expr::Identifier(ident) => ident_name(ident),
            other => other.to_string(),
        })
        .collect();
    parts.join(", ")
}

fn assignment(name: String, values: &[Expr], local: bool) -> Classification {
    let mut c = Classification::leader(Reason::Session);
    c.cacheable = false; // the value is a literal the fingerprint ignores
    c.session.push(if name.starts_with(PROXY_PREFIX) {
        c.reason = Reason::ProxyCommand;
        SessionEffect::ProxySet { name, value: plain_text(values) }
    } else {
        SessionEffect::Set { name, value: sql_text(values), local }
    });
    c
}

fn simple_set(name: &str, value: String, local: bool) -> Classification {
    let mut c = Classification::leader(Reason::Session);
    c.cacheable = false;
    c.session.push(SessionEffect::Set { name: name.into(), value, local });
    c
}

/// The last access mode among `modes` (`READ ONLY` => true).
pub(crate) fn read_only_mode(modes: &[TransactionMode]) -> Option<bool> {
    modes.iter().rev().find_map(|mode| match mode {
        TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => Some(true),
        TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => Some(false),
        TransactionMode::IsolationLevel(_) => None,
    })
}

pub(crate) fn set(set: &Set) -> Classification {
    let is_local = |scope: &Option<ContextModifier>| matches!(scope, Some(ContextModifier::Local));
    match set {
        Set::SingleAssignment { scope, variable, values, .. } => {
            assignment(object_guc_name(variable), values, is_local(scope))
        }
        Set::MultipleAssignments { assignments } => {
            let mut c = Classification::leader(Reason::Session);
            for a in assignments {
                let next = assignment(object_guc_name(&a.name), std::slice::from_ref(&a.value), is_local(&a.scope));
                c.merge(next);
            }
            c.statement_count = 1;
            c
        }
        Set::SetTransaction { modes, snapshot, session } => set_transaction(modes, snapshot.is_some(), *session),
        Set::SetRole { context_modifier, role_name } => {
            let role = role_name.as_ref().map_or_else(|| "NONE".into(), Ident::to_string);
            simple_set("role", role, is_local(context_modifier))
        }
        Set::SetTimeZone { local, value } => simple_set("timezone", value.to_string(), *local),
        Set::SetNames { charset_name, .. } => simple_set("client_encoding", charset_name.to_string(), false),
        Set::SetSessionAuthorization(param) => {
            simple_set("session_authorization", param.kind.to_string(), param.scope == ContextModifier::Local)
        }
        _ => {
            // A form the proxy cannot replay: keep the session on the leader.
            let mut c = Classification::leader(Reason::Session);
            c.pins.push(Pin::UntrackedSessionState);
            c
        }
    }
}

fn set_transaction(modes: &[TransactionMode], snapshot: bool, session: bool) -> Classification {
    if session {
        // SET SESSION CHARACTERISTICS AS TRANSACTION ...: new session defaults.
        let mut c = Classification::leader(Reason::Session);
        for mode in modes {
            let (name, value) = match mode {
                TransactionMode::AccessMode(TransactionAccessMode::ReadOnly) => {
                    ("default_transaction_read_only", "on".into())
                }
                TransactionMode::AccessMode(TransactionAccessMode::ReadWrite) => {
                    ("default_transaction_read_only", "off".into())
                }
                TransactionMode::IsolationLevel(level) => {
                    ("default_transaction_isolation", format!("'{}'", level.to_string().to_ascii_lowercase()))
                }
            };
            c.session.push(SessionEffect::Set { name: name.into(), value, local: false });
        }
        return c;
    }
    let mut c = Classification::leader(Reason::Transaction);
    if snapshot {
        return c; // SET TRANSACTION SNAPSHOT imports a snapshot exported on the leader
    }
    match read_only_mode(modes) {
        Some(true) => {
            c.target = crate::route::Target::Follower;
            c.tx = TxControl::SetTransactionReadOnly;
        }
        Some(false) => c.tx = TxControl::SetTransactionReadWrite,
        None => {}
    }
    c
}

pub(crate) fn reset(reset: &ResetStatement) -> Classification {
    let mut c = Classification::leader(Reason::Session);
    c.session.push(match &reset.reset {
        Reset::ALL => SessionEffect::ResetAll,
        Reset::SessionAuthorization => SessionEffect::Reset { name: "session_authorization".into() },
        Reset::ConfigurationParameter(name) => {
            let name = object_guc_name(name);
            if name.starts_with(PROXY_PREFIX) {
                c.reason = Reason::ProxyCommand;
                SessionEffect::ProxyReset { name }
            } else {
                SessionEffect::Reset { name }
            }
        }
    });
    c
}

pub(crate) fn show(variable: &[Ident]) -> Classification {
    let name = guc_name(variable);
    if name.starts_with(PROXY_PREFIX) {
        let mut c = Classification::leader(Reason::ProxyCommand);
        c.session.push(SessionEffect::ProxyShow { name });
        c
    } else {
        Classification::follower(Reason::Read)
    }
}

pub(crate) fn discard(object: DiscardObject) -> Classification {
    let mut c = Classification::leader(Reason::Session);
    match object {
        DiscardObject::ALL => {
            c.session.push(SessionEffect::DiscardAll);
            c.unpins.push(Unpin::DiscardAll);
        }
        DiscardObject::TEMP => c.unpins.push(Unpin::DiscardTemp),
        DiscardObject::PLANS | DiscardObject::SEQUENCES => {}
    }
    c
}

/// Records `set_config('name', 'value', is_local)` calls with literal arguments
/// in the top-level select list. Calls found elsewhere, or with computed
/// arguments, are left for the token scan to pin as untracked.
pub(crate) fn set_config_calls(query: &Query, c: &mut Classification) {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return;
    };
    for item in &select.projection {
        let (SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. }) = item else {
            continue;
        };
        if let Some(effect) = literal_set_config(expr) {
            c.session.push(effect);
            c.cacheable = false;
        }
    }
}

fn literal_set_config(expr: &Expr) -> Option<SessionEffect> {
    let Expr::Function(f) = expr else { return None };
    let parts: Vec<String> = f.name.0.iter().map(|p| p.to_string().to_ascii_lowercase()).collect();
    if !matches!(parts.as_slice(), [n] | [_, n] if n == "set_config") || (parts.len() == 2 && parts[0] != "pg_catalog")
    {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let args: Vec<&Value> = list
        .args
        .iter()
        .map(|arg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => Some(&v.value),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let [name, value, is_local] = args.as_slice() else {
        return None;
    };
    let string = |v: &Value| match v {
        Value::SingleQuotedString(_)
        | Value::EscapedStringLiteral(_)
        | Value::UnicodeStringLiteral(_)
        | Value::NationalStringLiteral(_)
        | Value::DollarQuotedString(_) => v.clone().into_string(),
        _ => None,
    };
    let is_local = match is_local {
        Value::Boolean(b) => *b,
        other => match string(other)?.trim().to_ascii_lowercase().as_str() {
            "t" | "true" | "on" | "yes" | "y" | "1" => true,
            "f" | "false" | "off" | "no" | "n" | "0" => false,
            _ => return None,
        },
    };
    Some(SessionEffect::SetConfigCall { name: string(name)?.to_ascii_lowercase(), value: string(value)?, is_local })
}
