//! The four targets pgbench talks to: the leader itself, pgcausal, PgBouncer and Pgpool-II, each
//! configured in the bench's temp dir and listening on a free loopback port.

use crate::procs::{chown, free_port, write_owned, RunAs, Service};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const USER: &str = "app";
pub const PASSWORD: &str = "secret";
pub const DB: &str = "postgres";
/// Server connections per node (pgcausal) / per pool (PgBouncer).
pub const POOL_SIZE: usize = 16;

/// What every target needs to know about the machine and the cluster.
pub struct Env {
    pub bindir: PathBuf,
    /// Temp dir for configs, sockets, logs; owned by `run_as`.
    pub dir: PathBuf,
    pub run_as: Option<RunAs>,
    /// node ports, leader first.
    pub nodes: Vec<(String, u16)>,
    /// pgcausal's `proxy.threads` (`--threads N`); its default when None.
    pub proxy_threads: Option<usize>,
    /// The certificate and key pgcausal and PgBouncer terminate client TLS with.
    pub tls: (PathBuf, PathBuf),
}

impl Env {
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bindir.join(tool)
    }

    pub fn leader_port(&self) -> u16 {
        self.nodes[0].1
    }

    /// `psql -c sql` as app; the output, or the error text.
    pub fn psql(&self, port: u16, sql: &str) -> Result<String, String> {
        let out = Command::new(self.bin("psql"))
            .args(["-X", "-At", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER, "-d", DB, "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Waits until `svc` answers `SELECT 1` (panics with its log tail after `timeout`).
    pub fn wait_ready(&self, svc: &mut Service, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if !svc.is_running() {
                panic!("{} exited during startup; log:\n{}", svc.name, svc.log_tail(30));
            }
            match self.psql(svc.port, "SELECT 1") {
                Ok(_) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{} not ready after {timeout:?} (last error: {last}); log:\n{}", svc.name, svc.log_tail(30));
    }
}

/// One thing pgbench is pointed at.
pub struct Target {
    pub name: &'static str,
    pub port: u16,
    /// None for the direct leader.
    pub service: Option<Service>,
    pub metrics_port: Option<u16>,
    /// Terminates client TLS (the TLS workloads run against it).
    pub tls: bool,
}

pub fn direct(env: &Env) -> Target {
    Target { name: "direct", port: env.leader_port(), service: None, metrics_port: None, tls: false }
}

/// pgcausal's config: transaction pooling, default (causal) consistency, POOL_SIZE per node.
/// `extra` is appended (TOML tables).
pub fn pgcausal_config(env: &Env, port: u16, metrics: u16, extra: &str) -> String {
    let threads = env.proxy_threads.map(|n| format!("threads = {n}\n")).unwrap_or_default();
    let mut c = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\npool_mode = \"transaction\"\n{threads}\
         [pool]\nsize = {POOL_SIZE}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n{extra}\n"
    );
    for (name, p) in &env.nodes {
        c += &format!("[[nodes]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {p}\n");
    }
    c += &format!("[[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n");
    c
}

/// Starts `pgcausal serve` (the release binary cargo built for this bench), optionally under a
/// wrapper such as valgrind. Runs as the bench's own user, like the tests do.
pub fn start_pgcausal(env: &Env, tag: &str, wrapper: &[&str], extra: &str, ready: Duration) -> (Service, u16) {
    let (port, metrics) = (free_port(), free_port());
    let path = env.dir.join(format!("pgcausal-{tag}.toml"));
    std::fs::write(&path, pgcausal_config(env, port, metrics, extra)).unwrap();
    chown(env.run_as, &path);
    let bin = env!("CARGO_BIN_EXE_pgcausal");
    let mut cmd = wrapped(wrapper, bin);
    cmd.args(["serve", "--config"]).arg(&path).env("PGCAUSAL_LOG", "warn");
    let mut svc = Service::spawn("pgcausal", cmd, port, env.dir.join(format!("pgcausal-{tag}.log")), libc::SIGTERM);
    env.wait_ready(&mut svc, ready);
    (svc, metrics)
}

pub fn pgcausal(env: &Env) -> Target {
    let (cert, key) = &env.tls;
    let tls = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_mode = \"allow\"\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let (svc, metrics) = start_pgcausal(env, "load", &[], &tls, Duration::from_secs(60));
    Target { name: "pgcausal", port: svc.port, service: Some(svc), metrics_port: Some(metrics), tls: true }
}

/// pgcausal with every statement on the leader (`consistency.level = "strong"`): the same work
/// per query (classification, routing, pooling) on the same server as PgBouncer, so the proxy's
/// own cost is compared without the followers, which share this machine's cores.
pub fn pgcausal_leader(env: &Env) -> Target {
    let extra = "[consistency]\nlevel = \"strong\"\n";
    let (svc, metrics) = start_pgcausal(env, "leader", &[], extra, Duration::from_secs(60));
    Target { name: "pgcausal-leader", port: svc.port, service: Some(svc), metrics_port: Some(metrics), tls: false }
}

/// PgBouncer in transaction mode in front of the leader. Clients and PgBouncer itself log in
/// with SCRAM-SHA-256: the auth file holds the plain password, which PgBouncer needs to run
/// SCRAM against the server.
pub fn start_pgbouncer(env: &Env, tag: &str, wrapper: &[&str], ready: Duration) -> Service {
    let port = free_port();
    let dir = &env.dir;
    let userlist = dir.join("pgbouncer-userlist.txt");
    write_owned(env.run_as, &userlist, &format!("\"{USER}\" \"{PASSWORD}\"\n"));
    let ini = dir.join(format!("pgbouncer-{tag}.ini"));
    let text = format!(
        "[databases]\n{DB} = host=127.0.0.1 port={leader} dbname={DB}\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {userlist}\n\
         pool_mode = transaction\ndefault_pool_size = {POOL_SIZE}\nmax_client_conn = 1200\n\
         ignore_startup_parameters = extra_float_digits\n\
         client_tls_sslmode = allow\nclient_tls_cert_file = {cert}\nclient_tls_key_file = {key}\n\
         pidfile = {pid}\nlog_connections = 0\nlog_disconnections = 0\nlog_pooler_errors = 1\n",
        leader = env.leader_port(),
        userlist = userlist.display(),
        cert = env.tls.0.display(),
        key = env.tls.1.display(),
        pid = dir.join(format!("pgbouncer-{tag}.pid")).display(),
    );
    write_owned(env.run_as, &ini, &text);
    let mut cmd = wrapped(wrapper, pgbouncer_bin());
    cmd.arg(&ini).env("HOME", dir);
    RunAs::apply(env.run_as, &mut cmd);
    // SIGTERM = immediate shutdown (SIGINT would wait for clients).
    let mut svc = Service::spawn("pgbouncer", cmd, port, dir.join(format!("pgbouncer-{tag}.log")), libc::SIGTERM);
    env.wait_ready(&mut svc, ready);
    svc
}

/// `program`, or `wrapper` (such as `valgrind --tool=callgrind ...`) running it.
pub fn wrapped(wrapper: &[&str], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    }
}

pub fn pgbouncer_bin() -> PathBuf {
    find_sbin("pgbouncer")
}

pub fn pgpool_bin() -> PathBuf {
    find_sbin("pgpool")
}

fn find_sbin(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

pub fn pgbouncer(env: &Env) -> Target {
    let svc = start_pgbouncer(env, "load", &[], Duration::from_secs(30));
    Target { name: "pgbouncer", port: svc.port, service: Some(svc), metrics_port: None, tls: true }
}

/// Pgpool-II in streaming-replication mode: load balancing across the leader and both followers
/// (weight 1 each, per-session choice, its default), connection caching on, failover off (this
/// is a benchmark, not an HA setup). Clients log in with SCRAM checked against pool_passwd (plain
/// password, which Pgpool-II needs to run SCRAM against the servers).
pub fn pgpool(env: &Env) -> Target {
    let (port, pcp_port) = (free_port(), free_port());
    let dir = &env.dir;
    let pp = dir.join("pgpool");
    std::fs::create_dir_all(pp.join("oiddir")).unwrap();
    chown(env.run_as, &pp);
    chown(env.run_as, &pp.join("oiddir"));
    write_owned(env.run_as, &pp.join("pool_passwd"), &format!("{USER}:{PASSWORD}\n"));
    write_owned(env.run_as, &pp.join("pool_hba.conf"), "host all all 127.0.0.1/32 scram-sha-256\n");
    write_owned(env.run_as, &pp.join("pcp.conf"), "");
    let mut conf = format!(
        "backend_clustering_mode = 'streaming_replication'\n\
         listen_addresses = '127.0.0.1'\nport = {port}\nsocket_dir = '{d}'\n\
         pcp_listen_addresses = '127.0.0.1'\npcp_port = {pcp_port}\npcp_socket_dir = '{d}'\n\
         wd_ipc_socket_dir = '{d}'\npid_file_name = '{d}/pgpool.pid'\nlogdir = '{d}'\n\
         memqcache_oiddir = '{d}/oiddir'\n\
         enable_pool_hba = on\npool_passwd = '{d}/pool_passwd'\n\
         num_init_children = 32\nmax_pool = 1\nconnection_cache = on\n\
         load_balance_mode = on\n\
         sr_check_period = 10\nsr_check_user = '{USER}'\nsr_check_password = '{PASSWORD}'\nsr_check_database = '{DB}'\n\
         health_check_period = 0\nfailover_on_backend_error = off\n\
         log_destination = 'stderr'\nlogging_collector = off\nlog_min_messages = warning\n",
        d = pp.display()
    );
    for (i, (_, p)) in env.nodes.iter().enumerate() {
        conf += &format!(
            "backend_hostname{i} = '127.0.0.1'\nbackend_port{i} = {p}\nbackend_weight{i} = 1\n\
             backend_flag{i} = 'DISALLOW_TO_FAILOVER'\n"
        );
    }
    write_owned(env.run_as, &pp.join("pgpool.conf"), &conf);
    let mut cmd = Command::new(pgpool_bin());
    cmd.arg("-n")
        .arg("-f")
        .arg(pp.join("pgpool.conf"))
        .arg("-F")
        .arg(pp.join("pcp.conf"))
        .arg("-a")
        .arg(pp.join("pool_hba.conf"))
        .env("HOME", &pp);
    RunAs::apply(env.run_as, &mut cmd);
    // SIGINT = fast shutdown: closes clients and the per-client children.
    let mut svc = Service::spawn("pgpool", cmd, port, dir.join("pgpool.log"), libc::SIGINT);
    env.wait_ready(&mut svc, Duration::from_secs(60));
    Target { name: "pgpool", port, service: Some(svc), metrics_port: None, tls: false }
}
