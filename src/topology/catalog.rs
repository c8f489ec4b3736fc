//! Keeps the router's list of volatile functions current: loads pg_proc (provolatile = 'v', every
//! schema and overload) from every database of the leader, and reloads it periodically.

use super::Topology;
use crate::config::Config;
use crate::route::{Classifier, FunctionCatalog, FunctionOverrides};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::NoTls;

const VOLATILE_SQL: &str = "SELECT n.nspname::text, p.proname::text FROM pg_proc p \
     JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.provolatile = 'v'";

async fn connect(
    config: &Config,
    node: usize,
    database: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (user, password) = config.monitor_login();
    let n = &config.nodes[node];
    let mut pg = tokio_postgres::Config::new();
    pg.host(&n.host)
        .port(n.port)
        .user(user)
        .password(password)
        .dbname(database)
        .application_name("pgcausal-catalog")
        .connect_timeout(config.monitor.timeout);
    let client = match crate::topology::monitor::control_tls(n, &mut pg) {
        Some(tls) => {
            let (client, connection) = pg.connect(tls).await?;
            tokio::spawn(connection);
            client
        }
        None => {
            let (client, connection) = pg.connect(NoTls).await?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}

/// Volatile (schema, name) pairs across all databases that accept connections.
async fn load(config: &Config, leader: usize) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let first = connect(config, leader, &config.monitor.database).await?;
    let databases: Vec<String> = first
        .query("SELECT datname::text FROM pg_database WHERE datallowconn AND NOT datistemplate", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut rows = Vec::new();
    for db in databases {
        // A database dropped meanwhile or closed to us is skipped, not fatal.
        let Ok(client) = connect(config, leader, &db).await else { continue };
        if let Ok(found) = client.query(VOLATILE_SQL, &[]).await {
            rows.extend(found.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))));
        }
    }
    rows.sort();
    rows.dedup();
    Ok(rows)
}

/// Reloads the catalog now and then every `routing.catalog_refresh`, until the classifier is gone
/// (on the control thread).
pub fn spawn(
    config: Arc<Config>,
    topology: Arc<Topology>,
    classifier: std::sync::Weak<Classifier>,
    tasks: &mut crate::control::Tasks,
) {
    let overrides = FunctionOverrides {
        write_functions: config.routing.write_functions.clone(),
        read_only_functions: config.routing.read_only_functions.clone(),
    };
    tasks.add(crate::control::spawn(async move {
        let mut last: Vec<(String, String)> = Vec::new();
        loop {
            let Some(leader) = topology.leader(Duration::from_secs(5)).await else { continue };
            match load(&config, leader).await {
                Ok(rows) if rows != last => {
                    let Some(classifier) = classifier.upgrade() else { return };
                    let catalog = FunctionCatalog::from_pg_proc(rows.iter().map(|(s, n)| (s, n, 'v')), &overrides);
                    tracing::info!(functions = rows.len(), "volatile function catalog loaded");
                    classifier.set_catalog(Arc::new(catalog));
                    last = rows;
                }
                Ok(_) => {}
                Err(e) => {
                    let (node, failure) = (&config.nodes[leader].name, crate::backend::failures::Failure::of_pg(&e));
                    let sqlstate = failure.sqlstate.as_deref().map(tracing::field::display);
                    tracing::warn!(%node, sqlstate, error = %failure.message, "could not load the volatile function catalog");
                }
            }
            if classifier.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(config.routing.catalog_refresh).await;
        }
    }));
}
