//! One pool of server connections for a (node, database, user): idle connections (most recently
//! used first), a size limit, and sessions waiting for a connection, served in arrival order.
//!
//! Written for the data path rather than on deadpool: a lease that an idle connection serves is
//! one uncontended lock, a pop and a check of the socket, with no semaphore, clock read or
//! per-object metrics. A returned connection goes straight to the longest waiter.

use super::abort::NodeSockets;
use super::conn::{BackendError, Login, ServerConn};
use super::failures::{Failure, FailureLog, Target};
use super::server_secret::ServerSecret;
use crate::metrics::{NodeMetrics, PoolGauges, PoolStats};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("no server connection became free within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Milliseconds since start, advanced by the reaper: idle ages without a clock read per return.
pub struct CoarseClock {
    start: Instant,
    ms: AtomicU64,
}

impl CoarseClock {
    pub fn new() -> CoarseClock {
        CoarseClock { start: Instant::now(), ms: AtomicU64::new(0) }
    }

    pub fn tick(&self) {
        self.ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }
}

impl Default for CoarseClock {
    fn default() -> Self {
        CoarseClock::new()
    }
}

/// How the connections of one pool are opened, reset and counted.
pub struct PoolConfig {
    /// The node's name, for log lines.
    pub node: String,
    pub login: Login,
    pub max_size: usize,
    pub connect_timeout: Duration,
    pub reset_query: String,
    pub metrics: Arc<NodeMetrics>,
    /// This pool's own gauges (node, database, user), set by `publish_stats`.
    pub gauges: PoolGauges,
    pub clock: Arc<CoarseClock>,
    /// The node's socket registry every connection of this pool joins.
    pub sockets: Arc<NodeSockets>,
}

#[derive(Clone)]
pub struct Pool(Arc<Inner>);

struct Inner {
    config: PoolConfig,
    /// `config.max_size` as RELOAD last set it.
    max_size: AtomicUsize,
    /// What new connections log in with (RELOAD may change it; SCRAM passthrough learns a
    /// ClientKey from the sessions that use the pool).
    secret: Mutex<ServerSecret>,
    state: Mutex<State>,
    /// Connect failures, logged once per change, naming `target`.
    failures: FailureLog,
    target: Target,
}

#[derive(Default)]
struct State {
    /// Most recently returned last.
    idle: Vec<Idle>,
    /// Connections counted against `max_size`: idle, leased, or being opened or reset.
    size: usize,
    /// Sessions waiting for a connection, with when each began to wait.
    waiters: VecDeque<(Instant, oneshot::Sender<Handoff>)>,
    /// ParameterStatus values of past logins, by their startup settings (see `login_params`).
    logins: Vec<(Vec<(String, String)>, LoginParams)>,
}

/// The ParameterStatus (name, value) pairs a login was told.
pub type LoginParams = Arc<[(String, String)]>;

/// Distinct startup-setting sets remembered per pool (drivers send the same ones every time).
const LOGINS_KEPT: usize = 16;

struct Idle {
    conn: Box<ServerConn>,
    since_ms: u64,
}

/// What a lease starts from: a connection, or room under `max_size` to open one; or word
/// that the node's connections were cut (`abort_waiters`), with why.
enum Handoff {
    Conn(Box<ServerConn>),
    Room,
    Aborted(Arc<str>),
}

impl Pool {
    pub fn new(config: PoolConfig) -> Pool {
        let max_size = AtomicUsize::new(config.max_size);
        let secret = Mutex::new(config.login.secret.clone());
        let login = &config.login;
        let target = Target {
            node: config.node.clone(),
            addr: format!("{}:{}", login.host, login.port),
            user: login.user.clone(),
            database: login.database.clone(),
            purpose: "pool",
        };
        let failures = FailureLog::default();
        Pool(Arc::new(Inner { config, max_size, secret, state: Mutex::new(State::default()), failures, target }))
    }

    /// The database and user this pool logs in as.
    pub fn database_and_user(&self) -> (&str, &str) {
        (&self.0.config.login.database, &self.0.config.login.user)
    }

    /// The idle connections: (server pid, age).
    pub fn idle_connections(&self) -> Vec<(u32, Duration)> {
        self.state().idle.iter().map(|i| (i.conn.pid, i.conn.created.elapsed())).collect()
    }

    /// RELOAD: a new size limit (connections above it close as they come back) and secret.
    pub fn reconfigure(&self, max_size: usize, secret: ServerSecret) {
        self.set_max_size(max_size);
        let mut kept = self.0.secret.lock().expect("pool secret poisoned");
        *kept = kept.updated(secret);
    }

    /// A session's login secret: SCRAM passthrough learns the ClientKey it proved.
    pub fn learn_secret(&self, session: &ServerSecret) {
        self.0.secret.lock().expect("pool secret poisoned").learn(session);
    }

    /// A new size limit: connections above it close as they come back (0: the node drains).
    pub fn set_max_size(&self, max_size: usize) {
        self.0.max_size.store(max_size, Ordering::Relaxed);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().expect("pool state poisoned")
    }

    /// The ParameterStatus values a login with these startup settings got, while the pool holds
    /// a connection (which shows the database and role still work); forgotten when it holds none.
    pub fn login_params(&self, startup: &[(String, String)]) -> Option<LoginParams> {
        let mut state = self.state();
        if state.size == 0 {
            state.logins.clear();
            return None;
        }
        state.logins.iter().find(|(s, _)| s.as_slice() == startup).map(|(_, p)| p.clone())
    }

    /// Remembers what a login with these startup settings was told, for `login_params`.
    pub fn remember_login_params(&self, startup: Vec<(String, String)>, params: &[(String, String)]) {
        let mut state = self.state();
        state.logins.retain(|(s, _)| *s != startup);
        if state.logins.len() >= LOGINS_KEPT {
            state.logins.remove(0);
        }
        state.logins.push((startup, params.into()));
    }

    /// Leases a connection, waiting at most `wait_limit` for one to be returned when the pool is
    /// full; says how long it waited when it was not served at once. The idle connection with
    /// server pid `prefer` is taken if there is one (where a client's `nextval` ran).
    pub async fn lease(
        &self,
        wait_limit: Duration,
        prefer: Option<u32>,
    ) -> (Result<Lease, LeaseError>, Option<Duration>) {
        if let Some(lease) = self.take_ready(prefer) {
            return (Ok(lease), None);
        }
        // Boxed: a wait, connect or reset is rare and its state large; inline it would sit in
        // every session's future for the session's whole life.
        Box::pin(self.lease_slowly(wait_limit, prefer)).await
    }

    /// Most leases: an idle connection fit to serve as it is, taken with no future built.
    fn take_ready(&self, prefer: Option<u32>) -> Option<Lease> {
        let mut conn = {
            let mut state = self.state();
            let preferred = prefer.and_then(|pid| state.idle.iter().rposition(|i| i.conn.pid == pid));
            let i = preferred.or(state.idle.len().checked_sub(1))?;
            if state.idle[i].conn.needs_reset {
                return None; // the reset query runs in `lease_slowly`
            }
            state.idle.remove(i).conn
        };
        let room = Room(Some(self));
        if Self::unsolicited_input(&mut conn) {
            return None; // closed, its room given back; `lease_slowly` takes the next
        }
        Some(room.into_lease(conn))
    }

    async fn lease_slowly(
        &self,
        wait_limit: Duration,
        prefer: Option<u32>,
    ) -> (Result<Lease, LeaseError>, Option<Duration>) {
        let mut waiting_since: Option<Instant> = None;
        loop {
            let next = {
                let mut state = self.state();
                let preferred = prefer.and_then(|pid| state.idle.iter().rposition(|i| i.conn.pid == pid));
                if let Some(i) = preferred {
                    Some(Handoff::Conn(state.idle.remove(i).conn))
                } else if let Some(idle) = state.idle.pop() {
                    Some(Handoff::Conn(idle.conn))
                } else if state.size < self.0.max_size.load(Ordering::Relaxed) {
                    state.size += 1;
                    Some(Handoff::Room)
                } else {
                    None
                }
            };
            let next = match next {
                Some(next) => next,
                None => {
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    match crate::control::timeout_at(since + wait_limit, self.wait(since)).await {
                        Ok(Handoff::Aborted(reason)) => {
                            let cut = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, reason.to_string());
                            return (Err(LeaseError::Backend(cut.into())), Some(since.elapsed()));
                        }
                        Ok(next) => next,
                        Err(_) => return (Err(LeaseError::Timeout(wait_limit)), Some(since.elapsed())),
                    }
                }
            };
            let waited = waiting_since.map(|since| since.elapsed());
            // From here this lease holds one unit of `size`; the guard gives it back on failure or
            // if the caller goes away mid-connect or mid-reset.
            let room = Room(Some(self));
            match next {
                Handoff::Conn(conn) => {
                    if let Some(conn) = self.recycle(conn).await {
                        return (Ok(room.into_lease(conn)), waited);
                    }
                }
                Handoff::Room => match self.connect().await {
                    Ok(conn) => return (Ok(room.into_lease(conn)), waited),
                    Err(e) => return (Err(e.into()), waited),
                },
                Handoff::Aborted(_) => unreachable!("only a waiter is sent it, and returns"),
            }
        }
    }

    /// Queues for the next returned connection or freed room.
    fn wait(&self, since: Instant) -> Waiter<'_> {
        let (tx, rx) = oneshot::channel();
        self.state().waiters.push_back((since, tx));
        Waiter { rx, pool: self, done: false }
    }

    /// Anything the server sent while idle (a FATAL, a notification) makes a connection unfit
    /// to share.
    fn unsolicited_input(conn: &mut ServerConn) -> bool {
        let unfit = conn.has_pending_input();
        if unfit {
            tracing::debug!(pid = conn.pid, "closing a pooled connection with unsolicited input");
        }
        unfit
    }

    /// Checks a connection before reuse; None when it was unfit and has been closed.
    async fn recycle(&self, mut conn: Box<ServerConn>) -> Option<Box<ServerConn>> {
        if Self::unsolicited_input(&mut conn) {
            return None;
        }
        if conn.needs_reset {
            let reset = crate::control::timeout(self.0.config.connect_timeout, conn.run(&self.0.config.reset_query));
            if let Err(e) = Box::pin(reset).await.unwrap_or_else(|_| Err(BackendError::Timeout("reset".into()))) {
                tracing::debug!(pid = conn.pid, error = %e, "closing a pooled connection whose reset failed");
                return None;
            }
            // The reset query may have dropped them (DISCARD ALL does).
            conn.statements.clear();
            conn.sql_statements.clear();
            conn.settings.clear();
            conn.needs_reset = false;
        }
        Some(conn)
    }

    async fn connect(&self) -> Result<Box<ServerConn>, BackendError> {
        let config = &self.0.config;
        // Boxed: a connect's state is large and rare; inline it would sit in every session's future.
        let mut login = config.login.clone();
        login.secret.clone_from(&self.0.secret.lock().expect("pool secret poisoned"));
        let result = Box::pin(ServerConn::connect(&login, config.connect_timeout, Some(&config.sockets))).await;
        config.metrics.connect_result(result.is_ok());
        match &result {
            Ok(_) => self.0.failures.succeeded(&self.0.target, "pool"),
            Err(e) => self.0.failures.failed(&self.0.target, "pool", Failure::of_backend(e)),
        }
        let mut conn = result?;
        conn.gauge = Some(config.metrics.server_connection());
        Ok(Box::new(conn))
    }

    /// Takes back a connection: to the longest waiter if any, else to the idle stack.
    fn put_back(&self, mut conn: Box<ServerConn>) {
        let mut state = self.state();
        while let Some((_, waiter)) = state.waiters.pop_front() {
            match waiter.send(Handoff::Conn(conn)) {
                Ok(()) => return,
                Err(Handoff::Conn(back)) => conn = back, // that waiter gave up
                Err(_) => unreachable!("sent a connection"),
            }
        }
        if state.size > self.0.max_size.load(Ordering::Relaxed) {
            state.size -= 1; // RELOAD shrank the pool: this one closes (outside the lock)
            drop(state);
            drop(conn);
            return;
        }
        state.idle.push(Idle { conn, since_ms: self.0.config.clock.now() });
    }

    /// A connection was closed or never opened: its room goes to the longest waiter, if any.
    fn free_room(&self) {
        let mut state = self.state();
        while let Some((_, waiter)) = state.waiters.pop_front() {
            if waiter.send(Handoff::Room).is_ok() {
                return;
            }
        }
        state.size -= 1;
    }

    /// Sends every session waiting for a connection away with `reason` (the node's connections
    /// are being cut: one freed now would only open a connection to a node that left).
    pub fn abort_waiters(&self, reason: &Arc<str>) {
        let waiters = std::mem::take(&mut self.state().waiters);
        for (_, waiter) in waiters {
            let _ = waiter.send(Handoff::Aborted(reason.clone()));
        }
    }

    /// What the pool holds now; one lock, no socket or clock.
    pub fn stats(&self) -> PoolStats {
        let state = self.state();
        let waiting = state.waiters.iter().filter(|(_, w)| !w.is_closed());
        PoolStats {
            active: state.size - state.idle.len(),
            idle: state.idle.len(),
            longest_wait: waiting.clone().next().map(|(since, _)| since.elapsed()),
            waiting: waiting.count(),
            size_limit: self.0.max_size.load(Ordering::Relaxed),
        }
    }

    /// Sets this pool's gauges from `stats` (run by the upkeep tick, off the data path).
    pub fn publish_stats(&self) {
        self.0.config.gauges.publish(self.stats());
    }

    /// Closes the idle connections `keep` (given each one and how long it has idled) refuses.
    pub fn close_idle(&self, keep: impl Fn(&ServerConn, Duration) -> bool) {
        let now = self.0.config.clock.now();
        let closed: Vec<Idle> = {
            let mut state = self.state();
            let (kept, closed) = std::mem::take(&mut state.idle)
                .into_iter()
                .partition(|i| keep(&i.conn, Duration::from_millis(now.saturating_sub(i.since_ms))));
            state.idle = kept;
            state.size -= closed.len();
            closed
        };
        drop(closed); // outside the lock: closing sockets
    }
}

/// A lease's claim on one unit of the pool's size until it holds a connection.
struct Room<'a>(Option<&'a Pool>);

impl Room<'_> {
    fn into_lease(mut self, conn: Box<ServerConn>) -> Lease {
        let pool = self.0.take().expect("room claimed once").clone();
        Lease { conn: Some(conn), pool }
    }
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        if let Some(pool) = self.0 {
            pool.free_room();
        }
    }
}

/// Waits for a handoff; a handoff that arrives after the waiter gave up goes back to the pool.
struct Waiter<'a> {
    rx: oneshot::Receiver<Handoff>,
    pool: &'a Pool,
    done: bool,
}

impl Future for Waiter<'_> {
    type Output = Handoff;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Handoff> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(handoff)) => {
                self.done = true;
                Poll::Ready(handoff)
            }
            // The pool holds every sender while it lives, and we hold the pool.
            Poll::Ready(Err(_)) => unreachable!("pool dropped a waiter"),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.rx.close();
        match self.rx.try_recv() {
            Ok(Handoff::Conn(conn)) => self.pool.put_back(conn),
            Ok(Handoff::Room) => self.pool.free_room(),
            Ok(Handoff::Aborted(_)) | Err(_) => {}
        }
    }
}

/// A leased server connection; dropping it returns the connection to its pool.
pub struct Lease {
    conn: Option<Box<ServerConn>>,
    pool: Pool,
}

impl Lease {
    /// Closes the connection instead of returning it (broken, or left mid-transaction).
    pub fn discard(mut self) {
        self.conn = None;
    }
}

impl std::ops::Deref for Lease {
    type Target = ServerConn;
    fn deref(&self) -> &ServerConn {
        self.conn.as_ref().expect("leased")
    }
}

impl std::ops::DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut ServerConn {
        self.conn.as_mut().expect("leased")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        match self.conn.take() {
            Some(conn) => self.pool.put_back(conn),
            None => self.pool.free_room(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_size: usize) -> Pool {
        let login = Login {
            host: "127.0.0.1".into(),
            port: 1,
            user: "app".into(),
            secret: ServerSecret::Password(String::new()),
            database: "db".into(),
            tls: Default::default(),
        };
        Pool::new(PoolConfig {
            node: "node1".into(),
            login,
            max_size,
            connect_timeout: Duration::from_secs(1),
            reset_query: String::new(),
            metrics: Arc::new(NodeMetrics::new("node1")),
            gauges: PoolGauges::new("node1", "db", "app"),
            clock: Arc::default(),
            sockets: Arc::default(),
        })
    }

    #[test]
    fn a_waiter_is_sent_away_when_its_node_is_cut() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        runtime.block_on(async {
            let pool = pool(0); // full from the start: every lease waits
            let waiting = pool.clone();
            let lease = tokio::spawn(async move { waiting.lease(Duration::from_secs(30), None).await });
            while pool.stats().waiting == 0 {
                tokio::task::yield_now().await;
            }
            pool.abort_waiters(&Arc::from("node1 went down"));
            let (result, waited) = lease.await.unwrap();
            match result {
                Err(LeaseError::Backend(BackendError::Io(e))) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted);
                    assert_eq!(e.to_string(), "node1 went down");
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("leased from a pool of size 0"),
            }
            assert!(waited.is_some());
            assert_eq!(pool.stats().waiting, 0);
        });
    }
}
