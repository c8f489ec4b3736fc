//! `pgcausal demo add-follower`: one more follower for a running demo, built by pg_basebackup
//! from its current leader, added to its proxy by RELOAD, and timed until it serves a read.

use super::{node_table, CONFIG_FILE, DEFAULT_DATA_DIR};
use crate::cluster::{Cluster, ClusterSpec, NodeInfo};
use crate::config::Config;
use anyhow::{bail, ensure, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, SimpleQueryMessage};

pub struct AddFollowerArgs {
    pub data_dir: PathBuf,
    /// The proxy's port; None: the one in the demo's pgcausal.toml.
    pub port: Option<u16>,
}

/// How long the new node may take, after the reload, to enter rotation and serve a read.
const SERVE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the proxy may take to know its leader (and end a failover) before the base backup.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Per connection attempt and per statement: a proxy that hangs must not hang this command.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// The running demo's proxy: where it listens and the admin login its pgcausal.toml names.
struct DemoProxy {
    addr: SocketAddr,
    user: String,
    password: String,
}

/// One row of SHOW NODES, the columns this command watches.
#[derive(Debug)]
struct NodeRow {
    name: String,
    port: u16,
    role: String,
    in_rotation: bool,
    why_not: Option<String>,
    lag_seconds: Option<String>,
    failover_phase: String,
}

pub fn add_follower(args: AddFollowerArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = std::path::absolute(&args.data_dir)?;
    let data_dir_arg = match args.data_dir == Path::new(DEFAULT_DATA_DIR) {
        true => String::new(),
        false => format!(" --data-dir {}", args.data_dir.display()),
    };
    ensure!(
        root.join("cluster.state").is_file(),
        "no demo cluster in {} (it has no cluster.state); start one with `pgcausal demo{data_dir_arg}`",
        root.display()
    );
    let config_path = root.join(CONFIG_FILE);
    let config = Config::load(&config_path).context("cannot read the demo's proxy configuration")?;
    let proxy = DemoProxy::of(&config, args.port)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let console = runtime.block_on(proxy.connect("pgcausal")).with_context(|| {
        format!("the demo's proxy on {} is not answering; is `pgcausal demo{data_dir_arg}` running?", proxy.addr)
    })?;

    let cluster_spec = ClusterSpec::new(&root);
    let mut cluster = Cluster::attach(&cluster_spec)?;
    let nodes = runtime.block_on(wait_for_leader(&console))?;
    let leader = current_leader(&cluster, &nodes)?;
    let name = cluster.next_node_name();
    // Checked before the base backup: a node built but impossible to add would be left over.
    ensure!(
        config.node_index(&name).is_none(),
        "{} already has a [[nodes]] table named {name:?} though the cluster has no such node; remove it first",
        config_path.display()
    );
    let source = cluster.nodes()[leader].clone();
    println!("Building {name}: pg_basebackup from {} (the leader, 127.0.0.1:{}) ...", source.name, source.port);
    let added = cluster.add_follower(leader, &[]).context("cannot build the new follower")?;
    let node = cluster.nodes()[added].clone();
    let backed_up = started.elapsed();
    println!("{:6.2} s  {name}: base backup done, started on 127.0.0.1:{}", secs(backed_up), node.port);

    // From here on the node is one of the cluster's (cluster.state): the demo stops it on exit.
    let running = || format!("{name} runs and is in cluster.state (the demo stops it on exit, starts it next time)");
    add_to_config(&config_path, &node).with_context(running)?;
    runtime
        .block_on(simple_query(&console, "RELOAD"))
        .context("RELOAD on the proxy's admin console failed")
        .with_context(running)?;
    println!("{:6.2} s  {name}: added to {} and RELOAD sent", secs(started.elapsed()), config_path.display());

    let served = runtime.block_on(watch_until_served(&proxy, &console, &node, started)).with_context(running)?;
    println!(
        "\n{name} serves reads: base backup done {:.2} s, in rotation {:.2} s, first read served {:.2} s \
         (from the start of this command)",
        secs(backed_up),
        secs(served.in_rotation),
        secs(served.first_read)
    );
    println!(
        "It stays in the demo's cluster: Ctrl-C in the demo stops it with the rest; the next run starts it again."
    );
    Ok(())
}

/// When, from the command's start, the new node was first seen in rotation and first served a read.
struct Served {
    in_rotation: Duration,
    first_read: Duration,
}

/// Watches SHOW NODES while driving reads through the proxy (`SELECT inet_server_port()`, which
/// names the server that answered) until the new node is in rotation and one read came from it;
/// prints each change of its state on the way.
async fn watch_until_served(
    proxy: &DemoProxy,
    console: &Client,
    node: &NodeInfo,
    started: Instant,
) -> anyhow::Result<Served> {
    let reader = proxy.connect("postgres").await.context("cannot log in to the demo's proxy for reads")?;
    let deadline = Instant::now() + SERVE_TIMEOUT;
    let (mut in_rotation, mut first_read) = (None, None);
    let mut shown = String::new();
    loop {
        let row = show_nodes(console).await?.into_iter().find(|r| r.name == node.name && r.port == node.port);
        let state = match &row {
            None => "not in SHOW NODES yet".to_string(),
            Some(r) if r.in_rotation => format!("in rotation ({})", r.role),
            Some(r) => format!(
                "not in rotation: {}{}",
                r.why_not.as_deref().unwrap_or("(no reason given)"),
                r.lag_seconds.as_deref().map(|s| format!(", {s} s behind")).unwrap_or_default()
            ),
        };
        // Once per change of state: the lag in seconds changes on every probe.
        let summary = state.split(',').next().unwrap_or_default().to_string();
        if summary != shown {
            println!("{:6.2} s  {}: {state}", secs(started.elapsed()), node.name);
            shown = summary;
        }
        if in_rotation.is_none() && row.as_ref().is_some_and(|r| r.in_rotation) {
            in_rotation = Some(started.elapsed());
        }
        let answered_by = simple_query(&reader, "SELECT inet_server_port()")
            .await
            .context("a read through the demo's proxy failed")?
            .first()
            .and_then(|port| port.parse::<u16>().ok());
        if first_read.is_none() && answered_by == Some(node.port) {
            first_read = Some(started.elapsed());
            // It entered rotation between that SHOW NODES and this read.
            in_rotation = in_rotation.or(first_read);
            println!("{:6.2} s  {}: served its first read", secs(started.elapsed()), node.name);
        }
        if let (Some(in_rotation), Some(first_read)) = (in_rotation, first_read) {
            return Ok(Served { in_rotation, first_read });
        }
        if Instant::now() >= deadline {
            bail!("{} did not serve a read within {SERVE_TIMEOUT:?} of the reload; last seen {state}", node.name);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// SHOW NODES once the proxy knows its leader and no failover runs (just after the demo
/// starts, its first probes have not answered yet).
async fn wait_for_leader(console: &Client) -> anyhow::Result<Vec<NodeRow>> {
    let deadline = Instant::now() + LEADER_TIMEOUT;
    loop {
        let nodes = show_nodes(console).await?;
        let failover = nodes.iter().find(|r| r.failover_phase != "healthy").map(|r| r.failover_phase.clone());
        let has_leader = nodes.iter().any(|r| r.role == "leader");
        match failover {
            None if has_leader => return Ok(nodes),
            _ if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            // Nodes are added only while no failover runs (the proxy would reject the reload).
            Some(phase) => {
                bail!("a failover is still under way after {LEADER_TIMEOUT:?} (phase {phase}); try again once it ends")
            }
            None => {
                bail!("the demo's proxy knows no leader after {LEADER_TIMEOUT:?}; see SHOW NODES on its admin console")
            }
        }
    }
}

/// The index of the node the proxy calls its leader, once the node itself confirms it is out
/// of recovery (probing every node could find a fenced old leader, out of recovery too).
fn current_leader(cluster: &Cluster, nodes: &[NodeRow]) -> anyhow::Result<usize> {
    let row = nodes.iter().find(|r| r.role == "leader").context("the demo's proxy knows no leader")?;
    let i = cluster.nodes().iter().position(|n| n.port == row.port).with_context(|| {
        format!(
            "the proxy's leader {} (port {}) is no node of the cluster in {}",
            row.name,
            row.port,
            cluster.root().display()
        )
    })?;
    let in_recovery = cluster.psql(i, "postgres", "select pg_is_in_recovery()")?;
    ensure!(in_recovery == "f", "{} is in recovery though the proxy calls it the leader; try again", row.name);
    Ok(i)
}

/// Adds the node's `[[nodes]]` table to the config file (checked to parse, replaced whole).
fn add_to_config(path: &Path, node: &NodeInfo) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let new = with_node(&text, node);
    let config = Config::parse(path, &new)
        .with_context(|| format!("{} with {} added does not parse", path.display(), node.name))?;
    ensure!(config.node_index(&node.name).is_some(), "{} with {} added lacks it", path.display(), node.name);
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, new).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// `text` with the node's table after its last `[[nodes]]` table (before the next table
/// header), where `config_text` would have written it; at the end if it has none.
fn with_node(text: &str, node: &NodeInfo) -> String {
    let mut offset = 0;
    let mut after_last_nodes = None;
    let mut in_nodes = false;
    for line in text.split_inclusive('\n') {
        let header = line.trim_start().starts_with('[');
        if header && in_nodes {
            after_last_nodes = Some(offset);
        }
        if header {
            in_nodes = line.trim() == "[[nodes]]";
        }
        offset += line.len();
    }
    let at = match in_nodes {
        true => text.len(),
        false => after_last_nodes.unwrap_or(text.len()),
    };
    let (before, after) = text.split_at(at);
    let separator = match before.is_empty() || before.ends_with("\n\n") {
        true => "",
        false if before.ends_with('\n') => "\n",
        false => "\n\n",
    };
    format!("{before}{separator}{}{after}", node_table(node))
}

impl DemoProxy {
    /// From the demo's config: `proxy.listen` (its port replaced by `port`, a wildcard address
    /// by loopback) and its first `[admin]` user's `[[users]]` password.
    fn of(config: &Config, port: Option<u16>) -> anyhow::Result<DemoProxy> {
        let mut addr = config.proxy.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        if let Some(port) = port {
            addr.set_port(port);
        }
        let login = config.admin.users.iter().find_map(|name| config.user(name));
        let login = login.context("the demo's pgcausal.toml names no [admin] user with a [[users]] password")?;
        Ok(DemoProxy { addr, user: login.name.clone(), password: login.password.clone() })
    }

    async fn connect(&self, dbname: &str) -> anyhow::Result<Client> {
        let mut config = tokio_postgres::Config::new();
        config.host(self.addr.ip().to_string()).port(self.addr.port());
        config.user(&self.user).password(&self.password).dbname(dbname).connect_timeout(PROXY_TIMEOUT);
        let connecting = config.connect(tokio_postgres::NoTls);
        let (client, connection) = tokio::time::timeout(PROXY_TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {PROXY_TIMEOUT:?}"))??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection to the demo's proxy ended");
            }
        });
        Ok(client)
    }
}

/// The first column of each row `sql` returns, within `PROXY_TIMEOUT`.
async fn simple_query(client: &Client, sql: &str) -> anyhow::Result<Vec<String>> {
    let rows = rows(client, sql).await?;
    Ok(rows.iter().filter_map(|r| r.get(0).map(str::to_string)).collect())
}

async fn rows(client: &Client, sql: &str) -> anyhow::Result<Vec<tokio_postgres::SimpleQueryRow>> {
    let messages = tokio::time::timeout(PROXY_TIMEOUT, client.simple_query(sql))
        .await
        .map_err(|_| anyhow::anyhow!("{sql}: no answer within {PROXY_TIMEOUT:?}"))?
        .with_context(|| format!("{sql} failed"))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect())
}

async fn show_nodes(console: &Client) -> anyhow::Result<Vec<NodeRow>> {
    let mut nodes = Vec::new();
    for row in rows(console, "SHOW NODES").await? {
        let column = |name: &str| row.try_get(name).with_context(|| format!("SHOW NODES has no column {name}"));
        nodes.push(NodeRow {
            name: column("name")?.unwrap_or_default().to_string(),
            port: column("port")?.and_then(|p| p.parse().ok()).context("SHOW NODES: a node without a port")?,
            role: column("role")?.unwrap_or_default().to_string(),
            in_rotation: column("in_rotation")? == Some("true"),
            why_not: column("why_not")?.map(str::to_string),
            lag_seconds: column("lag_seconds")?.map(str::to_string),
            failover_phase: column("failover_phase")?.unwrap_or_default().to_string(),
        });
    }
    Ok(nodes)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::config_text;

    fn node(i: usize) -> NodeInfo {
        NodeInfo { name: format!("node{i}"), port: 5000 + i as u16, data_dir: format!("/d/node{i}/data").into() }
    }

    #[test]
    fn a_node_added_to_the_demo_config_reads_as_if_the_demo_had_written_it() {
        let hook = Path::new("/d/rejoin-local.sh");
        let two = config_text(&[node(0), node(1)], 6432, "", hook);
        let three = config_text(&[node(0), node(1), node(2)], 6432, "", hook);
        assert_eq!(with_node(&two, &node(2)), three);
        let parsed = Config::parse(Path::new("pgcausal.toml"), &with_node(&two, &node(2))).unwrap();
        assert_eq!(parsed.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["node0", "node1", "node2"]);
    }

    #[test]
    fn a_node_table_goes_after_the_last_nodes_table_or_at_the_end() {
        let last = "[proxy]\nlisten = \"127.0.0.1:1\"\n[[nodes]]\nname = \"a\"\nport = 1";
        assert_eq!(with_node(last, &node(2)), format!("{last}\n\n{}", node_table(&node(2))));
        let none = "[proxy]\nlisten = \"127.0.0.1:1\"\n";
        assert_eq!(with_node(none, &node(2)), format!("{none}\n{}", node_table(&node(2))));
        let between = "[[nodes]]\nname = \"a\"\n[[users]]\nname = \"u\"\n";
        assert_eq!(
            with_node(between, &node(2)),
            format!("[[nodes]]\nname = \"a\"\n\n{}[[users]]\nname = \"u\"\n", node_table(&node(2)))
        );
    }
}
