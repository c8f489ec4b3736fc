//! Message framing: 1-byte tag + 4-byte big-endian length; a streaming scanner for server output.

use super::be;

pub const HEADER_LEN: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    /// `len` is the length word as sent (it counts itself and the body, not the tag byte).
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// Reads the header at the start of `buf`: Some((tag, total length including the tag byte)).
/// `max` bounds the length word, as PostgreSQL counts a message's length.
#[inline]
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len as i64));
    }
    if len as usize > max {
        return Err(FrameError::TooLarge { len: len as usize, max });
    }
    Ok(Some((buf[0], len as usize + 1)))
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Drop it: the answer to a message the proxy injected.
    Swallow,
}

/// Rows and other bulk messages stream through after their header; every other message is
/// small and is handed over whole, so the session can read it. (None of the streaming ones
/// ends a request, so replies never fall due in the middle of one.)
#[inline]
pub fn streams(tag: u8) -> bool {
    matches!(
        tag,
        be::DATA_ROW | be::COPY_DATA | be::PARAMETER_DESCRIPTION | be::FUNCTION_CALL_RESPONSE | be::NOTICE_RESPONSE
    )
}

/// The session's view of server output, message by message.
pub trait ServerMessages {
    /// Decides about one message: whole, or only its 5-byte header for streaming ones.
    fn decide(&mut self, tag: u8, msg: &[u8]) -> Verdict;
    /// Whether this message streams through after its header (default: bulk message types).
    fn streams(&self, tag: u8) -> bool {
        streams(tag)
    }
    /// Whether the proxy owes the client replies of its own now (checked after each whole
    /// message); then `emit` appends them, after what was passed on so far.
    fn replies_due(&mut self) -> bool;
    fn emit(&mut self, out: &mut bytes::BytesMut);
}

/// Walks server output message by message without decoding rows: a callback decides, per
/// message, whether it goes to the client; bulk messages are copied through as they arrive.
#[derive(Debug, Default)]
pub struct BackendScanner {
    /// Bytes of a streaming message still to come.
    skip: usize,
    /// Whether those bytes are forwarded.
    skip_forward: bool,
}

impl BackendScanner {
    /// True while a message has been passed on only in part.
    pub fn mid_message(&self) -> bool {
        self.skip > 0 && self.skip_forward
    }

    /// Scans `buf`, appending what the client should get to `out`; returns how many bytes of
    /// `buf` were used (a trailing partial message waits for more input). Consecutive forwarded
    /// messages are copied as one run.
    #[inline]
    pub fn scan(&mut self, buf: &[u8], out: &mut bytes::BytesMut, sink: &mut impl ServerMessages) -> usize {
        let mut pos = 0;
        // buf[run..pos] is forwarded and not yet copied to `out`.
        let mut run = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - pos);
                if !self.skip_forward {
                    out.extend_from_slice(&buf[run..pos]);
                    run = pos + n;
                }
                pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
            }
            let rest = &buf[pos..];
            if rest.len() < HEADER_LEN {
                break;
            }
            let tag = rest[0];
            let total = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]).max(4) as usize + 1;
            if sink.streams(tag) {
                self.skip_forward = sink.decide(tag, &rest[..HEADER_LEN]) == Verdict::Forward;
                self.skip = total;
                continue;
            }
            if rest.len() < total {
                break;
            }
            if sink.decide(tag, &rest[..total]) == Verdict::Swallow {
                out.extend_from_slice(&buf[run..pos]);
                run = pos + total;
            }
            pos += total;
            if sink.replies_due() {
                out.extend_from_slice(&buf[run..pos]);
                run = pos;
                sink.emit(out);
            }
        }
        out.extend_from_slice(&buf[run..pos]);
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages;

    fn data_row(len: usize) -> Vec<u8> {
        let mut m = vec![b'D'];
        m.extend_from_slice(&((len + 4) as i32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn peek_rejects_bad_and_huge_lengths() {
        assert_eq!(peek_header(b"Q\0\0", 100), Ok(None));
        assert_eq!(peek_header(b"Q\0\0\0\x02", 100), Err(FrameError::BadLength(2)));
        let huge = peek_header(b"Q\x7f\xff\xff\xf0", 1 << 20);
        assert_eq!(huge, Err(FrameError::TooLarge { len: 0x7fff_fff0, max: 1 << 20 }), "the length as sent");
        assert_eq!(peek_header(b"Q\0\0\0\x64", 100), Ok(Some((b'Q', 101))), "a length word at the limit");
        assert!(peek_header(b"Q\0\0\0\x65", 100).is_err());
        assert_eq!(peek_header(b"Q\0\0\0\x08abcd", 100), Ok(Some((b'Q', 9))));
    }

    #[test]
    fn scanner_streams_rows_and_holds_small_messages_until_complete() {
        let mut input = data_row(100);
        input.extend_from_slice(&messages::error_response("ERROR", "42P01", "nope"));
        input.extend_from_slice(&[b'1', 0, 0, 0, 4]);
        input.extend_from_slice(&messages::ready_for_query(crate::protocol::TxStatus::Failed));
        // Feed in 7-byte slices: every message is seen once, whole unless it streams.
        struct Seen(Vec<(u8, usize)>);
        impl ServerMessages for Seen {
            fn decide(&mut self, tag: u8, msg: &[u8]) -> Verdict {
                self.0.push((tag, msg.len()));
                if tag == b'1' {
                    Verdict::Swallow
                } else {
                    Verdict::Forward
                }
            }
            fn replies_due(&mut self) -> bool {
                false
            }
            fn emit(&mut self, _: &mut bytes::BytesMut) {}
        }
        let mut scanner = BackendScanner::default();
        let (mut sink, mut out, mut buf) = (Seen(vec![]), bytes::BytesMut::new(), vec![]);
        for chunk in input.chunks(7) {
            buf.extend_from_slice(chunk);
            let n = scanner.scan(&buf, &mut out, &mut sink);
            buf.drain(..n);
        }
        let seen = sink.0;
        let error_len = input.len() - 105 - 5 - 6;
        assert_eq!(seen, vec![(b'D', 5), (b'E', error_len), (b'1', 5), (b'Z', 6)]);
        let mut expected = input.clone();
        expected.drain(105 + error_len..105 + error_len + 5);
        assert_eq!(&out[..], &expected[..]);
        assert!(!scanner.mid_message());
    }
}
