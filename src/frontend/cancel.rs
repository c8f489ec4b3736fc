//! Cancel keys: the proxy's own BackendKeyData per client, mapped to the server connection running its query.

use bytes::BufMut;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

/// Which server connection a client is using right now; updated with atomics on every lease.
pub struct CancelTarget {
    /// Server (pid << 32 | secret); 0 when the client holds no server connection.
    key: AtomicU64,
    node: AtomicUsize,
}

impl CancelTarget {
    pub fn set(&self, node: usize, pid: u32, secret: u32) {
        self.node.store(node, Ordering::Relaxed);
        self.key.store(((pid as u64) << 32) | secret as u64, Ordering::Release);
    }

    pub fn clear(&self) {
        self.key.store(0, Ordering::Release);
    }

    fn get(&self) -> Option<(usize, u32, u32)> {
        let key = self.key.load(Ordering::Acquire);
        (key != 0).then(|| (self.node.load(Ordering::Relaxed), (key >> 32) as u32, key as u32))
    }
}

struct Entry {
    secret: u32,
    target: Arc<CancelTarget>,
}

/// Every connected client's cancel key; touched at connect, disconnect and cancel only.
#[derive(Default)]
pub struct CancelRegistry {
    entries: Mutex<HashMap<u32, Entry>>,
}

/// Removes the client's key when its session ends.
pub struct CancelKey {
    pub pid: u32,
    pub secret: u32,
    pub target: Arc<CancelTarget>,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry.entries.lock().expect("cancel registry poisoned").remove(&self.pid);
    }
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let mut rng = rand::thread_rng();
        let mut entries = self.entries.lock().expect("cancel registry poisoned");
        let pid = loop {
            let pid = rng.gen_range(1..i32::MAX as u32);
            if !entries.contains_key(&pid) {
                break pid;
            }
        };
        let secret = rng.gen();
        let target = Arc::new(CancelTarget { key: AtomicU64::new(0), node: AtomicUsize::new(0) });
        entries.insert(pid, Entry { secret, target: target.clone() });
        CancelKey { pid, secret, target, registry: self.clone() }
    }

    /// The server connection to cancel for a client's key, if the key is valid and a query runs.
    pub fn lookup(&self, pid: u32, secret: u32) -> Option<(usize, u32, u32)> {
        let entries = self.entries.lock().expect("cancel registry poisoned");
        let entry = entries.get(&pid).filter(|e| e.secret == secret)?;
        entry.target.get()
    }
}

/// With synchronous replication: whether server backend `pid` on node `node` is waiting for its
/// commit to reach the synchronous standbys (`wait_event = 'SyncRep'`). Cancelling that wait
/// would make the commit visible on the leader and acknowledged (with a warning) although no
/// follower holds it, so such a cancel is not forwarded. Asked over a fresh control-plane
/// connection (cancels are rare); unknown (no answer within `monitor.timeout`) counts as not
/// waiting. A commit that starts waiting just after the answer is still cancelled: the window
/// is the round trip of this check.
pub async fn commit_waits_for_standbys(config: Arc<crate::config::Config>, node: usize, pid: u32) -> bool {
    // On the control thread: the connection's timeouts need a timer, which sessions' runtime lacks.
    let check = crate::control::spawn(async move {
        let pool = crate::topology::monitor::control_pool(&config, &config.nodes[node]);
        let ask = async {
            let client = pool.get().await.ok()?;
            let sql = "SELECT wait_event = 'SyncRep' FROM pg_stat_activity WHERE pid = $1";
            let row = client.query_opt(sql, &[&(pid as i32)]).await.ok()??;
            row.get::<_, Option<bool>>(0)
        };
        tokio::time::timeout(config.monitor.timeout, ask).await.ok().flatten().unwrap_or(false)
    });
    check.await.unwrap_or(false)
}

/// Sends a CancelRequest for (pid, secret) to a server, as a new connection does.
pub async fn send_cancel(host: &str, port: u16, pid: u32, secret: u32) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(16);
    msg.put_i32(16);
    msg.put_i32(80877102);
    msg.put_u32(pid);
    msg.put_u32(secret);
    let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.write_all(&msg).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_the_current_target_and_vanish_on_drop() {
        let reg = Arc::new(CancelRegistry::default());
        let key = reg.register();
        assert_eq!(reg.lookup(key.pid, key.secret), None);
        key.target.set(2, 77, 99);
        assert_eq!(reg.lookup(key.pid, key.secret), Some((2, 77, 99)));
        assert_eq!(reg.lookup(key.pid, key.secret.wrapping_add(1)), None);
        key.target.clear();
        assert_eq!(reg.lookup(key.pid, key.secret), None);
        let pid = key.pid;
        drop(key);
        assert!(reg.entries.lock().unwrap().get(&pid).is_none());
    }
}
