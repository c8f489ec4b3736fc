//! `pgcausal demo`: a local leader + followers cluster with the proxy in front, until Ctrl-C.

mod add_follower;

pub use add_follower::{add_follower, AddFollowerArgs};

use crate::cluster::{Cluster, ClusterSpec, NodeInfo, UserSpec};
use crate::config::Config;
use std::path::{Path, PathBuf};

pub const DEMO_USER: &str = "app";
pub const DEMO_PASSWORD: &str = "secret";
/// Where `pgcausal demo` keeps its cluster unless `--data-dir` says otherwise.
pub const DEFAULT_DATA_DIR: &str = ".pgcausal-demo";
/// The proxy configuration's file name, next to the cluster's data.
const CONFIG_FILE: &str = "pgcausal.toml";

pub struct DemoArgs {
    pub data_dir: PathBuf,
    pub followers: usize,
    pub port: u16,
    /// None: 9930 when it is free, else no metrics page.
    pub metrics_port: Option<u16>,
}

/// deploy/rejoin-local.sh, written next to the demo's data so that its cluster heals itself:
/// an old leader is rewound and comes back as a follower after every failover.
const REJOIN_HOOK: &str = include_str!("../deploy/rejoin-local.sh");

/// The proxy configuration for a running cluster (also written next to the data for reference);
/// `rejoin_hook` is the path of the rejoin command.
pub fn config_text(nodes: &[NodeInfo], port: u16, metrics_listen: &str, rejoin_hook: &Path) -> String {
    let mut text = format!(
        "# Written by `pgcausal demo`; run it yourself with: pgcausal serve --config <this file>\n\
         [proxy]\nlisten = \"127.0.0.1:{port}\"\npool_mode = \"transaction\"\n\n\
         [metrics]\nlisten = \"{metrics_listen}\"\n\n\
         [failover]\nrejoin_command = {:?}\n\n",
        rejoin_hook.display().to_string()
    );
    for node in nodes {
        text += &node_table(node);
    }
    text += &format!("[admin]\nusers = [\"{DEMO_USER}\"]\n\n");
    text += &format!("[[users]]\nname = \"{DEMO_USER}\"\npassword = \"{DEMO_PASSWORD}\"\n");
    text
}

/// A node's `[[nodes]]` table as the demo writes it, with the blank line after it.
fn node_table(node: &NodeInfo) -> String {
    format!(
        "[[nodes]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\ndata_dir = {:?}\n\n",
        node.name,
        node.port,
        node.data_dir.display().to_string()
    )
}

fn free(addr: &str) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let data_dir = std::path::absolute(&args.data_dir)?;
    println!("Starting a leader and {} followers in {} ...", args.followers, data_dir.display());
    let mut spec = ClusterSpec::new(&data_dir);
    spec.followers = args.followers;
    let mut user = UserSpec::new(DEMO_USER, DEMO_PASSWORD);
    user.superuser = true; // the monitors need to read replication state
    spec.users = vec![user];
    let cluster = std::sync::Arc::new(std::sync::Mutex::new(Cluster::start(spec)?));
    // A server killed from outside (try `kill -9` on the leader) is reaped at once: as a zombie
    // its postmaster.pid would look alive to the rejoin hook's pg_ctl.
    let reaper = std::sync::Arc::downgrade(&cluster);
    std::thread::spawn(move || {
        while let Some(cluster) = reaper.upgrade() {
            cluster.lock().unwrap_or_else(|e| e.into_inner()).reap_exited();
            drop(cluster);
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    });
    let nodes = cluster.lock().unwrap_or_else(|e| e.into_inner()).nodes();
    let listen = format!("127.0.0.1:{}", args.port);
    anyhow::ensure!(free(&listen), "port {} is in use; pick another with --port", args.port);
    let metrics_listen = match args.metrics_port {
        Some(port) => {
            let listen = format!("127.0.0.1:{port}");
            anyhow::ensure!(free(&listen), "port {port} is in use; pick another with --metrics-port");
            listen
        }
        None if free("127.0.0.1:9930") => "127.0.0.1:9930".to_string(),
        None => String::new(),
    };
    let metrics_listen = metrics_listen.as_str();
    let hook = data_dir.join("rejoin-local.sh");
    std::fs::write(&hook, REJOIN_HOOK)?;
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let text = config_text(&nodes, args.port, metrics_listen, &hook);
    let config_path = data_dir.join(CONFIG_FILE);
    std::fs::write(&config_path, &text)?;
    let config = Config::parse(&config_path, &text)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        // With its path: RELOAD reads it again, so `demo add-follower` can add nodes.
        let proxy = crate::proxy::Proxy::bind(config, Some(config_path.clone())).await?;
        // Only now: the psql line it prints must work the moment it is shown.
        print_banner(&nodes, args.port, metrics_listen, &config_path, &args.data_dir);
        proxy.run(crate::proxy::Hangup::Stop).await;
        anyhow::Ok(())
    });
    println!("\nStopping the cluster ...");
    drop(runtime);
    // Here, not in whichever thread drops the last reference: the process exits right after.
    cluster.lock().unwrap_or_else(|e| e.into_inner()).stop();
    result
}

fn print_banner(nodes: &[NodeInfo], port: u16, metrics_listen: &str, config_path: &Path, data_dir: &Path) {
    println!("\npgcausal is listening on 127.0.0.1:{port} in front of:");
    for (i, node) in nodes.iter().enumerate() {
        let role = if i == 0 { "leader (initially)" } else { "follower" };
        println!("  {:6} 127.0.0.1:{:<5} {role}", node.name, node.port);
    }
    println!("Config: {}", config_path.display());
    if !metrics_listen.is_empty() {
        println!("Metrics: http://{metrics_listen}/metrics");
    }
    println!("\nConnect with:\n\n  PGPASSWORD={DEMO_PASSWORD} psql -h 127.0.0.1 -p {port} -U {DEMO_USER} postgres\n");
    println!("Things to try:");
    println!("  CREATE TABLE t(id serial primary key, v text); INSERT INTO t(v) VALUES ('hello');");
    println!("  SELECT inet_server_port(), pg_is_in_recovery(), * FROM t;   -- which node answered");
    println!("  \\copy t(v) FROM stdin   /   COPY t TO STDOUT;");
    println!("  SELECT pg_sleep(10);  then Ctrl-C in psql cancels it through the proxy");
    let data_dir_arg = match data_dir == Path::new(DEFAULT_DATA_DIR) {
        true => String::new(),
        false => format!(" --data-dir {}", data_dir.display()),
    };
    println!(
        "  pgcausal demo add-follower{data_dir_arg}   -- in another terminal: one more follower, built and added live"
    );
    println!("  PGPASSWORD={DEMO_PASSWORD} pgbench -h 127.0.0.1 -p {port} -U {DEMO_USER} -i postgres && pgbench -h 127.0.0.1 -p {port} -U {DEMO_USER} -c 8 -T 10 postgres");
    println!("\nCtrl-C (or SIGTERM) here stops pgcausal and the cluster. Running it again reuses the data.");
}
