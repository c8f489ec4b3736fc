// pgjdbc through pgcausal in transaction pooling, in front of a leader + followers cluster.
// Compiled and run by tests/drivers.rs:
//
//   javac -d OUT Suite.java && java -cp OUT:/usr/share/java/postgresql.jar Suite HOST PORT USER PASSWORD DBNAME
//
// prepareThreshold=1, so every PreparedStatement is a named server-side statement from its first
// execution, and results come back in binary for the types pgjdbc reads in binary.
// Prints one line per check and a final "pgjdbc suite ok" line; exits 1 if any check failed.

import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.*;
import java.time.Instant;
import java.time.LocalDate;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicReference;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PSQLException;

public class Suite {
    static String host, user, password, db;
    static int port;
    static final int ROUNDS = 150;
    static final int RYW_ROUNDS = 200;

    /** Causal tokens of the connections whose writes later checks read on other connections. Each
     *  session is causally consistent on its own, but a NEW session is only promised what the
     *  followers have replayed (one of them replays 300 ms late) until it adopts the writers' tokens. */
    static final Set<String> TOKENS = new CopyOnWriteArraySet<>();

    /** A new session that starts causally after every token published so far: the tokens are
     *  startup options (-c pgcausal.min_lsn=...), which pgcausal applies itself at login; the
     *  last one is also SET over pgjdbc's default extended protocol, which pgcausal answers too. */
    static Connection connect(String extra) throws SQLException {
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        p.setProperty("prepareThreshold", "1");
        p.setProperty("connectTimeout", "10");
        p.setProperty("sslmode", "disable");
        StringBuilder options = new StringBuilder();
        for (String token : TOKENS) options.append(options.length() == 0 ? "" : " ").append("-c pgcausal.min_lsn=").append(token);
        if (options.length() > 0) p.setProperty("options", options.toString());
        String url = "jdbc:postgresql://" + host + ":" + port + "/" + db + (extra.isEmpty() ? "" : "?" + extra);
        Connection c = DriverManager.getConnection(url, p);
        String last = null;
        for (String token : TOKENS) last = token;
        if (last != null) {
            try (Statement s = c.createStatement()) {
                s.execute("SET pgcausal.min_lsn = '" + last + "'");
            }
        }
        return c;
    }

    static Connection connect() throws SQLException {
        return connect("");
    }

    /** Records c's causal token (covering its committed writes) for the sessions opened after. */
    static void publishToken(Connection c) throws SQLException {
        c.setAutoCommit(true); // commits what was written
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SHOW pgcausal.lsn")) {
            check(rs.next(), "SHOW pgcausal.lsn answered no row");
            TOKENS.add(rs.getString(1));
        }
    }

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static <T> void eq(T got, T want, String what) {
        if (!Objects.equals(got, want)) throw new AssertionError(what + ": got " + got + ", want " + want);
    }

    static String sqlState(Throwable e) {
        return e instanceof SQLException ? ((SQLException) e).getSQLState() : null;
    }

    interface Check {
        void run() throws Exception;
    }

    static final LinkedHashMap<String, Check> CHECKS = new LinkedHashMap<>();

    static void setup() throws SQLException {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            s.execute("DROP TABLE IF EXISTS items, kinds, batch_t, copy_t, ryw, ryw_counter");
            s.execute("CREATE TABLE items (id int PRIMARY KEY, worker int, name text, price numeric(12,2))");
            s.execute("CREATE TABLE kinds (id int PRIMARY KEY, i8 bigint, f8 float8, num numeric, b bytea, ts timestamptz, d date, u uuid, arr int[], flag bool)");
            s.execute("CREATE TABLE batch_t (id int PRIMARY KEY, v text)");
            s.execute("CREATE TABLE copy_t (id int PRIMARY KEY, name text)");
            s.execute("CREATE TABLE ryw (id int PRIMARY KEY, v text)");
            s.execute("CREATE TABLE ryw_counter (id int PRIMARY KEY, n int)");
            s.execute("INSERT INTO ryw_counter VALUES (1, 0)");
            publishToken(c);
        }
    }

    static {
        CHECKS.put("scram_login_and_simple_query", () -> {
            try (Connection c = connect(); Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT current_user, 1 + 1")) {
                check(rs.next(), "a row");
                eq(rs.getString(1), user, "current_user");
                eq(rs.getInt(2), 2, "1 + 1");
            }
            // The simple query protocol, as preferQueryMode=simple sends it.
            try (Connection c = connect("preferQueryMode=simple"); Statement s = c.createStatement()) {
                check(s.execute("SELECT 1; SELECT 2"), "result set");
                check(s.getMoreResults(), "second result");
                try (ResultSet rs = s.getResultSet()) {
                    rs.next();
                    eq(rs.getInt(1), 2, "second statement");
                }
                try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1")) {
                    ps.setInt(1, 41);
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        eq(rs.getInt(1), 42, "simple-mode parameters");
                    }
                }
            }
        });

        CHECKS.put("server_prepared_statements_across_transactions", () -> {
            // Six clients over four server connections per node: statements move between backends.
            ExecutorService pool = Executors.newFixedThreadPool(6);
            List<Future<?>> futures = new ArrayList<>();
            for (int k = 0; k < 6; k++) {
                final int worker = k;
                futures.add(pool.submit(() -> {
                    preparedWorker(worker);
                    return null;
                }));
            }
            pool.shutdown();
            for (Future<?> f : futures) f.get(300, TimeUnit.SECONDS);
            try (Connection c = connect(); Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM items")) {
                rs.next();
                eq(rs.getInt(1), 6 * ROUNDS, "rows");
            }
        });

        CHECKS.put("batch_inserts", () -> {
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO batch_t (id, v) VALUES (?, ?)")) {
                    for (int b = 0; b < 5; b++) {
                        for (int i = 0; i < 200; i++) {
                            ps.setInt(1, b * 1000 + i);
                            ps.setString(2, "batch " + b);
                            ps.addBatch();
                        }
                        int[] counts = ps.executeBatch();
                        eq(counts.length, 200, "batch size");
                        for (int n : counts) check(n == 1 || n == Statement.SUCCESS_NO_INFO, "row count " + n);
                        c.commit();
                    }
                    // A batch that fails midway: nothing of it is kept.
                    for (int i = 0; i < 10; i++) {
                        ps.setInt(1, 9000 + (i == 5 ? -8995 : i)); // id 5 exists
                        ps.setString(2, "failing batch");
                        ps.addBatch();
                    }
                    try {
                        ps.executeBatch();
                        throw new AssertionError("no error");
                    } catch (BatchUpdateException e) {
                        eq(sqlState(e.getNextException() != null ? e.getNextException() : e), "23505", "unique violation");
                    }
                    c.rollback();
                }
                // Statement batches (simple statements in one round trip).
                try (Statement s = c.createStatement()) {
                    for (int i = 0; i < 50; i++) s.addBatch("INSERT INTO batch_t (id, v) VALUES (" + (20000 + i) + ", 'stmt batch')");
                    eq(s.executeBatch().length, 50, "statement batch");
                }
                c.commit();
                try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*), count(*) FILTER (WHERE v = 'failing batch') FROM batch_t")) {
                    rs.next();
                    eq(rs.getInt(1), 1050, "rows");
                    eq(rs.getInt(2), 0, "failed batch rows");
                }
                c.commit();
            }
            // reWriteBatchedInserts turns a batch into multi-row INSERTs.
            try (Connection c = connect("reWriteBatchedInserts=true"); PreparedStatement ps = c.prepareStatement("INSERT INTO batch_t (id, v) VALUES (?, ?)")) {
                for (int i = 0; i < 300; i++) {
                    ps.setInt(1, 30000 + i);
                    ps.setString(2, "rewritten");
                    ps.addBatch();
                }
                ps.executeBatch();
                try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM batch_t WHERE v = 'rewritten'")) {
                    rs.next();
                    eq(rs.getInt(1), 300, "rewritten batch rows");
                }
            }
        });

        CHECKS.put("binary_parameters_and_results", () -> {
            byte[] blob = new byte[10000];
            for (int i = 0; i < blob.length; i++) blob[i] = (byte) i;
            OffsetDateTime ts = OffsetDateTime.of(2024, 2, 29, 12, 34, 56, 789_000_000, ZoneOffset.UTC);
            UUID u = UUID.fromString("12345678-1234-5678-1234-567812345678");
            BigDecimal num = new BigDecimal("12345678901234567890.123456789");
            try (Connection c = connect("binaryTransfer=true");
                 PreparedStatement ins = c.prepareStatement("INSERT INTO kinds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
                 PreparedStatement sel = c.prepareStatement("SELECT * FROM kinds WHERE id = ?")) {
                Array arr = c.createArrayOf("int4", new Integer[] {1, null, 3});
                for (int i = 0; i < 100; i++) {
                    ins.setInt(1, i);
                    ins.setLong(2, 9_000_000_000L);
                    ins.setDouble(3, 1.5);
                    ins.setBigDecimal(4, num);
                    ins.setBytes(5, blob);
                    ins.setObject(6, ts);
                    ins.setObject(7, LocalDate.of(1999, 12, 31));
                    ins.setObject(8, u);
                    ins.setArray(9, arr);
                    ins.setBoolean(10, true);
                    eq(ins.executeUpdate(), 1, "insert");
                    sel.setInt(1, i);
                    try (ResultSet rs = sel.executeQuery()) {
                        check(rs.next(), "row " + i);
                        eq(rs.getLong(2), 9_000_000_000L, "int8");
                        eq(rs.getDouble(3), 1.5, "float8");
                        eq(rs.getBigDecimal(4), num, "numeric");
                        check(Arrays.equals(rs.getBytes(5), blob), "bytea");
                        eq(rs.getObject(6, OffsetDateTime.class).toInstant(), ts.toInstant(), "timestamptz");
                        eq(rs.getObject(7, LocalDate.class), LocalDate.of(1999, 12, 31), "date");
                        eq(rs.getObject(8), u, "uuid");
                        eq(Arrays.asList((Integer[]) rs.getArray(9).getArray()), Arrays.asList(1, null, 3), "int[]");
                        eq(rs.getBoolean(10), true, "bool");
                    }
                }
                check(ins.unwrap(PGStatement.class).isUseServerPrepare(), "server-side prepared");
                check(sel.unwrap(PGStatement.class).isUseServerPrepare(), "server-side prepared");
            }
        });

        CHECKS.put("transaction_rollback", () -> {
            try (Connection c = connect()) {
                c.setAutoCommit(false);
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO items (id, worker, name) VALUES (?, -1, ?)")) {
                    ps.setInt(1, -1);
                    ps.setString(2, "kept");
                    ps.executeUpdate();
                    c.commit();
                    ps.setInt(1, -2);
                    ps.setString(2, "rolled back");
                    ps.executeUpdate();
                    c.rollback();
                    ps.setInt(1, -3);
                    ps.setString(2, "outer");
                    ps.executeUpdate();
                    Savepoint sp = c.setSavepoint();
                    ps.setInt(1, -4);
                    ps.setString(2, "inner");
                    ps.executeUpdate();
                    c.rollback(sp);
                    c.commit();
                }
                try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT string_agg(id::text, ',' ORDER BY id) FROM items WHERE worker = -1")) {
                    rs.next();
                    eq(rs.getString(1), "-3,-1", "surviving rows");
                }
                c.commit();
            }
        });

        CHECKS.put("errors_leave_the_connection_usable", () -> {
            try (Connection c = connect(); PreparedStatement div = c.prepareStatement("SELECT 1 / ?")) {
                for (int i = 0; i < 3; i++) {
                    div.setInt(1, 0);
                    try {
                        div.executeQuery();
                        throw new AssertionError("no error");
                    } catch (SQLException e) {
                        eq(e.getSQLState(), "22012", "division by zero");
                    }
                    div.setInt(1, 1);
                    try (ResultSet rs = div.executeQuery()) {
                        rs.next();
                        eq(rs.getInt(1), 1, "after error");
                    }
                }
                try (Statement s = c.createStatement()) {
                    s.execute("INSERT INTO items (id, worker, name) VALUES (-10, -2, 'unique')");
                    try {
                        s.execute("INSERT INTO items (id, worker, name) VALUES (-10, -2, 'dup')");
                        throw new AssertionError("no error");
                    } catch (SQLException e) {
                        eq(e.getSQLState(), "23505", "unique violation");
                    }
                    try {
                        s.execute("SELECT * FROM no_such_table");
                        throw new AssertionError("no error");
                    } catch (SQLException e) {
                        eq(e.getSQLState(), "42P01", "undefined table");
                    }
                }
                // An error with autocommit off: the transaction is aborted until rollback.
                c.setAutoCommit(false);
                try (Statement s = c.createStatement()) {
                    s.execute("SELECT 1");
                    try {
                        s.execute("SELECT 1/0");
                        throw new AssertionError("no error");
                    } catch (SQLException e) {
                        eq(e.getSQLState(), "22012", "division by zero");
                    }
                    try {
                        s.execute("SELECT 1");
                        throw new AssertionError("no error");
                    } catch (SQLException e) {
                        eq(e.getSQLState(), "25P02", "in failed transaction");
                    }
                    c.rollback();
                    try (ResultSet rs = s.executeQuery("SELECT 'after errors'")) {
                        rs.next();
                        eq(rs.getString(1), "after errors", "after rollback");
                    }
                    c.commit();
                }
            }
        });

        CHECKS.put("copy_manager", () -> {
            int n = 10000;
            StringBuilder in = new StringBuilder();
            for (int i = 0; i < n; i++) in.append(i).append("\tname ").append(i).append(" \\\\ \\t\n");
            try (Connection c = connect()) {
                CopyManager copy = c.unwrap(PGConnection.class).getCopyAPI();
                eq(copy.copyIn("COPY copy_t (id, name) FROM STDIN", new StringReader(in.toString())), (long) n, "copied in");
                StringWriter out = new StringWriter();
                eq(copy.copyOut("COPY (SELECT id, name FROM copy_t ORDER BY id) TO STDOUT", out), (long) n, "copied out");
                eq(out.toString(), in.toString(), "COPY round trip");
                try {
                    copy.copyIn("COPY copy_t (id, name) FROM STDIN", new StringReader((n + 1) + "\tok\n0\tduplicate\n"));
                    throw new AssertionError("no error");
                } catch (SQLException e) {
                    eq(e.getSQLState(), "23505", "COPY unique violation");
                }
                // COPY inside a transaction with autocommit off.
                c.setAutoCommit(false);
                copy.copyIn("COPY copy_t (id, name) FROM STDIN", new StringReader((n + 2) + "\tin tx\n"));
                c.rollback();
                try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT count(*) FROM copy_t")) {
                    rs.next();
                    eq(rs.getInt(1), n, "rows after failed and rolled back COPY");
                }
                c.commit();
            }
        });

        CHECKS.put("cancel", () -> {
            try (Connection c = connect()) {
                // setQueryTimeout: pgjdbc sends a CancelRequest when the timer fires.
                for (int i = 0; i < 2; i++) {
                    long t0 = System.nanoTime();
                    try (PreparedStatement ps = c.prepareStatement("SELECT pg_sleep(?)")) {
                        ps.setQueryTimeout(1);
                        ps.setDouble(1, 30);
                        ps.executeQuery();
                        throw new AssertionError("not cancelled");
                    } catch (SQLException e) {
                        eq(e.getSQLState(), "57014", "query_canceled: " + e.getMessage());
                    }
                    check(System.nanoTime() - t0 < 20_000_000_000L, "cancelled in time");
                    try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT 'after timeout'")) {
                        rs.next();
                        eq(rs.getString(1), "after timeout", "usable after cancel");
                    }
                }
                // Statement.cancel() from another thread, repeated until the sleep stops (a cancel
                // that reaches the proxy before the query reaches a server is dropped).
                try (Statement s = c.createStatement()) {
                    AtomicReference<Throwable> outcome = new AtomicReference<>();
                    Thread t = new Thread(() -> {
                        try {
                            s.executeQuery("SELECT pg_sleep(30)");
                            outcome.set(new AssertionError("finished"));
                        } catch (Throwable e) {
                            outcome.set(e);
                        }
                    });
                    long t0 = System.nanoTime();
                    t.start();
                    Thread.sleep(1000);
                    for (int i = 0; i < 10 && t.isAlive(); i++) {
                        s.cancel();
                        t.join(2000);
                    }
                    t.join(40000);
                    eq(sqlState(outcome.get()), "57014", "Statement.cancel(): " + outcome.get());
                    check(System.nanoTime() - t0 < 20_000_000_000L, "cancelled in time");
                    try (ResultSet rs = s.executeQuery("SELECT 'after cancel'")) {
                        rs.next();
                        eq(rs.getString(1), "after cancel", "usable after cancel");
                    }
                }
            }
        });

        CHECKS.put("listen_notify", () -> {
            try (Connection listener = connect(); Connection notifier = connect()) {
                PGConnection pgl = listener.unwrap(PGConnection.class);
                try (Statement s = listener.createStatement()) {
                    s.execute("LISTEN drv_events");
                }
                for (int i = 0; i < 20; i++) {
                    if (i % 2 == 1) {
                        try (Statement s = notifier.createStatement()) {
                            s.execute("NOTIFY drv_events, 'n" + i + "'");
                        }
                    } else {
                        try (PreparedStatement ps = notifier.prepareStatement("SELECT pg_notify('drv_events', ?)")) {
                            ps.setString(1, "n" + i);
                            ps.executeQuery().close();
                        }
                    }
                    List<String> got = new ArrayList<>();
                    long deadline = System.currentTimeMillis() + 10000;
                    while (got.isEmpty() && System.currentTimeMillis() < deadline) {
                        PGNotification[] ns = pgl.getNotifications(500);
                        if (ns != null) for (PGNotification n : ns) got.add(n.getParameter());
                    }
                    eq(got, List.of("n" + i), "notifications after NOTIFY " + i);
                    try (Statement s = listener.createStatement(); ResultSet rs = s.executeQuery("SELECT " + i)) {
                        rs.next();
                        eq(rs.getInt(1), i, "listener usable");
                    }
                }
                // The notifier never receives what only the listener subscribed to.
                PGNotification[] stray = notifier.unwrap(PGConnection.class).getNotifications(200);
                check(stray == null || stray.length == 0, "notifier got notifications it never LISTENed for: " + (stray == null ? 0 : stray.length));
                try (Statement s = listener.createStatement()) {
                    s.execute("UNLISTEN *");
                }
            }
        });

        CHECKS.put("read_your_writes", () -> {
            TreeMap<Integer, Integer> ports = new TreeMap<>();
            try (Connection c = connect();
                 PreparedStatement ins = c.prepareStatement("INSERT INTO ryw (id, v) VALUES (?, ?)");
                 PreparedStatement sel = c.prepareStatement("SELECT v, inet_server_port() FROM ryw WHERE id = ?");
                 PreparedStatement upd = c.prepareStatement("UPDATE ryw_counter SET n = ? WHERE id = 1");
                 PreparedStatement cnt = c.prepareStatement("SELECT n, inet_server_port() FROM ryw_counter WHERE id = 1")) {
                for (int i = 0; i < RYW_ROUNDS; i++) {
                    boolean tx = i % 2 == 1;
                    c.setAutoCommit(!tx); // odd rounds: autocommit off, explicit commit
                    ins.setInt(1, i);
                    ins.setString(2, "v" + i);
                    ins.executeUpdate();
                    upd.setInt(1, i);
                    upd.executeUpdate();
                    if (tx) {
                        c.commit();
                        c.setAutoCommit(true);
                    }
                    sel.setInt(1, i);
                    try (ResultSet rs = sel.executeQuery()) {
                        check(rs.next() && ("v" + i).equals(rs.getString(1)), "stale read of ryw at " + i);
                        ports.merge(rs.getInt(2), 1, Integer::sum);
                    }
                    try (ResultSet rs = cnt.executeQuery()) {
                        rs.next();
                        eq(rs.getInt(1), i, "stale read of ryw_counter at " + i);
                    }
                }
            }
            System.out.println("  read-your-writes: " + RYW_ROUNDS + " reads by server port " + ports);
        });
    }

    static void preparedWorker(int k) throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO items (id, worker, name, price) VALUES (?, ?, ?, ?)");
                 PreparedStatement count = c.prepareStatement("SELECT count(*), max(id) FROM items WHERE worker = ?");
                 PreparedStatement get = c.prepareStatement("SELECT name, price FROM items WHERE id = ?");
                 PreparedStatement shared = c.prepareStatement("SELECT ?::int * 2 + ?::int")) {
                for (int i = 0; i < ROUNDS; i++) {
                    int pk = k * 100000 + i;
                    ins.setInt(1, pk);
                    ins.setInt(2, k);
                    ins.setString(3, "item " + i);
                    ins.setBigDecimal(4, BigDecimal.valueOf(i * 25L, 2));
                    eq(ins.executeUpdate(), 1, "insert");
                    count.setInt(1, k);
                    try (ResultSet rs = count.executeQuery()) {
                        rs.next();
                        eq(rs.getInt(1), i + 1, "count " + k + "/" + i);
                        eq(rs.getInt(2), pk, "max " + k + "/" + i);
                    }
                    c.commit();
                    get.setInt(1, pk);
                    try (ResultSet rs = get.executeQuery()) {
                        check(rs.next(), "row " + pk);
                        eq(rs.getString(1), "item " + i, "name");
                        eq(rs.getBigDecimal(2), BigDecimal.valueOf(i * 25L, 2), "price");
                    }
                    c.commit();
                    shared.setInt(1, i);
                    shared.setInt(2, k);
                    try (ResultSet rs = shared.executeQuery()) {
                        rs.next();
                        eq(rs.getInt(1), i * 2 + k, "shared statement");
                    }
                    c.commit();
                }
                check(ins.unwrap(PGStatement.class).isUseServerPrepare(), "server-side prepared");
            }
            publishToken(c); // the count in the check runs on another connection
        }
    }

    public static void main(String[] args) throws Exception {
        host = args[0];
        port = Integer.parseInt(args[1]);
        user = args[2];
        password = args[3];
        db = args[4];
        setup();
        String only = System.getenv().getOrDefault("DRIVER_CHECKS", "");
        List<String> failed = new ArrayList<>();
        int ran = 0;
        for (Map.Entry<String, Check> e : CHECKS.entrySet()) {
            if (!only.isEmpty() && !Arrays.asList(only.split(",")).contains(e.getKey())) continue;
            ran++;
            long t0 = System.nanoTime();
            try {
                e.getValue().run();
                System.out.printf("ok %s (%.1fs)%n", e.getKey(), (System.nanoTime() - t0) / 1e9);
            } catch (Throwable t) {
                failed.add(e.getKey());
                StringWriter sw = new StringWriter();
                t.printStackTrace(new java.io.PrintWriter(sw));
                System.out.printf("FAILED %s (%.1fs)%n%s", e.getKey(), (System.nanoTime() - t0) / 1e9, sw);
            }
            System.out.flush();
        }
        System.out.printf("pgjdbc %s (Java %s): %d of %d checks ok%n", org.postgresql.util.DriverInfo.DRIVER_VERSION,
            System.getProperty("java.version"), ran - failed.size(), ran);
        if (!failed.isEmpty()) {
            System.out.println("pgjdbc suite FAILED: " + String.join(", ", failed));
            System.exit(1);
        }
        System.out.println("pgjdbc suite ok");
        System.exit(0);
    }
}
