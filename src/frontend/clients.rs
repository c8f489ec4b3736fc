//! Every connected client as the admin console sees it, and the signals its session listens for
//! (KILL, shutdown): one entry per session, updated with relaxed atomics once per unit of work.

use atomic_waker::AtomicWaker;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

/// Where a client's session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStatus {
    /// Between units of work.
    Idle = 0,
    /// Waiting for a server connection (or, while paused, for RESUME).
    Waiting = 1,
    /// Running a unit of work on a server connection.
    Active = 2,
}

impl ClientStatus {
    pub fn name(self) -> &'static str {
        match self {
            ClientStatus::Idle => "idle",
            ClientStatus::Waiting => "waiting",
            ClientStatus::Active => "active",
        }
    }

    fn from_u8(v: u8) -> ClientStatus {
        match v {
            1 => ClientStatus::Waiting,
            2 => ClientStatus::Active,
            _ => ClientStatus::Idle,
        }
    }
}

/// What a session is asked to do from outside, as bits.
pub mod signal {
    /// Close now, whatever it is doing (KILL).
    pub const KILL: u8 = 1;
    /// Close at the next idle point (SHUTDOWN, SIGTERM).
    pub const SHUTDOWN: u8 = 2;
    /// Waited for the client longer than its idle timeout (see `IdleWatch`): close.
    pub const IDLE_TIMEOUT: u8 = 4;
    /// Idle between transactions for a while: give back the buffers (they return with the next
    /// message), so thousands of idle clients cost little memory.
    pub const SHRINK: u8 = 8;
}

/// What a session is waiting for, as the idle watch reads it: one relaxed store per change
/// (a session starting or ending a wait for its client), no clock read on the data path.
pub mod wait {
    /// Working, or waiting for a server.
    pub const BUSY: u64 = 0;
    /// Waiting for the client between transactions.
    pub const IDLE: u64 = 1;
    /// Waiting for the client inside a transaction (holding a server connection).
    pub const IDLE_IN_TRANSACTION: u64 = 2;
    /// The state in the low bits, a count of waits above them (a new wait is a new number).
    pub fn encode(state: u64, count: u64) -> u64 {
        count << 2 | state
    }
    pub fn state(word: u64) -> u64 {
        word & 3
    }
}

/// One connected client.
pub struct ClientEntry {
    pub id: u64,
    pub peer: SocketAddr,
    pub user: String,
    pub database: String,
    pub connected: SystemTime,
    status: AtomicU8,
    /// The node of its current server connection (`usize::MAX`: none), that connection's
    /// server pid and when it was opened (Unix ms).
    node: AtomicUsize,
    server_pid: AtomicU32,
    server_opened_ms: AtomicU64,
    units: AtomicU64,
    /// Its consistency level's name index and floor, as of its last unit.
    level: AtomicU8,
    timeline: AtomicU32,
    lsn: AtomicU64,
    signals: AtomicU8,
    waker: AtomicWaker,
    /// [`wait`]'s word: what the session waits for, and which wait it is.
    waiting: AtomicU64,
}

impl ClientEntry {
    /// The session starts or ends a wait (a [`wait::encode`]d word).
    pub fn set_waiting(&self, word: u64) {
        self.waiting.store(word, Ordering::Relaxed);
    }

    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> ClientStatus {
        ClientStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    pub fn set_status(&self, status: ClientStatus) {
        self.status.store(status as u8, Ordering::Relaxed);
    }

    pub fn node(&self) -> Option<usize> {
        Some(self.node.load(Ordering::Relaxed)).filter(|&n| n != usize::MAX)
    }

    /// A unit leased a server connection (Some) or gave it back (None).
    pub fn set_server(&self, server: Option<(usize, u32, u64)>) {
        let (node, pid, opened_ms) = server.unwrap_or((usize::MAX, 0, 0));
        self.server_pid.store(pid, Ordering::Relaxed);
        self.server_opened_ms.store(opened_ms, Ordering::Relaxed);
        self.node.store(node, Ordering::Relaxed);
    }

    /// Its server connection's pid and age, while it holds one.
    pub fn server(&self) -> Option<(u32, std::time::Duration)> {
        let pid = self.server_pid.load(Ordering::Relaxed);
        let opened =
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.server_opened_ms.load(Ordering::Relaxed));
        (pid != 0).then(|| (pid, SystemTime::now().duration_since(opened).unwrap_or_default()))
    }

    pub fn units(&self) -> u64 {
        self.units.load(Ordering::Relaxed)
    }

    /// A unit ended: counts it and records the session's floor.
    pub fn unit_ended(&self, level: u8, timeline: u32, lsn: u64) {
        self.units.fetch_add(1, Ordering::Relaxed);
        self.level.store(level, Ordering::Relaxed);
        self.timeline.store(timeline, Ordering::Relaxed);
        self.lsn.store(lsn, Ordering::Relaxed);
    }

    /// (level index, timeline, LSN) as of the last unit.
    pub fn floor(&self) -> (u8, u32, u64) {
        (self.level.load(Ordering::Relaxed), self.timeline.load(Ordering::Relaxed), self.lsn.load(Ordering::Relaxed))
    }

    /// Asks the session to do something (bits of [`signal`]) and wakes it if it waits.
    pub fn signal(&self, bits: u8) {
        self.signals.fetch_or(bits, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Takes back signals that have been acted on (SHRINK: it may come again).
    pub fn clear_signals(&self, bits: u8) {
        self.signals.fetch_and(!bits, Ordering::AcqRel);
    }

    /// The signals received so far.
    pub fn signals(&self) -> u8 {
        self.signals.load(Ordering::Acquire)
    }

    /// Resolves when any signal in `mask` has arrived: a few atomics per poll, no lock, so a
    /// session can wait on it beside its sockets on every wait.
    pub fn signalled(&self, mask: u8) -> Signalled<'_> {
        Signalled { entry: self, mask }
    }
}

/// The future of [`ClientEntry::signalled`].
pub struct Signalled<'a> {
    entry: &'a ClientEntry,
    mask: u8,
}

impl Future for Signalled<'_> {
    type Output = u8;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
        let bits = self.entry.signals() & self.mask;
        if bits != 0 {
            return Poll::Ready(bits);
        }
        self.entry.waker.register(cx.waker());
        // A signal between the first check and the registration would otherwise be missed.
        let bits = self.entry.signals() & self.mask;
        if bits != 0 {
            Poll::Ready(bits)
        } else {
            Poll::Pending
        }
    }
}

/// Every connected client, by id (ids are never reused).
#[derive(Default)]
pub struct Clients {
    next_id: AtomicU64,
    by_id: Mutex<BTreeMap<u64, Arc<ClientEntry>>>,
}

/// How many clients of one user, or of one database, may be logged in (0: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    pub per_user: usize,
    pub per_database: usize,
}

impl Clients {
    /// Adds a logged-in client within `limits` (counted under the registry's lock, so two logins
    /// cannot both take the last place); it leaves the registry when the returned guard drops.
    pub fn register_within(
        &self,
        peer: SocketAddr,
        user: &str,
        database: &str,
        limits: Limits,
    ) -> Result<Registered<'_>, crate::error::ProxyError> {
        let mut map = self.map();
        let full = |limit: usize, same: &dyn Fn(&ClientEntry) -> bool| {
            limit > 0 && map.values().filter(|e| same(e)).count() >= limit
        };
        if full(limits.per_user, &|e| e.user == user) {
            return Err(crate::error::ProxyError::TooManyClientsFor(format!("role \"{user}\"")));
        }
        if full(limits.per_database, &|e| e.database == database) {
            return Err(crate::error::ProxyError::TooManyClientsFor(format!("database \"{database}\"")));
        }
        let registered = self.entry(peer, user, database);
        map.insert(registered.id, registered.clone());
        Ok(Registered { clients: self, entry: registered })
    }

    /// Adds a logged-in client; it leaves the registry when the returned guard drops.
    pub fn register(&self, peer: SocketAddr, user: &str, database: &str) -> Registered<'_> {
        let entry = self.entry(peer, user, database);
        self.map().insert(entry.id, entry.clone());
        Registered { clients: self, entry }
    }

    fn entry(&self, peer: SocketAddr, user: &str, database: &str) -> Arc<ClientEntry> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        Arc::new(ClientEntry {
            id,
            peer,
            user: user.to_string(),
            database: database.to_string(),
            connected: SystemTime::now(),
            status: AtomicU8::new(ClientStatus::Idle as u8),
            node: AtomicUsize::new(usize::MAX),
            server_pid: AtomicU32::new(0),
            server_opened_ms: AtomicU64::new(0),
            units: AtomicU64::new(0),
            level: AtomicU8::new(0),
            timeline: AtomicU32::new(0),
            lsn: AtomicU64::new(0),
            signals: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            waiting: AtomicU64::new(wait::BUSY),
        })
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<ClientEntry>>> {
        self.by_id.lock().expect("client registry poisoned")
    }

    /// Every client, by id.
    pub fn list(&self) -> Vec<Arc<ClientEntry>> {
        self.map().values().cloned().collect()
    }

    pub fn get(&self, id: u64) -> Option<Arc<ClientEntry>> {
        self.map().get(&id).cloned()
    }

    /// Publishes how many clients are in each state (run by the upkeep tick).
    pub fn publish_states(&self) {
        let mut counts = [0usize; 3];
        for entry in self.list() {
            counts[entry.status() as usize] += 1;
        }
        for status in [ClientStatus::Idle, ClientStatus::Waiting, ClientStatus::Active] {
            metrics::gauge!(crate::metrics::CLIENTS, "state" => status.name()).set(counts[status as usize] as f64);
        }
    }

    /// Sends a signal to every client.
    pub fn signal_all(&self, bits: u8) {
        for entry in self.list() {
            entry.signal(bits);
        }
    }
}

/// A client's place in the registry, for as long as its session runs.
pub struct Registered<'a> {
    clients: &'a Clients,
    pub entry: Arc<ClientEntry>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.clients.map().remove(&self.entry.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn signals_wake_a_waiting_session_and_entries_leave_with_their_session() {
        let clients = Clients::default();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let a = clients.register(peer, "app", "db");
        let b = clients.register(peer, "app", "db");
        assert_eq!((a.entry.id, b.entry.id, clients.list().len()), (1, 2, 2));
        let entry = a.entry.clone();
        let waiter = tokio::spawn(async move { entry.signalled(signal::KILL).await });
        tokio::task::yield_now().await;
        a.entry.signal(signal::SHUTDOWN); // not in the mask: the waiter keeps waiting
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clients.get(1).unwrap().signal(signal::KILL);
        assert_eq!(waiter.await.unwrap(), signal::KILL);
        a.entry.set_status(ClientStatus::Active);
        a.entry.set_server(Some((2, 4242, 0)));
        a.entry.unit_ended(3, 1, 0x3000148);
        assert_eq!((a.entry.status(), a.entry.node(), a.entry.units()), (ClientStatus::Active, Some(2), 1));
        assert_eq!(a.entry.server().map(|(pid, _)| pid), Some(4242));
        assert_eq!(a.entry.floor(), (3, 1, 0x3000148));
        drop(a);
        assert_eq!(clients.list().iter().map(|e| e.id).collect::<Vec<_>>(), vec![2]);
    }
}

/// How long a client waits between transactions before it is told to give back its buffers.
pub const SHRINK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Finds sessions that waited for their client longer than `proxy.client_idle_timeout` or
/// `proxy.idle_in_transaction_timeout`, or idle for [`SHRINK_AFTER`] (run once a second on the
/// control thread): a wait seen again with the same number is the same wait.
#[derive(Default)]
pub struct IdleWatch {
    seen: std::collections::HashMap<u64, Wait>,
}

/// One wait of one client, as the watch saw it.
struct Wait {
    word: u64,
    since: std::time::Instant,
    shrink_sent: bool,
}

impl IdleWatch {
    /// Signals every client over its timeout (zero: none) and tells clients idle for
    /// [`SHRINK_AFTER`] to shrink, once per wait; returns how many were timed out.
    pub fn check(
        &mut self,
        clients: &Clients,
        idle: std::time::Duration,
        in_transaction: std::time::Duration,
        now: std::time::Instant,
    ) -> usize {
        let list = clients.list();
        let present: std::collections::HashSet<u64> = list.iter().map(|e| e.id).collect();
        self.seen.retain(|id, _| present.contains(id));
        let mut signalled = 0;
        for entry in list {
            let word = entry.waiting();
            let limit = match wait::state(word) {
                wait::IDLE => idle,
                wait::IDLE_IN_TRANSACTION => in_transaction,
                _ => {
                    self.seen.remove(&entry.id);
                    continue;
                }
            };
            let seen = self.seen.entry(entry.id).or_insert(Wait { word, since: now, shrink_sent: false });
            if seen.word != word {
                *seen = Wait { word, since: now, shrink_sent: false };
                continue;
            }
            let waited = now.duration_since(seen.since);
            if !seen.shrink_sent && wait::state(word) == wait::IDLE && waited >= SHRINK_AFTER {
                entry.signal(signal::SHRINK);
                seen.shrink_sent = true;
            }
            if !limit.is_zero() && waited >= limit && entry.signals() & signal::IDLE_TIMEOUT == 0 {
                entry.signal(signal::IDLE_TIMEOUT);
                signalled += 1;
            }
        }
        signalled
    }
}

#[cfg(test)]
mod idle_watch_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn an_idle_client_is_told_to_shrink_once_per_wait_and_timed_out_at_its_limit() {
        let clients = Clients::default();
        let a = clients.register("127.0.0.1:5000".parse().unwrap(), "app", "db");
        let (mut watch, t0, never) = (IdleWatch::default(), Instant::now(), Duration::ZERO);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        a.entry.set_waiting(wait::encode(wait::IDLE, 1));
        assert_eq!(watch.check(&clients, never, never, at(0.0)), 0);
        assert_eq!(a.entry.signals(), 0, "a wait just begun");
        watch.check(&clients, never, never, at(1.1));
        assert_eq!(a.entry.signals(), signal::SHRINK, "idle past SHRINK_AFTER");
        a.entry.clear_signals(signal::SHRINK);
        watch.check(&clients, never, never, at(2.5));
        assert_eq!(a.entry.signals(), 0, "once per wait");
        // A new wait (the client ran a unit): shrunk again after a second, timed out at its limit.
        a.entry.set_waiting(wait::encode(wait::IDLE, 2));
        let idle = Duration::from_secs(5);
        assert_eq!(watch.check(&clients, idle, never, at(3.0)), 0);
        assert_eq!(watch.check(&clients, idle, never, at(4.2)), 0);
        assert_eq!(a.entry.signals(), signal::SHRINK);
        assert_eq!(watch.check(&clients, idle, never, at(8.1)), 1);
        assert_eq!(a.entry.signals(), signal::SHRINK | signal::IDLE_TIMEOUT);
        // Inside a transaction: never shrunk (its server connection is held), timed out by its own limit.
        let b = clients.register("127.0.0.1:5001".parse().unwrap(), "app", "db");
        b.entry.set_waiting(wait::encode(wait::IDLE_IN_TRANSACTION, 1));
        watch.check(&clients, idle, Duration::from_secs(2), at(10.0));
        assert_eq!(watch.check(&clients, idle, Duration::from_secs(2), at(12.5)), 1);
        assert_eq!(b.entry.signals(), signal::IDLE_TIMEOUT);
    }
}
