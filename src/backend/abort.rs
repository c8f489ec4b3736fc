//! Cutting every server connection of a node at once, from the control thread (the node went
//! down or is fenced): a registry of the sockets of each node's open connections, so the data
//! path checks nothing per query and a session learns of the cut from its own next read.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, OnceLock};

/// Why a connection was cut: set once, by the cut.
type CutReason = Arc<OnceLock<Arc<str>>>;

/// The sockets of one node's open server connections (opening, idle or leased).
#[derive(Default)]
pub struct NodeSockets(Mutex<Vec<(RawFd, CutReason)>>);

impl NodeSockets {
    /// Registers the socket of a connection being opened; dropping the registration ends it.
    pub fn register(self: &Arc<Self>, fd: RawFd) -> Registration {
        let reason = CutReason::default();
        self.entries().push((fd, reason.clone()));
        Registration { sockets: self.clone(), fd, reason }
    }

    /// Shuts down every registered socket in both directions: whoever uses one sees the end of
    /// the stream on its next read (or a failed write) at once, frozen server or not. Returns
    /// how many were cut.
    pub fn cut_all(&self, reason: &str) -> usize {
        let reason: Arc<str> = reason.into();
        let entries = self.entries();
        for (fd, why) in entries.iter() {
            let _ = why.set(reason.clone());
            // SAFETY: a registered fd is open: its registration is dropped, under this lock,
            // before the connection's socket closes (see `ServerConn::registration`).
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
        entries.len()
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<(RawFd, CutReason)>> {
        self.0.lock().expect("node sockets poisoned")
    }
}

/// One connection's entry in its node's registry, removed when dropped (which must happen
/// before its socket closes: the fd could be reused by another socket right after).
pub struct Registration {
    sockets: Arc<NodeSockets>,
    fd: RawFd,
    reason: CutReason,
}

impl Registration {
    /// Why the connection was cut, if it was.
    pub fn cut_reason(&self) -> Option<&str> {
        self.reason.get().map(|r| &**r)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self.sockets.entries();
        if let Some(i) = entries.iter().position(|(fd, _)| *fd == self.fd) {
            entries.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn a_cut_ends_the_stream_of_every_registered_socket_and_says_why() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sockets = Arc::new(NodeSockets::default());
        let mut a = std::net::TcpStream::connect(addr).unwrap();
        let (_server_a, _) = listener.accept().unwrap();
        let b = std::net::TcpStream::connect(addr).unwrap();
        let (_server_b, _) = listener.accept().unwrap();
        let reg_a = sockets.register(a.as_raw_fd());
        let reg_b = sockets.register(b.as_raw_fd());
        drop(reg_b);
        drop(b); // deregistered first, then closed: the cut must not touch its fd
        assert_eq!(sockets.cut_all("node0 went down"), 1);
        assert_eq!(reg_a.cut_reason(), Some("node0 went down"));
        let mut buf = [0u8; 8];
        // The peer never wrote or closed: only the cut can end this read.
        assert_eq!(a.read(&mut buf).unwrap(), 0, "a cut socket reads the end of the stream");
        assert!(a.write_all(b"x").is_err(), "and cannot be written");
        drop(reg_a);
        assert_eq!(sockets.cut_all("again"), 0);
    }
}
