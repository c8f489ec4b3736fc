//! `classify()`: routes one SQL string by its statements' AST (sqlparser, PostgreSqlDialect) and token facts.
//!
//! Default-deny: only statements recognized as reads are follower-eligible;
//! anything unknown or unparseable goes to the leader.

use sqlparser::ast::{
    CloseCursor, CopySource, CopyTarget, Declare, DeclareType, Expr, ObjectName, ObjectNamePart, ObjectType, Query,
    SelectInto, SetExpr, Statement, UtilityOption,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::route::scan::{split_statements, Facts};
use crate::route::session_statements::{self, ident_name, last_name};
use crate::route::{
    fallback, Classification, FunctionCatalog, Hint, Pin, Reason, SessionEffect, Target, TxControl, Unpin,
};

/// Classifies a SQL string (possibly several `;`-separated statements, which
/// route as one unit: leader if any of them needs it).
///
/// Hints: `/* pgcausal:leader */` always sends to the leader. `/* pgcausal:follower */`
/// overrides only *soft* leader reasons (a volatile function call, an
/// unparseable read); it never sends a write, lock, transaction or session
/// statement to a follower, which would fail there anyway.
pub fn classify(sql: &str, functions: &FunctionCatalog) -> Classification {
    let (hint, statements) = split_statements(sql);
    let mut result = Classification::follower(Reason::Read);
    result.statement_count = 0;
    for text in statements {
        result.merge(classify_one(text, functions));
    }
    result.hint = hint;
    match hint {
        Some(Hint::Leader) if result.target == Target::Follower => {
            result.target = Target::Leader;
            result.reason = Reason::Hint;
        }
        Some(Hint::Follower) if result.target == Target::Leader && result.reason.is_soft() => {
            result.target = Target::Follower;
            result.reason = Reason::Hint;
        }
        _ => {}
    }
    result
}

/// Classifies a single statement's text.
fn classify_one(text: &str, functions: &FunctionCatalog) -> Classification {
    let facts = Facts::scan(text, functions);
    let (mut c, runs) = match fallback::before_parse(&facts) {
        Some(c) => (c, true),
        None => parse_and_route(text, &facts),
    };
    if runs {
        apply_runtime_facts(&mut c, &facts);
    }
    c.writes |= c.route_writes();
    c
}

/// Routes by the AST; the flag says whether the statement runs (EXPLAIN
/// without ANALYZE and PREPARE only plan, so their function calls do not count).
fn parse_and_route(text: &str, facts: &Facts) -> (Classification, bool) {
    match Parser::parse_sql(&PostgreSqlDialect {}, text) {
        Ok(statements) => {
            let mut c = Classification::follower(Reason::Read);
            c.statement_count = 0;
            for s in &statements {
                c.merge(statement(s));
            }
            // One `;`-free text is one statement for the caller, however sqlparser saw it.
            c.statement_count = 1;
            (c, statements.iter().any(executes))
        }
        Err(error) => {
            // Not logging the text: it may hold literal values.
            tracing::debug!(%error, "sqlparser rejected a statement; routing by keywords");
            (fallback::after_parse_error(facts), true)
        }
    }
}

/// What the statement's function calls and locking clauses do when it runs.
fn apply_runtime_facts(c: &mut Classification, facts: &Facts) {
    if facts.locking_clause {
        c.require_leader(Reason::Locking);
    }
    if facts.volatile_call {
        c.require_leader(Reason::VolatileFunction);
    }
    if facts.node_local {
        c.require_leader(Reason::NodeLocal);
    }
    c.sequence_state |= facts.sequence_state;
    // A pin means the state must be created on the leader too, so a follower
    // hint may not move these statements.
    if facts.advisory_lock {
        c.pins.push(Pin::AdvisoryLock);
        c.require_leader(Reason::Session);
    }
    if facts.advisory_unlock_all {
        c.unpins.push(Unpin::AdvisoryUnlockAll);
        c.require_leader(Reason::Session);
    }
    let tracked = c.session.iter().filter(|e| matches!(e, SessionEffect::SetConfigCall { .. })).count();
    if facts.set_config_calls > tracked {
        c.pins.push(Pin::UntrackedSessionState);
        c.require_leader(Reason::Session);
    }
}

/// False for statements whose body is only planned or stored, not run.
fn executes(statement: &Statement) -> bool {
    match statement {
        Statement::Explain { analyze, options, statement, .. } => {
            explain_analyzes(*analyze, options.as_deref()) && executes(statement)
        }
        Statement::Prepare { .. } => false,
        _ => true,
    }
}

fn statement(statement: &Statement) -> Classification {
    use Statement as S;
    let leader = Classification::leader;
    let follower = Classification::follower;
    match statement {
        S::Query(query) => read_query(query),
        S::Insert(_) | S::Update(_) | S::Delete(_) | S::Merge(_) => leader(Reason::Write),
        S::Explain { analyze, options, statement: inner, .. } => explain(*analyze, options.as_deref(), inner),
        S::Copy { source, to, target, .. } => copy(source, *to, target),
        S::StartTransaction { modes, .. } => {
            let read_only = session_statements::read_only_mode(modes) == Some(true);
            let target = if read_only { Target::Follower } else { Target::Leader };
            tx(target, TxControl::Begin { read_only })
        }
        // Transaction end and savepoints write nothing themselves; the caller
        // sends them to whichever server holds the open transaction.
        S::Commit { .. } => tx(Target::Follower, TxControl::Commit),
        S::Rollback { savepoint: None, .. } => tx(Target::Follower, TxControl::Rollback),
        S::Rollback { .. } | S::Savepoint { .. } | S::ReleaseSavepoint { .. } => {
            tx(Target::Follower, TxControl::Savepoint)
        }
        S::Set(set) => session_statements::set(set),
        S::Reset(reset) => session_statements::reset(reset),
        S::ShowVariable { variable } => session_statements::show(variable),
        S::Discard { object_type } => session_statements::discard(*object_type),
        S::LISTEN { channel } => {
            let mut c = leader(Reason::Session);
            c.pins.push(Pin::Listen { channel: ident_name(channel) });
            c
        }
        S::UNLISTEN { channel } => {
            let mut c = leader(Reason::Session);
            c.unpins.push(match channel.value.as_str() {
                "*" if channel.quote_style.is_none() => Unpin::UnlistenAll,
                _ => Unpin::Unlisten { channel: ident_name(channel) },
            });
            c
        }
        S::Declare { stmts } => declare(stmts),
        S::Fetch { .. } => follower(Reason::Read),
        S::Close { cursor } => {
            let mut c = follower(Reason::Read);
            c.unpins.push(match cursor {
                CloseCursor::All => Unpin::CloseAllCursors,
                CloseCursor::Specific { name } => Unpin::CloseCursor { name: ident_name(name) },
            });
            c
        }
        S::CreateTable(table) => create(table.temporary, &table.name),
        S::CreateView(view) => create(view.temporary, &view.name),
        S::CreateSequence { temporary, name, .. } => create(*temporary, name),
        S::Drop { object_type: ObjectType::Table | ObjectType::View | ObjectType::Sequence, names, .. } => {
            let mut c = leader(Reason::Write);
            c.unpins.push(Unpin::DropTable { names: names.iter().map(last_name).collect() });
            c
        }
        S::Lock(_) | S::LockTables { .. } => leader(Reason::Locking),
        // SQL-level prepared statements live in one backend; keep them together.
        S::Prepare { .. } | S::Execute { .. } | S::Deallocate { .. } => leader(Reason::Session),
        // DDL, CALL, GRANT/REVOKE, TRUNCATE, COMMENT, and everything not listed.
        _ => leader(Reason::Write),
    }
}

fn tx(target: Target, tx: TxControl) -> Classification {
    let mut c = Classification::new(target, Reason::Transaction);
    c.tx = tx;
    c
}

/// CREATE TABLE/VIEW/SEQUENCE; `TEMP` or an explicit `pg_temp.` schema pins.
fn create(temporary: bool, name: &ObjectName) -> Classification {
    let mut c = Classification::leader(Reason::Write);
    let in_pg_temp = name.0.len() > 1
        && matches!(name.0.first(), Some(ObjectNamePart::Identifier(schema))
            if schema.value.eq_ignore_ascii_case("pg_temp"));
    if temporary || in_pg_temp {
        c.pins.push(Pin::TempTable { name: last_name(name) });
    }
    c
}

/// SELECT / VALUES / WITH: a read unless it writes through a CTE or SELECT INTO.
fn read_query(query: &Query) -> Classification {
    let mut c = Classification::follower(Reason::Read);
    if query_writes(query) {
        c.require_leader(Reason::Write);
    }
    if let Some(into) = select_into(&query.body) {
        c.require_leader(Reason::Write);
        if into.temporary {
            let name = match into.targets.first() {
                Some(Expr::Identifier(ident)) => ident_name(ident),
                Some(Expr::CompoundIdentifier(idents)) => idents.last().map(ident_name).unwrap_or_default(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            c.pins.push(Pin::TempTable { name });
        }
    }
    session_statements::set_config_calls(query, &mut c);
    c
}

/// Data-modifying statements in the body or in any CTE (PostgreSQL allows them only at the top level).
fn query_writes(query: &Query) -> bool {
    let mut ctes = query.with.iter().flat_map(|with| &with.cte_tables);
    ctes.any(|cte| query_writes(&cte.query)) || set_expr_writes(&query.body)
}

fn set_expr_writes(body: &SetExpr) -> bool {
    match body {
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => true,
        SetExpr::Query(query) => query_writes(query),
        SetExpr::SetOperation { left, right, .. } => set_expr_writes(left) || set_expr_writes(right),
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => false,
    }
}

fn select_into(body: &SetExpr) -> Option<&SelectInto> {
    match body {
        SetExpr::Select(select) => select.into.as_ref(),
        SetExpr::SetOperation { left, .. } => select_into(left),
        SetExpr::Query(query) => select_into(&query.body),
        _ => None,
    }
}

/// EXPLAIN only plans (follower); EXPLAIN ANALYZE runs its statement, so it routes like it.
fn explain(analyze: bool, options: Option<&[UtilityOption]>, inner: &Statement) -> Classification {
    let mut c =
        if explain_analyzes(analyze, options) { statement(inner) } else { Classification::follower(Reason::Read) };
    // `ANALYZE 'off'` and `ANALYZE 'on'` share a fingerprint: such a result must not be cached.
    let literal_arg = |o: &UtilityOption| matches!(o.arg, Some(Expr::Value(_)));
    if options.is_some_and(|opts| opts.iter().any(literal_arg)) {
        c.cacheable = false;
    }
    c
}

fn explain_analyzes(analyze: bool, options: Option<&[UtilityOption]>) -> bool {
    let option_on = |o: &UtilityOption| {
        o.name.value.eq_ignore_ascii_case("analyze")
            && match &o.arg {
                None => true,
                Some(Expr::Value(v)) => !is_false_word(v.value.to_string().trim_matches('\'')),
                Some(Expr::Identifier(ident)) => !is_false_word(&ident.value),
                Some(_) => true,
            }
    };
    analyze || options.is_some_and(|opts| opts.iter().any(option_on))
}

fn is_false_word(word: &str) -> bool {
    matches!(word.trim().to_ascii_lowercase().as_str(), "false" | "off" | "0" | "no" | "f" | "n")
}

/// COPY TO STDOUT reads (follower); COPY FROM writes; COPY TO a server file or
/// program has side effects on the server host, which should be the leader.
fn copy(source: &CopySource, to: bool, target: &CopyTarget) -> Classification {
    if !to || !matches!(target, CopyTarget::Stdout) {
        return Classification::leader(Reason::Write);
    }
    match source {
        // COPY (DELETE ... RETURNING) TO STDOUT is legal: route the query itself.
        CopySource::Query(query) => read_query(query),
        CopySource::Table { .. } => Classification::follower(Reason::Read),
    }
}

/// DECLARE of a read is follower-eligible; WITH HOLD outlives the transaction, so it pins.
fn declare(declarations: &[Declare]) -> Classification {
    let mut c = Classification::follower(Reason::Read);
    for d in declarations {
        if let Some(query) = &d.for_query {
            let statement_count = c.statement_count;
            c.merge(read_query(query));
            c.statement_count = statement_count;
        }
        if matches!(d.declare_type, Some(DeclareType::Cursor)) && d.hold == Some(true) {
            c.require_leader(Reason::Session);
            let name = d.names.first().map(ident_name).unwrap_or_default();
            c.pins.push(Pin::HoldCursor { name });
        }
    }
    c
}
