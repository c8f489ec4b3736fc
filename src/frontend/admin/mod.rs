//! The admin console: a client that logs in to database `pgcausal` as a user in `[admin] users`
//! gets commands (SHOW NODES, RELOAD, PAUSE, ...) answered by the proxy as result sets that psql
//! shows as tables. One file per command; this one runs the console's conversation.

pub mod command;
mod kill;
mod pause;
mod promote;
pub mod reload;
mod show_clients;
mod show_config;
mod show_failovers;
mod show_nodes;
mod show_pools;
mod show_servers;
mod show_stats;
mod shutdown;
mod switchover;

pub use show_stats::mark_start as start_counting;
mod show_version;

use super::client_stream::ClientStream;
use super::clients::{signal, ClientEntry};
use super::shared::Shared;
use super::startup::ClientLogin;
use crate::error::ProxyError;
use crate::protocol::framing;
use crate::protocol::messages::{self, ResultSet, Severity};
use crate::protocol::{fe, TxStatus};
use bytes::BytesMut;
use command::{Command, Show};
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A console command's result: a table of text columns (NULL as None).
pub struct Table {
    set: ResultSet,
}

impl Table {
    pub fn new(columns: &[&str]) -> Table {
        Table { set: ResultSet::new(columns) }
    }

    pub fn row(&mut self, values: Vec<Option<String>>) {
        let values: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
        self.set.row(&values);
    }

    fn write(&self, out: &mut BytesMut) {
        self.set.write(out, "SHOW");
    }
}

/// What a command answers: a table, or a command tag alone.
pub enum Answer {
    Table(Table),
    Done(&'static str),
    /// Done, with what happened told in a NOTICE first.
    Told(&'static str, String),
}

/// A time as PostgreSQL prints a timestamptz in UTC (`2026-12-02 01:19:47+00`).
pub fn unix_time(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(t).to_string(); // 2026-12-02T01:19:47Z
    format!("{}+00", text.trim_end_matches('Z').replacen('T', " ", 1))
}

/// The ParameterStatus values the console reports: its own version, the encodings psql needs.
fn parameters() -> Vec<(String, String)> {
    [
        ("server_version", concat!(env!("CARGO_PKG_VERSION"), "/pgcausal")),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", "pgcausal"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Runs an admin client's session: simple queries only, one command each.
pub async fn run(
    client: &mut ClientStream,
    login: &ClientLogin,
    shared: &Shared,
    me: &ClientEntry,
) -> Result<(), ProxyError> {
    let mut out = BytesMut::new();
    messages::put_login_ok(&mut out, &parameters(), 0, 0);
    client.write_all(&out).await?;
    tracing::info!(user = %login.user, "admin console session started");
    let mut input = BytesMut::with_capacity(1024);
    let mut skip_to_sync = false;
    loop {
        let Some((tag, total)) = framing::peek_header(&input, 1024 * 1024)? else {
            tokio::select! {
                read = client.reader.read_buf(&mut input) => if read? == 0 { return Ok(()) },
                _ = me.signalled(signal::KILL | signal::SHUTDOWN) => return Err(ProxyError::AdminShutdown),
            }
            continue;
        };
        if input.len() < total {
            input.reserve(total - input.len());
            tokio::select! {
                read = client.reader.read_buf(&mut input) => if read? == 0 { return Ok(()) },
                _ = me.signalled(signal::KILL) => return Err(ProxyError::AdminShutdown),
            }
            continue;
        }
        let message = input.split_to(total);
        out.clear();
        match tag {
            fe::TERMINATE => return Ok(()),
            fe::QUERY => {
                let sql = messages::read_cstr(&message[5..]).map(|(q, _)| String::from_utf8_lossy(q).into_owned());
                answer(&sql.unwrap_or_default(), shared, &mut out).await;
                out.extend_from_slice(&messages::ready_for_query(TxStatus::Idle));
            }
            fe::SYNC => {
                skip_to_sync = false;
                out.extend_from_slice(&messages::ready_for_query(TxStatus::Idle));
            }
            unknown if !fe::known_after_login(unknown) => return Err(ProxyError::UnknownMessageType(unknown)),
            _ if skip_to_sync => continue,
            _ => {
                // Parse, Bind, ...: the console is for psql and scripts, which send simple queries.
                let e = ProxyError::Protocol("the admin console takes simple queries only".into());
                e.count();
                out.extend_from_slice(&e.error_response(Severity::Error));
                skip_to_sync = true;
            }
        }
        client.write_all(&out).await?;
    }
}

/// Runs one query string and writes its answer (without ReadyForQuery).
async fn answer(sql: &str, shared: &Shared, out: &mut BytesMut) {
    let result = match command::parse(sql) {
        Ok(None) => {
            out.extend_from_slice(messages::EMPTY_QUERY_RESPONSE);
            return;
        }
        Ok(Some(command)) => execute(command, shared).await,
        Err(e) => Err(ProxyError::AdminCommand(e)),
    };
    match result {
        Ok(Answer::Table(table)) => table.write(out),
        Ok(Answer::Done(tag)) => messages::put_command_complete(out, tag),
        Ok(Answer::Told(tag, what)) => {
            messages::put_error(out, crate::protocol::be::NOTICE_RESPONSE, "NOTICE", "00000", &what);
            messages::put_command_complete(out, tag);
        }
        Err(e) => {
            tracing::info!(command = sql, error = %e, "admin command failed");
            e.count();
            out.extend_from_slice(&e.error_response(Severity::Error));
        }
    }
}

async fn execute(command: Command, shared: &Shared) -> Result<Answer, ProxyError> {
    tracing::info!(?command, "admin command");
    Ok(match command {
        Command::Show(show) => Answer::Table(match show {
            Show::Nodes => show_nodes::show_nodes(shared),
            Show::Pools => show_pools::show_pools(shared),
            Show::Clients => show_clients::show_clients(shared),
            Show::Servers => show_servers::show_servers(shared),
            Show::Stats => show_stats::show_stats(shared),
            Show::Config => show_config::show_config(shared),
            Show::Version => show_version::show_version(),
            Show::Help => show_version::show_help(),
            Show::Failovers => show_failovers::show_failovers(shared),
        }),
        Command::Reload => reload::reload(shared).map(|_| Answer::Done("RELOAD"))?,
        Command::Pause => pause::pause(shared).await,
        Command::Resume => pause::resume(shared),
        Command::Shutdown => shutdown::shutdown(shared),
        Command::Kill(id) => kill::kill(shared, id)?,
        Command::Promote { node, force } => promote::promote(shared, node, force).await?,
        Command::Switchover { to } => switchover::switchover(shared, to).await?,
    })
}
