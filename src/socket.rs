//! A connection's two halves as the proxy polls them side by side, client or server alike: plain
//! TCP, or the plaintext end of a socketpair whose other end a TLS pump task encrypts.
//!
//! Both variants keep tokio's owned halves (no lock, no copy) and the synchronous `try_write`
//! and `try_read` that let the data path go without a wakeup.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{unix, UnixStream};

/// The reading half of a connection.
pub enum SocketReader {
    Plain(OwnedReadHalf),
    /// A TLS connection's plaintext, from its pump.
    Tls(unix::OwnedReadHalf),
}

/// The writing half of a connection.
pub enum SocketWriter {
    Plain(OwnedWriteHalf),
    /// To a TLS connection's pump, which encrypts.
    Tls(unix::OwnedWriteHalf),
}

/// A plaintext pair of halves whose bytes `pump` carries through a TLS stream, and the end the
/// pump takes.
pub fn tls_pair() -> io::Result<((SocketReader, SocketWriter), UnixStream)> {
    let (near, far) = UnixStream::pair()?;
    let (reader, writer) = near.into_split();
    Ok(((SocketReader::Tls(reader), SocketWriter::Tls(writer)), far))
}

/// Carries bytes between a TLS stream and its plaintext socketpair end until either closes.
pub async fn pump<S: AsyncRead + AsyncWrite + Unpin>(mut tls: S, mut plain: UnixStream, what: &'static str) {
    if let Err(e) = tokio::io::copy_bidirectional(&mut tls, &mut plain).await {
        tracing::debug!(error = %e, "TLS {what} connection ended");
    }
}

impl SocketReader {
    /// Resolves once the peer has sent something (or closed), without a buffer to read into.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            SocketReader::Plain(r) => r.readable().await,
            SocketReader::Tls(r) => r.readable().await,
        }
    }

    /// Whether the runtime last saw the socket readable (no syscall, no waker registered).
    pub fn seems_readable(&self) -> bool {
        let ready = || Ok(());
        match self {
            SocketReader::Plain(r) => r.as_ref().try_io(tokio::io::Interest::READABLE, ready).is_ok(),
            SocketReader::Tls(r) => r.as_ref().try_io(tokio::io::Interest::READABLE, ready).is_ok(),
        }
    }

    /// Reads what is there now, without waiting (`WouldBlock` when nothing is).
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SocketReader::Plain(r) => r.try_read(buf),
            SocketReader::Tls(r) => r.try_read(buf),
        }
    }
}

impl SocketWriter {
    /// Writes what the socket takes now, without waiting: `WouldBlock` when it takes nothing
    /// (the caller then waits for writability in its `select!`).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SocketWriter::Plain(w) => w.try_write(buf),
            SocketWriter::Tls(w) => w.try_write(buf),
        }
    }
}

impl AsyncRead for SocketReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketReader::Plain(r) => Pin::new(r).poll_read(cx, buf),
            SocketReader::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SocketWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SocketWriter::Plain(w) => Pin::new(w).poll_write(cx, buf),
            SocketWriter::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketWriter::Plain(w) => Pin::new(w).poll_flush(cx),
            SocketWriter::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketWriter::Plain(w) => Pin::new(w).poll_shutdown(cx),
            SocketWriter::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
