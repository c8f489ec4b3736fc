//! Client-facing TLS through the proxy, with a CA the test makes (rcgen): psql and tokio-postgres
//! with `sslmode=verify-full` (psql with SCRAM-SHA-256-PLUS, `channel_binding=require`), plaintext
//! refused in require mode, a direct TLS client (ALPN `postgresql`, no SSLRequest), and a
//! certificate replaced by RELOAD (channel binding follows it).

mod support;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use support::*;
use tokio_rustls::rustls;

/// A CA and a server certificate for 127.0.0.1 and localhost, written as PEM files in `dir`.
struct Certs {
    ca: String,
    ca_der: Vec<u8>,
}

fn make_certs(dir: &Path, tag: &str) -> Certs {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("pgcausal test CA {tag}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    let ca_path = dir.join(format!("ca-{tag}.crt"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Certs { ca: ca_path.display().to_string(), ca_der: ca.der().to_vec() }
}

fn tls_proxy(dir: &Path, mode: &str) -> ProxyProcess {
    let cluster = shared_cluster();
    let extra = format!(
        "[admin]\nusers = [\"{USER}\"]\n[tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_mode = \"{mode}\"\n",
        dir.join("server.crt").display().to_string(),
        dir.join("server.key").display().to_string()
    );
    ProxyProcess::start(cluster, ProxyOptions { extra, ..Default::default() })
}

/// psql with a full connection string; (success, stdout, stderr).
fn psql(conninfo: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new(pg_bin("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn conninfo(proxy: &ProxyProcess, sslmode: &str, ca: &str) -> String {
    format!("host=127.0.0.1 port={} user={USER} dbname=postgres sslmode={sslmode} sslrootcert={ca}", proxy.port)
}

#[test]
fn psql_verify_full_works_plaintext_is_refused_in_require_mode_and_reload_replaces_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let first = make_certs(dir.path(), "one");
    let proxy = tls_proxy(dir.path(), "require");
    let (ok, out, err) = psql(&conninfo(&proxy, "verify-full", &first.ca), "SELECT 41 + 1");
    assert!(ok, "verify-full through the proxy: {err}");
    assert_eq!(out.trim(), "42");
    let (ok, out, err) = psql(&conninfo(&proxy, "verify-full", &first.ca), "\\conninfo");
    assert!(ok && out.contains("SSL connection (protocol: TLSv1.3"), "{out}{err}");
    // SCRAM-SHA-256-PLUS: libpq refuses to log in unless the exchange is bound to the certificate.
    let bound = format!("{} channel_binding=require", conninfo(&proxy, "verify-full", &first.ca));
    let (ok, out, err) = psql(&bound, "SELECT 'bound'");
    assert!(ok && out.trim() == "bound", "SCRAM-SHA-256-PLUS over TLS: {out}{err}");

    // Plain text is refused with 28000 and a reason, and counted.
    let (ok, _, err) = psql(&conninfo(&proxy, "disable", &first.ca), "SELECT 1");
    assert!(!ok && err.contains("TLS is required"), "{err}");
    let page = proxy.metrics();
    assert!(page.contains("pgcausal_client_logins_total{result=\"tls_required\"} 1"), "{page}");

    // A certificate that does not load rejects the reload; the running one keeps serving.
    std::fs::write(dir.path().join("server.key"), "not a key").unwrap();
    let refused = proxy.admin_as(USER, PASSWORD, "RELOAD").unwrap_err();
    assert!(refused.contains("tls.key_file") && refused.contains("server.key"), "{refused}");
    let (ok, _, err) = psql(&conninfo(&proxy, "verify-full", &first.ca), "SELECT 1");
    assert!(ok, "the old certificate still serves: {err}");

    // A new certificate from another CA, taken by RELOAD: new logins verify against it.
    let second = make_certs(dir.path(), "two");
    proxy.admin("RELOAD");
    let (ok, _, err) = psql(&conninfo(&proxy, "verify-full", &second.ca), "SELECT 1");
    assert!(ok, "the reloaded certificate: {err}");
    let bound = format!("{} channel_binding=require", conninfo(&proxy, "verify-full", &second.ca));
    let (ok, _, err) = psql(&bound, "SELECT 1");
    assert!(ok, "channel binding to the reloaded certificate: {err}");
    let (ok, _, err) = psql(&conninfo(&proxy, "verify-full", &first.ca), "SELECT 1");
    assert!(!ok && err.contains("certificate verify failed"), "the old CA no longer verifies: {err}");
    assert_ne!(first.ca_der, second.ca_der);
}

fn client_config(ca_der: &[u8], alpn: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca_der.to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![b"postgresql".to_vec()];
    }
    config
}

#[test]
fn tokio_postgres_verify_full_and_a_direct_tls_client_work_in_allow_mode_and_plaintext_too() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "allow");
    let proxy = tls_proxy(dir.path(), "allow");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(&certs.ca_der, false));
        let conn = format!(
            "host=localhost port={} user={USER} password={PASSWORD} dbname=postgres sslmode=require",
            proxy.port
        );
        let (client, connection) = tokio_postgres::connect(&conn, tls).await.expect("tokio-postgres over TLS");
        tokio::spawn(connection);
        let row = client.query_one("SELECT $1::int + 1", &[&41i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);

        // Plain text is still served in allow mode.
        let plain = format!("host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname=postgres", proxy.port);
        let (client, connection) = tokio_postgres::connect(&plain, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);

        // Direct TLS (no SSLRequest), with ALPN: the startup packet inside TLS gets an
        // authentication request.
        let answer = direct_tls_startup(proxy.port, &certs.ca_der, true).await.expect("direct TLS with ALPN");
        assert_eq!(answer, b'R', "AuthenticationRequest after a direct TLS startup");
        // Without ALPN it is refused, as PostgreSQL does.
        assert!(direct_tls_startup(proxy.port, &certs.ca_der, false).await.is_err());
    });
}

/// Connects with TLS at once, sends a startup packet inside it, returns the first message type.
async fn direct_tls_startup(port: u16, ca_der: &[u8], alpn: bool) -> std::io::Result<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca_der, alpn)));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let mut body = Vec::new();
    body.extend_from_slice(&196608u32.to_be_bytes());
    for (k, v) in [("user", USER), ("database", "postgres")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    tls.write_all(&packet).await?;
    let mut tag = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read_exact(&mut tag)).await;
    read.map_err(|_| std::io::Error::other("no answer"))??;
    Ok(tag[0])
}

/// Turns TLS on in every server of `cluster` with the certificate `make_certs` wrote to `dir`
/// (owned by the servers' user, as PostgreSQL requires of its key).
fn servers_with_tls(cluster: &TestCluster, dir: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let data_dirs: Vec<_> = cluster.cluster.lock().unwrap().nodes().into_iter().map(|n| n.data_dir).collect();
    for (i, data_dir) in data_dirs.iter().enumerate() {
        let owner = std::fs::metadata(data_dir).unwrap();
        for file in ["server.crt", "server.key"] {
            let to = data_dir.join(file);
            std::fs::copy(dir.join(file), &to).unwrap();
            std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let conf = data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text).unwrap();
        cluster.sql(i, "postgres", "SELECT pg_reload_conf()");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while cluster.sql(i, "postgres", "SHOW ssl").trim() != "on" {
            assert!(std::time::Instant::now() < deadline, "ssl did not turn on at node {i}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

#[test]
fn nodes_reached_over_verified_tls_serve_the_data_path_and_the_monitors() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path(), "servers");
    let cluster = TestCluster::start(2, |_| {}); // its own: its servers' configuration changes
    servers_with_tls(&cluster, dir.path());
    cluster.create_database("tls_nodes");
    let node_extra = format!("tls = \"verify-full\"\nca_file = {:?}\n", certs.ca);
    let p = ProxyProcess::start(&cluster, ProxyOptions { node_extra, ..Default::default() });
    p.wait_for_followers();

    // A write on the leader and reads on the followers, each over a TLS server connection.
    let sql =
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1); SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    assert_eq!(ok(p.psql("tls_nodes", &["-c", sql], None)).trim().lines().last(), Some("t"));
    let read = "SELECT count(*), pg_is_in_recovery() FROM t";
    let answers: Vec<String> =
        (0..4).map(|_| ok(p.psql("tls_nodes", &["-c", read], None)).trim().to_string()).collect();
    assert!(answers.iter().any(|a| a == "1|t"), "a follower served a read: {answers:?}");
    // Every connection to every node but the test's own: the proxy's (pools, monitors, pollers,
    // failover), all TLS. Pool connections carry the client's application_name (psql).
    let mut pooled_on_followers = 0;
    for i in 0..3 {
        let counts = cluster.sql(
            i,
            "postgres",
            "SELECT count(*) FILTER (WHERE s.ssl AND a.application_name NOT LIKE 'pgcausal-%'), \
                    count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
        );
        let counts: Vec<u32> = counts.trim().split('|').map(|c| c.parse().unwrap()).collect();
        let [pooled, tls, plain] = counts[..] else { panic!("{counts:?}") };
        assert!(tls >= 1 && plain == 0, "node {i}: {tls} connections over TLS, {plain} in plain text");
        if i > 0 {
            pooled_on_followers += pooled;
        }
    }
    assert!(pooled_on_followers >= 1, "the followers served the reads over TLS pool connections");
}
