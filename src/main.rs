//! The `pgcausal` command line: serve | check-config | hash-password | demo [add-follower].

use clap::{Parser, Subcommand};
use pgcausal::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    version,
    about = "PostgreSQL proxy: writes to the leader, reads to followers, never stale for the session",
    after_help = "Logs go to stdout; PGCAUSAL_LOG sets the level or filter (default info, e.g. debug, \
                  or pgcausal=debug,warn)."
)]
struct Cli {
    /// Log lines as text (coloured only when stdout is a terminal) or as JSON, one object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum DemoCommand {
    /// Build one more follower for the running demo (pg_basebackup from its leader), add it to
    /// the proxy by RELOAD, and wait until it serves a read.
    AddFollower {
        /// The running demo's --data-dir.
        #[arg(long, default_value = pgcausal::demo::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// The demo's proxy port [default: proxy.listen in <data-dir>/pgcausal.toml].
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    CheckConfig { file: PathBuf },
    /// Print a `[[users]] password` value in pg_authid's format: a SCRAM-SHA-256 verifier
    /// (random salt, 4096 iterations), or with --md5 an md5 hash.
    HashPassword {
        /// An md5 hash (md5(password || user)) instead, for auth = "md5" users.
        #[arg(long, requires = "user")]
        md5: bool,
        /// The user name the md5 hash is salted with.
        #[arg(long, requires = "md5")]
        user: Option<String>,
        /// The password [default: the first line of stdin, so it stays out of the shell history].
        password: Option<String>,
    },
    /// Start a local leader + followers cluster with pgcausal in front (Ctrl-C stops it all).
    #[command(args_conflicts_with_subcommands = true)]
    Demo {
        #[command(subcommand)]
        action: Option<DemoCommand>,
        /// Where the cluster lives; reused by later runs.
        #[arg(long, default_value = pgcausal::demo::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        followers: usize,
        /// The port pgcausal listens on.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// The port of the Prometheus /metrics page [default: 9930, or none when it is taken].
        #[arg(long)]
        metrics_port: Option<u16>,
    },
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGCAUSAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match format {
        // Colour codes only for a person at a terminal, never into a file or a pipe.
        LogFormat::Text => logs.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).with_span_list(false).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::CheckConfig { file } => Config::load(&file).map_err(anyhow::Error::from).and_then(|c| {
            // The certificate and key are read too: a file that does not load fails here.
            pgcausal::frontend::tls::Acceptor::load(&c.tls)?;
            println!("{}: ok ({} nodes, {} users)", file.display(), c.nodes.len(), c.users.len());
            Ok(())
        }),
        Command::HashPassword { md5, user, password } => hash_password(md5, user, password),
        Command::Demo { action: None, data_dir, followers, port, metrics_port } => {
            pgcausal::demo::run(pgcausal::demo::DemoArgs { data_dir, followers, port, metrics_port })
        }
        Command::Demo { action: Some(DemoCommand::AddFollower { data_dir, port }), .. } => {
            pgcausal::demo::add_follower(pgcausal::demo::AddFollowerArgs { data_dir, port })
        }
        Command::Serve { config: path } => {
            Config::load(&path).map_err(anyhow::Error::from).and_then(|config| serve(config, path))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgcausal: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn hash_password(md5: bool, user: Option<String>, password: Option<String>) -> anyhow::Result<()> {
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line).to_string()
        }
    };
    if password.is_empty() {
        anyhow::bail!("an empty password cannot log in to PostgreSQL");
    }
    match (md5, user) {
        (true, Some(user)) => println!("{}", pgcausal::secret::md5_hash(&user, &password)),
        _ => println!("{}", pgcausal::secret::ScramVerifier::generate(&password)),
    }
    Ok(())
}

fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    // Sockets only: timers and background work run on the control thread (src/control.rs).
    let runtime = match config.proxy.threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_io().build()?,
        0 => tokio::runtime::Builder::new_multi_thread().enable_io().build()?,
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_io().build()?,
    };
    runtime.block_on(async {
        let proxy = pgcausal::proxy::Proxy::bind(config, Some(path)).await?;
        tracing::info!(addr = %proxy.local_addr()?, "pgcausal listening");
        proxy.run(pgcausal::proxy::Hangup::Reload).await;
        Ok(())
    })
}
