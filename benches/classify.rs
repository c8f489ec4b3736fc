//! Classification hot-path benchmarks: fingerprint alone, fingerprint + cache hit, and a cache miss (full classify).

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pgcausal::route::{classify, fingerprint, Classifier, FunctionCatalog};

const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 123;";
const JOIN_200: &str = "SELECT o.id, o.created_at, c.name, c.email, sum(li.qty * li.price) AS total \
     FROM orders o JOIN customers c ON c.id = o.customer_id \
     LEFT JOIN line_items li ON li.order_id = o.id \
     WHERE o.created_at > $1 AND c.region = 'EU' GROUP BY 1, 2, 3, 4";

fn bench(c: &mut Criterion) {
    let catalog = FunctionCatalog::builtin();
    let classifier = Classifier::new(Classifier::DEFAULT_CAPACITY, Arc::new(catalog.clone()));
    // A 2 KB multi-row INSERT: mostly literals and punctuation, for the per-byte cost of long strings.
    let rows: Vec<String> = (0..40).map(|i| format!("({i}, 'click', '{{\"x\": {i}}}', now())")).collect();
    let insert = format!("INSERT INTO events (id, kind, payload, created_at) VALUES {}", rows.join(", "));
    c.bench_function("fingerprint/insert_2k", |b| b.iter(|| fingerprint(black_box(&insert))));
    for (name, sql) in [("pgbench_select", PGBENCH_SELECT), ("join_200", JOIN_200)] {
        c.bench_function(&format!("fingerprint/{name}"), |b| b.iter(|| fingerprint(black_box(sql))));
        classifier.classify(sql);
        c.bench_function(&format!("cache_hit/{name}"), |b| b.iter(|| classifier.classify(black_box(sql))));
        c.bench_function(&format!("miss_classify/{name}"), |b| b.iter(|| classify(black_box(sql), &catalog)));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
