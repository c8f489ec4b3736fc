//! The client's connection as login and the session read and write it: plain TCP, or the
//! session's end of a TLS client's socketpair (`tls.rs` decrypts), with the same read half /
//! write half shape either way.
//!
//! The session polls reading and writing in one `select!`, so the stream comes in two halves
//! with disjoint borrows. Both keep tokio's owned halves (no lock, no copy) and the
//! synchronous `try_write` that lets the session write straight through without a wakeup.

pub use crate::socket::{SocketReader, SocketWriter};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client connection, split into the halves the session polls side by side.
pub struct ClientStream {
    pub reader: SocketReader,
    pub writer: SocketWriter,
}

impl ClientStream {
    /// A plaintext TCP client (Nagle off: every answer is a complete protocol message).
    pub fn plain(stream: TcpStream) -> ClientStream {
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        ClientStream { reader: SocketReader::Plain(reader), writer: SocketWriter::Plain(writer) }
    }

    /// True for a TLS client.
    pub fn encrypted(&self) -> bool {
        matches!(self.reader, SocketReader::Tls(_))
    }

    /// The first byte the client sent, without taking it (None: it closed first, or TLS runs).
    pub async fn peek_first_byte(&mut self) -> io::Result<Option<u8>> {
        let SocketReader::Plain(reader) = &mut self.reader else { return Ok(None) };
        let mut byte = [0u8; 1];
        Ok((reader.peek(&mut byte).await? == 1).then_some(byte[0]))
    }

    /// Turns a plain client into a TLS one: the handshake runs on its socket, and the stream
    /// becomes the session's end of the socketpair the pump decrypts into. On a failed handshake
    /// the connection is gone (rustls sent its alert): nothing more can reach the client.
    pub async fn start_tls(&mut self, acceptor: &super::tls::Acceptor, direct: bool) -> io::Result<()> {
        let ((reader, writer), pump_end) = crate::socket::tls_pair()?;
        let tls = ClientStream { reader, writer };
        let (SocketReader::Plain(reader), SocketWriter::Plain(writer)) = std::mem::replace(self, tls).into_halves()
        else {
            return Err(io::Error::other("TLS is running already"));
        };
        let tcp = reader.reunite(writer).map_err(|_| io::Error::other("halves of two sockets"))?;
        acceptor.accept(tcp, pump_end, direct).await
    }

    fn into_halves(self) -> (SocketReader, SocketWriter) {
        (self.reader, self.writer)
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
