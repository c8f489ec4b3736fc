//! Running the PostgreSQL client tools: a clean environment, the server user when root, psql with
//! SQL on stdin, errors with stderr and log tails, password-masked command lines, quoting.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tracing::debug;

use super::error::{io_err, Result};
use super::{Cluster, ClusterError, SUPERUSER};

impl Cluster {
    /// A bindir command with a clean, deterministic environment (English messages, no stray PG* vars).
    pub(super) fn client_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.env_clear().current_dir("/");
        cmd.envs([("LC_ALL", "C"), ("LANG", "C"), ("PGSSLMODE", "disable"), ("PGGSSENCMODE", "disable")]);
        cmd.env("PGCONNECT_TIMEOUT", "10");
        for key in ["PATH", "TZ"] {
            if let Some(value) = std::env::var_os(key) {
                cmd.env(key, value);
            }
        }
        cmd
    }

    /// Like `client_command`, but as the unprivileged server user when we are root.
    pub(super) fn server_command(&self, program: &str) -> Command {
        let mut cmd = self.client_command(program);
        match &self.run_as {
            Some(user) => {
                cmd.uid(user.uid).gid(user.gid).env("HOME", "/tmp").env("USER", &user.name);
            }
            None => {
                cmd.env("HOME", std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()));
            }
        }
        cmd
    }

    /// Runs a command to completion; on failure the error has its stderr and, if given, that node's log tail.
    pub(super) fn run(&self, mut cmd: Command, log_of: Option<usize>) -> Result<Output> {
        let desc = describe(&cmd);
        debug!(command = %desc, "running");
        let out = cmd.stdin(Stdio::null()).output().map_err(io_err(format!("cannot run `{desc}`")))?;
        if out.status.success() {
            return Ok(out);
        }
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if detail.is_empty() {
            detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        if let Some(node) = log_of.and_then(|i| self.nodes.get(i)) {
            let log = node.dir.join("postgres.log");
            detail.push_str(&format!("\n--- tail of {} ---\n{}", log.display(), log_tail(&log)));
        }
        Err(ClusterError::Command { command: desc, status: out.status.to_string(), detail })
    }

    /// psql with SQL on stdin; `shown` is what gets logged instead of the SQL (which may hold passwords).
    pub(super) fn run_psql(&self, i: usize, db: &str, sql: &str, shown: &str) -> Result<String> {
        let port = self.node(i)?.port.to_string();
        let mut cmd = self.client_command("psql");
        cmd.args("-X -A -t -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -f -".split(' '));
        cmd.args(["-p", &port, "-U", SUPERUSER, "-d", db]).env("PGPASSWORD", &self.password);
        let desc = describe(&cmd);
        debug!(node = %self.nodes[i].name, sql = shown, "psql");
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(io_err(format!("cannot run `{desc}`")))?;
        let mut stdin = child.stdin.take();
        let sql = sql.to_owned();
        // Feed stdin from a thread so a large result cannot deadlock against our writes.
        let writer = std::thread::spawn(move || stdin.as_mut().map(|s| s.write_all(sql.as_bytes())));
        let out = child.wait_with_output().map_err(io_err(format!("waiting for `{desc}`")))?;
        let _ = writer.join();
        if !out.status.success() {
            let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(ClusterError::Command {
                command: format!("{desc} <<< {shown}"),
                status: out.status.to_string(),
                detail,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// The command line for logs and errors, with anything after `password=` masked.
pub(super) fn describe(cmd: &Command) -> String {
    let mut text = Path::new(cmd.get_program()).file_name().unwrap_or_default().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        text.push(' ');
        match arg.find("password=") {
            Some(pos) => text.push_str(&format!("\"{}password=***\"", &arg[..pos])),
            None => text.push_str(&arg),
        }
    }
    text
}

pub(super) fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(8 * 1024)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The crate's one SQL quoting, next to the harness's conninfo quoting.
pub(super) use crate::lexical::{quote_ident, quote_literal};

pub(super) fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_redaction() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(conninfo_quote("a'b\\"), "'a\\'b\\\\'");
        let mut cmd = Command::new("/x/pg_basebackup");
        cmd.args(["-d", "host=h password='secret'", "-D", "/d"]);
        let text = describe(&cmd);
        assert!(!text.contains("secret") && text.starts_with("pg_basebackup -d"), "{text}");
    }
}
