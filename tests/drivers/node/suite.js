// node-postgres (pg) through pgcausal in transaction pooling, in front of a leader + followers
// cluster. Run by tests/drivers.rs as:
//
//   node suite.js HOST PORT USER PASSWORD DBNAME
//
// Prints one line per check and a final "node-postgres suite ok" line; exits 1 if any check failed.
'use strict'

const assert = require('node:assert/strict')
const { pipeline } = require('node:stream/promises')
const { Readable } = require('node:stream')
const pg = require('pg')
const { from: copyFrom, to: copyTo } = require('pg-copy-streams')

const [HOST, PORT, USER, PASSWORD, DBNAME] = process.argv.slice(2)
const ROUNDS = 150
const RYW_ROUNDS = 200
const config = { host: HOST, port: Number(PORT), user: USER, password: PASSWORD, database: DBNAME, connectionTimeoutMillis: 10000 }

// Causal tokens of the connections whose writes later checks read on other connections. Each
// session is causally consistent on its own, but a NEW session is only promised what the followers
// have replayed (one of them replays 300 ms late) until it adopts the writers' tokens.
const TOKENS = []

// Records c's causal token (covering its committed writes) for the sessions opened after. As a
// named prepared statement (extended protocol), which pgcausal answers like a simple query.
async function publishToken(c) {
  const token = (await c.query({ name: 'pgcausal_token', text: 'SHOW pgcausal.lsn', rowMode: 'array' })).rows[0][0]
  assert.match(token, /^\d+\/[0-9a-f]+\/[0-9a-f]+$/i, `SHOW pgcausal.lsn answered ${token}`)
  if (!TOKENS.includes(token)) TOKENS.push(token)
}

// A new session that starts causally after every token published so far.
async function connect() {
  const c = new pg.Client(config)
  await c.connect()
  try {
    for (const token of [...TOKENS]) await c.query(`SET pgcausal.min_lsn = '${token}'`)
  } catch (e) {
    await c.end()
    throw e
  }
  return c
}

async function withClient(fn) {
  const c = await connect()
  try {
    return await fn(c)
  } finally {
    await c.end()
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const CHECKS = []
const check = (name, fn) => CHECKS.push({ name, fn })

async function setupSchema() {
  await withClient(async (c) => {
    await c.query(`
      DROP TABLE IF EXISTS items, kinds, copy_t, ryw, ryw_counter;
      CREATE TABLE items (id int PRIMARY KEY, worker int, name text, price numeric(12,2));
      CREATE TABLE kinds (id int PRIMARY KEY, i8 bigint, f8 float8, b bytea, ts timestamptz, j jsonb, arr int[], flag bool);
      CREATE TABLE copy_t (id int PRIMARY KEY, name text);
      CREATE TABLE ryw (id int PRIMARY KEY, v text);
      CREATE TABLE ryw_counter (id int PRIMARY KEY, n int);
      INSERT INTO ryw_counter VALUES (1, 0);
    `)
    await publishToken(c)
  })
}

check('scram_login_and_simple_query', () =>
  withClient(async (c) => {
    const r = await c.query('SELECT current_user AS u, 1 + 1 AS two') // no values: simple Query
    assert.deepEqual(r.rows, [{ u: USER, two: 2 }])
    const multi = await c.query('SELECT 1 AS a; SELECT 2 AS b')
    assert.deepEqual(multi.map((x) => x.rows[0]), [{ a: 1 }, { b: 2 }])
    assert.ok(c.processID && c.secretKey !== undefined, 'BackendKeyData')
  })
)

async function preparedWorker(k) {
  await withClient(async (c) => {
    for (let i = 0; i < ROUNDS; i++) {
      const pk = k * 100000 + i
      await c.query('BEGIN')
      await c.query({ name: 'ins_item', text: 'INSERT INTO items (id, worker, name, price) VALUES ($1, $2, $3, $4)', values: [pk, k, `item ${i}`, (i / 4).toFixed(2)] })
      const cnt = await c.query({ name: 'count_items', text: 'SELECT count(*)::int AS n, max(id) AS m FROM items WHERE worker = $1', values: [k] })
      assert.deepEqual(cnt.rows[0], { n: i + 1, m: pk })
      await c.query('COMMIT')
      // Outside a transaction: named and unnamed statements.
      const r = await c.query({ name: 'get_item', text: 'SELECT name, price FROM items WHERE id = $1', values: [pk] })
      assert.deepEqual(r.rows[0], { name: `item ${i}`, price: (i / 4).toFixed(2) })
      const s = await c.query('SELECT $1::int * 2 + $2::int AS v', [i, k])
      assert.equal(s.rows[0].v, i * 2 + k)
      const again = await c.query({ name: 'count_items', text: 'SELECT count(*)::int AS n, max(id) AS m FROM items WHERE worker = $1', values: [k] })
      assert.equal(again.rows[0].n, i + 1)
    }
    await publishToken(c) // the count below runs on another connection
  })
}

check('named_and_parameterised_statements_across_transactions', async () => {
  // Six clients over four server connections per node: statements move between backends.
  await Promise.all([0, 1, 2, 3, 4, 5].map(preparedWorker))
  await withClient(async (c) => {
    assert.equal((await c.query('SELECT count(*)::int AS n FROM items')).rows[0].n, 6 * ROUNDS)
  })
})

check('binary_parameters_and_results', () =>
  withClient(async (c) => {
    const blob = Buffer.alloc(10000, 0).map((_, i) => i % 256)
    const ts = new Date('2024-02-29T12:34:56.789Z')
    for (let i = 0; i < 100; i++) {
      // Buffers are sent as binary parameters.
      await c.query({ name: 'ins_kind', text: 'INSERT INTO kinds VALUES ($1, $2, $3, $4, $5, $6, $7, $8)', values: [i, '9000000000', 1.5, blob, ts, { a: [1, 2], s: '\u00fc' }, [1, 2, 3], true] })
      const r = await c.query({ name: 'get_kind', text: 'SELECT * FROM kinds WHERE id = $1', values: [i] })
      const row = r.rows[0]
      assert.equal(row.i8, '9000000000')
      assert.equal(row.f8, 1.5)
      assert.ok(row.b.equals(blob), 'bytea round trip')
      assert.equal(row.ts.getTime(), ts.getTime())
      assert.deepEqual(row.j, { a: [1, 2], s: '\u00fc' })
      assert.deepEqual(row.arr, [1, 2, 3])
      assert.equal(row.flag, true)
    }
    // Results in binary format (Bind with result format 1).
    const r = await c.query({ text: 'SELECT $1::int4 AS i, $2::bytea AS b, true AS t, 2.5::float8 AS f', values: [42, Buffer.from('bytes')], binary: true })
    assert.equal(r.rows[0].i, 42)
    assert.equal(String(r.rows[0].b), 'bytes') // pg-types has no binary bytea parser: raw bytes as a string
    assert.equal(r.rows[0].t, true)
    assert.equal(r.rows[0].f, 2.5)
    const named = await c.query({ name: 'bin_named', text: 'SELECT id FROM kinds WHERE id = $1', values: [7], binary: true })
    assert.equal(named.rows[0].id, 7)
  })
)

check('transaction_rollback', () =>
  withClient(async (c) => {
    await c.query('BEGIN')
    await c.query('INSERT INTO items (id, worker, name) VALUES ($1, -1, $2)', [-1, 'kept'])
    await c.query('COMMIT')
    await c.query('BEGIN')
    await c.query('INSERT INTO items (id, worker, name) VALUES ($1, -1, $2)', [-2, 'gone'])
    assert.equal((await c.query('SELECT count(*)::int AS n FROM items WHERE id = -2')).rows[0].n, 1)
    await c.query('ROLLBACK')
    await c.query('BEGIN')
    await c.query('INSERT INTO items (id, worker, name) VALUES (-3, -1, $1)', ['outer'])
    await c.query('SAVEPOINT s1')
    await c.query('INSERT INTO items (id, worker, name) VALUES (-4, -1, $1)', ['inner'])
    await c.query('ROLLBACK TO SAVEPOINT s1')
    await c.query('COMMIT')
    const ids = (await c.query('SELECT id FROM items WHERE worker = $1 ORDER BY id', [-1])).rows.map((r) => r.id)
    assert.deepEqual(ids, [-3, -1])
  })
)

check('errors_leave_the_connection_usable', () =>
  withClient(async (c) => {
    for (let i = 0; i < 3; i++) {
      await assert.rejects(c.query({ name: 'div', text: 'SELECT 1 / $1::int AS v', values: [0] }), { code: '22012' })
      assert.equal((await c.query({ name: 'div', text: 'SELECT 1 / $1::int AS v', values: [1] })).rows[0].v, 1)
    }
    await c.query("INSERT INTO items (id, worker, name) VALUES (-10, -2, 'unique')")
    await assert.rejects(c.query('INSERT INTO items (id, worker, name) VALUES ($1, $2, $3)', [-10, -2, 'dup']), { code: '23505', constraint: 'items_pkey' })
    assert.equal((await c.query('SELECT name FROM items WHERE id = $1', [-10])).rows[0].name, 'unique')
    await assert.rejects(c.query('SELECT * FROM no_such_table'), { code: '42P01' })
    // An error in a transaction: aborted until rollback.
    await c.query('BEGIN')
    await assert.rejects(c.query('SELECT 1/0'), { code: '22012' })
    await assert.rejects(c.query('SELECT 1'), { code: '25P02' })
    await c.query('ROLLBACK')
    assert.equal((await c.query("SELECT 'after errors' AS v")).rows[0].v, 'after errors')
  })
)

check('copy_in_and_out_with_pg_copy_streams', () =>
  withClient(async (c) => {
    const n = 10000
    const lines = []
    for (let i = 0; i < n; i++) lines.push(`${i}\tname ${i} \\\\ \\t\n`)
    await pipeline(Readable.from(lines), c.query(copyFrom('COPY copy_t (id, name) FROM STDIN')))
    assert.equal((await c.query('SELECT count(*)::int AS n FROM copy_t')).rows[0].n, n)
    const chunks = []
    const out = c.query(copyTo('COPY (SELECT id, name FROM copy_t ORDER BY id) TO STDOUT'))
    for await (const chunk of out) chunks.push(chunk)
    assert.equal(Buffer.concat(chunks).toString(), lines.join(''))
    // A COPY the server rejects; the connection goes on.
    await assert.rejects(pipeline(Readable.from([`${n + 1}\tok\n`, '0\tduplicate\n']), c.query(copyFrom('COPY copy_t (id, name) FROM STDIN'))), { code: '23505' })
    assert.equal((await c.query('SELECT count(*)::int AS n FROM copy_t')).rows[0].n, n)
  })
)

check('cancel', () =>
  withClient(async (c) => {
    // pg has no public cancel API; Client#cancel(client, query) is its internal one (what
    // pg-pool and pg-cursor users reach for): it opens a connection and sends a CancelRequest.
    for (const text of ['SELECT pg_sleep(30)', { text: 'SELECT pg_sleep($1)', values: [30] }]) {
      const t0 = Date.now()
      let settle
      const settled = new Promise((r) => (settle = r))
      const q = new pg.Query(text, undefined, (err) => settle(err || 'finished'))
      c.query(q)
      await sleep(1000)
      let outcome
      // A cancel that arrives before the query reaches a server is dropped: retry, bounded.
      for (let attempt = 0; attempt < 10 && outcome === undefined; attempt++) {
        new pg.Client(config).cancel(c, q)
        outcome = await Promise.race([settled, sleep(2000).then(() => undefined)])
      }
      outcome = outcome ?? (await settled)
      assert.ok(outcome instanceof Error, `not cancelled: ${outcome}`)
      assert.equal(outcome.code, '57014', outcome.message)
      assert.ok(Date.now() - t0 < 20000)
      assert.equal((await c.query("SELECT 'after cancel' AS v")).rows[0].v, 'after cancel')
    }
  })
)

check('listen_notify', async () => {
  const listener = await connect()
  const notifier = await connect()
  try {
    const got = []
    let wake = null
    listener.on('notification', (n) => {
      got.push(n.payload)
      if (wake) wake()
    })
    await listener.query('LISTEN drv_events')
    for (let i = 0; i < 20; i++) {
      if (i % 2) await notifier.query(`NOTIFY drv_events, 'n${i}'`)
      else await notifier.query("SELECT pg_notify('drv_events', $1)", [`n${i}`])
      const deadline = Date.now() + 10000
      while (!got.includes(`n${i}`) && Date.now() < deadline) {
        await Promise.race([new Promise((r) => (wake = r)), sleep(100)])
      }
      assert.ok(got.includes(`n${i}`), `notification n${i} not received; got ${JSON.stringify(got)}`)
      assert.equal((await listener.query('SELECT $1::int AS v', [i])).rows[0].v, i)
    }
    assert.deepEqual(got, [...Array(20).keys()].map((i) => `n${i}`))
    await listener.query('UNLISTEN *')
  } finally {
    await listener.end()
    await notifier.end()
  }
})

check('read_your_writes', () =>
  withClient(async (c) => {
    const ports = {}
    for (let i = 0; i < RYW_ROUNDS; i++) {
      let row
      switch (i % 3) {
        case 0: // unnamed extended statements
          await c.query('INSERT INTO ryw (id, v) VALUES ($1, $2)', [i, `v${i}`])
          row = (await c.query('SELECT v, inet_server_port() AS port FROM ryw WHERE id = $1', [i])).rows[0]
          assert.equal(row && row.v, `v${i}`, `stale read at ${i}: ${JSON.stringify(row)}`)
          break
        case 1: // named statements
          await c.query({ name: 'ryw_upd', text: 'UPDATE ryw_counter SET n = $1 WHERE id = 1', values: [i] })
          row = (await c.query({ name: 'ryw_sel', text: 'SELECT n, inet_server_port() AS port FROM ryw_counter WHERE id = 1' })).rows[0]
          assert.equal(row.n, i, `stale read at ${i}: ${JSON.stringify(row)}`)
          break
        default: // a committed transaction (simple protocol), then a read
          await c.query(`BEGIN; INSERT INTO ryw (id, v) VALUES (${i}, 'v${i}'); UPDATE ryw_counter SET n = ${i} WHERE id = 1; COMMIT`)
          row = (await c.query('SELECT n, inet_server_port() AS port FROM ryw_counter WHERE id = 1')).rows[0]
          assert.equal(row.n, i, `stale read at ${i}: ${JSON.stringify(row)}`)
      }
      ports[row.port] = (ports[row.port] || 0) + 1
    }
    console.log(`  read-your-writes: ${RYW_ROUNDS} reads by server port ${JSON.stringify(ports)}`)
  })
)

async function main() {
  await setupSchema()
  const only = (process.env.DRIVER_CHECKS || '').split(',').filter(Boolean)
  const failed = []
  const selected = CHECKS.filter((c) => !only.length || only.includes(c.name))
  for (const { name, fn } of selected) {
    const t0 = Date.now()
    try {
      await Promise.race([fn(), sleep(300000).then(() => Promise.reject(new Error('check timed out after 300 s')))])
      console.log(`ok ${name} (${((Date.now() - t0) / 1000).toFixed(1)}s)`)
    } catch (e) {
      failed.push(name)
      console.log(`FAILED ${name} (${((Date.now() - t0) / 1000).toFixed(1)}s)\n${e && e.stack ? e.stack : e}`)
    }
  }
  const version = require('pg/package.json').version
  console.log(`node-postgres ${version} (pg-copy-streams ${require('pg-copy-streams/package.json').version}, node ${process.version}): ${selected.length - failed.length} of ${selected.length} checks ok`)
  if (failed.length) {
    console.log(`node-postgres suite FAILED: ${failed.join(', ')}`)
    process.exit(1)
  }
  console.log('node-postgres suite ok')
  process.exit(0)
}

main().catch((e) => {
  console.log(`node-postgres suite FAILED: ${e && e.stack ? e.stack : e}`)
  process.exit(1)
})
