//! The client's connection as login and the session read and write it: plain TCP today, one
//! more variant for TLS, with the same read half / write half shape either way.
//!
//! The session polls reading and writing in one `select!`, so the stream comes in two halves
//! with disjoint borrows. Plain TCP keeps tokio's owned halves (no lock, no copy) and the
//! synchronous `try_write` that lets the session write straight through without a wakeup.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A client connection, split into the halves the session polls side by side.
pub struct ClientStream {
    pub reader: ClientReader,
    pub writer: ClientWriter,
}

/// The reading half of a client connection.
pub enum ClientReader {
    Plain(OwnedReadHalf),
}

/// The writing half of a client connection.
pub enum ClientWriter {
    Plain(OwnedWriteHalf),
}

impl ClientStream {
    /// A plaintext TCP client (Nagle off: every answer is a complete protocol message).
    pub fn plain(stream: TcpStream) -> ClientStream {
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        ClientStream { reader: ClientReader::Plain(reader), writer: ClientWriter::Plain(writer) }
    }
}

impl ClientWriter {
    /// Writes what the socket takes now, without waiting: `WouldBlock` when it takes nothing
    /// (the caller then waits for writability in its `select!`).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientWriter::Plain(w) => w.try_write(buf),
        }
    }
}

impl AsyncRead for ClientReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientReader::Plain(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWriter::Plain(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWriter::Plain(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWriter::Plain(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// Both halves as one stream, for login's request/response exchanges.
impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().writer).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().writer).poll_shutdown(cx)
    }
}
