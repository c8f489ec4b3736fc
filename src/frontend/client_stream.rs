//! The client's connection as login and the session read and write it: plain TCP, or the
//! session's end of a TLS client's socketpair (`tls.rs` decrypts), with the same read half /
//! write half shape either way.
//!
//! The session polls reading and writing in one `select!`, so the stream comes in two halves
//! with disjoint borrows. Both keep tokio's owned halves (no lock, no copy) and the
//! synchronous `try_write` that lets the session write straight through without a wakeup.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{unix, TcpStream, UnixStream};

/// A client connection, split into the halves the session polls side by side.
pub struct ClientStream {
    pub reader: ClientReader,
    pub writer: ClientWriter,
}

/// The reading half of a client connection.
pub enum ClientReader {
    Plain(OwnedReadHalf),
    /// A TLS client's plaintext, from its pump.
    Tls(unix::OwnedReadHalf),
}

/// The writing half of a client connection.
pub enum ClientWriter {
    Plain(OwnedWriteHalf),
    /// To a TLS client's pump, which encrypts.
    Tls(unix::OwnedWriteHalf),
}

impl ClientStream {
    /// A plaintext TCP client (Nagle off: every answer is a complete protocol message).
    pub fn plain(stream: TcpStream) -> ClientStream {
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        ClientStream { reader: ClientReader::Plain(reader), writer: ClientWriter::Plain(writer) }
    }

    /// True for a TLS client.
    pub fn encrypted(&self) -> bool {
        matches!(self.reader, ClientReader::Tls(_))
    }

    /// The first byte the client sent, without taking it (None: it closed first, or TLS runs).
    pub async fn peek_first_byte(&mut self) -> io::Result<Option<u8>> {
        let ClientReader::Plain(reader) = &mut self.reader else { return Ok(None) };
        let mut byte = [0u8; 1];
        Ok((reader.peek(&mut byte).await? == 1).then_some(byte[0]))
    }

    /// Turns a plain client into a TLS one: the handshake runs on its socket, and the stream
    /// becomes the session's end of the socketpair the pump decrypts into. On a failed handshake
    /// the connection is gone (rustls sent its alert): nothing more can reach the client.
    pub async fn start_tls(&mut self, acceptor: &super::tls::Acceptor, direct: bool) -> io::Result<()> {
        let (session_end, pump_end) = UnixStream::pair()?;
        let (reader, writer) = session_end.into_split();
        let tls = ClientStream { reader: ClientReader::Tls(reader), writer: ClientWriter::Tls(writer) };
        let (ClientReader::Plain(reader), ClientWriter::Plain(writer)) = std::mem::replace(self, tls).into_halves()
        else {
            return Err(io::Error::other("TLS is running already"));
        };
        let tcp = reader.reunite(writer).map_err(|_| io::Error::other("halves of two sockets"))?;
        acceptor.accept(tcp, pump_end, direct).await
    }

    fn into_halves(self) -> (ClientReader, ClientWriter) {
        (self.reader, self.writer)
    }
}

impl ClientWriter {
    /// Writes what the socket takes now, without waiting: `WouldBlock` when it takes nothing
    /// (the caller then waits for writability in its `select!`).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientWriter::Plain(w) => w.try_write(buf),
            ClientWriter::Tls(w) => w.try_write(buf),
        }
    }
}

impl ClientReader {
    /// Resolves once the client has sent something (or closed), without a buffer to read into:
    /// how an idle session that gave its buffer back waits.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            ClientReader::Plain(r) => r.readable().await,
            ClientReader::Tls(r) => r.readable().await,
        }
    }
}

impl AsyncRead for ClientReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientReader::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ClientReader::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientWriter {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientWriter::Plain(w) => Pin::new(w).poll_write(cx, buf),
            ClientWriter::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWriter::Plain(w) => Pin::new(w).poll_flush(cx),
            ClientWriter::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientWriter::Plain(w) => Pin::new(w).poll_shutdown(cx),
            ClientWriter::Tls(w) => Pin::new(w).poll_shutdown(cx),
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
