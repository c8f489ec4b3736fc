//! Transaction pooling without surprises: named prepared statements follow each client across
//! shared server connections.

mod support;
use support::*;

#[test]
fn fifty_clients_share_and_close_named_statements_over_two_connections() {
    let cluster = shared_cluster();
    cluster.create_database("stmts");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 2, ..Default::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn_str = p.conn_str("stmts");
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for k in 0..50i32 {
            let conn_str = conn_str.clone();
            tasks.push(tokio::spawn(async move {
                let (mut client, conn) = tokio_postgres::connect(&conn_str, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(conn);
                // The same SQL as every other client, and SQL only this client uses.
                let shared = client.prepare("SELECT $1::int4 + 1").await.unwrap();
                let mut own = client.prepare(&format!("SELECT $1::int4 * {k}")).await.unwrap();
                for i in 0..100i32 {
                    if i % 3 == 0 {
                        let tx = client.transaction().await.unwrap();
                        let a: i32 = tx.query_one(&shared, &[&i]).await.unwrap().get(0);
                        let b: i32 = tx.query_one(&own, &[&i]).await.unwrap().get(0);
                        tx.commit().await.unwrap();
                        assert_eq!((a, b), (i + 1, i * k));
                    } else {
                        let a: i32 = client.query_one(&shared, &[&i]).await.unwrap().get(0);
                        let b: i32 = client.query_one(&own, &[&i]).await.unwrap().get(0);
                        assert_eq!((a, b), (i + 1, i * k));
                    }
                    if i % 25 == 24 {
                        // Dropping a statement sends Close; a fresh one is prepared in its place.
                        own = client.prepare(&format!("SELECT $1::int4 * {k} /* round {i} */")).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
    });
    let m = p.metrics();
    assert!(!m.contains("class=\"26\""), "no 'prepared statement does not exist': {m}");
    assert!(!m.contains("class=\"08\""), "no protocol errors: {m}");
}

#[test]
fn protocol_errors_around_statements_match_postgres() {
    let cluster = shared_cluster();
    cluster.create_database("stmt_errors");
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 1, ..Default::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&p.conn_str("stmt_errors"), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        // A statement that fails to prepare reports the server's error and leaves the client usable.
        let err = client.prepare("SELECT * FROM no_such_table").await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE), "{err}");
        let ok = client.prepare("SELECT 1::int4").await.unwrap();
        assert_eq!(client.query_one(&ok, &[]).await.unwrap().get::<_, i32>(0), 1);
        // A statement valid on one connection and invalid on another (table dropped in between).
        client.batch_execute("CREATE TABLE gone (v int); INSERT INTO gone VALUES (5)").await.unwrap();
        let stmt = client.prepare("SELECT v FROM gone").await.unwrap();
        assert_eq!(client.query_one(&stmt, &[]).await.unwrap().get::<_, i32>(0), 5);
        client.batch_execute("DROP TABLE gone").await.unwrap();
        let err = client.query_one(&stmt, &[]).await.unwrap_err();
        assert!(err.code().is_some(), "{err}");
        assert_eq!(client.query_one("SELECT 2::int4", &[]).await.unwrap().get::<_, i32>(0), 2);
    });
}

#[test]
fn sql_level_prepare_execute_deallocate_follow_each_client() {
    let cluster = shared_cluster();
    cluster.create_database("sql_prepare");
    // One server connection per node: both clients' statements share the backends.
    let p = ProxyProcess::start(cluster, ProxyOptions { pool_size: 1, ..Default::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let connect = || async {
            let (c, conn) = tokio_postgres::connect(&p.conn_str("sql_prepare"), tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            c
        };
        let (a, b) = (connect().await, connect().await);
        async fn value(c: &tokio_postgres::Client, sql: &str) -> Result<Option<String>, tokio_postgres::Error> {
            let rows = c.simple_query(sql).await?;
            Ok(rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            }))
        }
        a.batch_execute("PREPARE p (int) AS SELECT 'a' || $1").await.unwrap();
        b.batch_execute("PREPARE p (int) AS SELECT 'b' || $1").await.unwrap();
        for _ in 0..50 {
            assert_eq!(value(&a, "EXECUTE p(1)").await.unwrap().as_deref(), Some("a1"));
            assert_eq!(value(&b, "EXECUTE p(2)").await.unwrap().as_deref(), Some("b2"));
        }
        // A duplicate name is refused as PostgreSQL would; an unknown one too.
        let err = a.batch_execute("PREPARE p AS SELECT 3").await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::DUPLICATE_PSTATEMENT), "{err:?}");
        a.batch_execute("DEALLOCATE p").await.unwrap();
        let err = value(&a, "EXECUTE p(1)").await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME), "{err:?}");
        assert_eq!(value(&b, "EXECUTE p(3)").await.unwrap().as_deref(), Some("b3"));
        let err = a.batch_execute("DEALLOCATE nothing_here").await.unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME), "{err:?}");
        b.batch_execute("DEALLOCATE ALL").await.unwrap();
        assert!(value(&b, "EXECUTE p(1)").await.is_err());
    });
}
