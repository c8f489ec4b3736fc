//! Message framing: 1-byte tag + 4-byte big-endian length; a streaming scanner for server output.

use super::be;

pub const HEADER_LEN: usize = 5;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message length {len} exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}

/// Reads the header at the start of `buf`: Some((tag, total length including the tag byte)).
#[inline]
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len as i64));
    }
    let total = len as usize + 1;
    if total > max {
        return Err(FrameError::TooLarge { len: total, max });
    }
    Ok(Some((buf[0], total)))
}

/// What the scanner saw in server output that the session must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEvent {
    /// ReadyForQuery with its transaction status byte ('I', 'T' or 'E').
    Ready(u8),
    /// ErrorResponse; the SQLSTATE is read from the message.
    Error([u8; 5]),
    /// ParameterStatus (the session may want to remember it).
    ParameterStatus,
    /// CopyInResponse: the client will now stream CopyData.
    CopyIn,
}

/// Walks server output without copying it: only headers are read, except for the few
/// message types the proxy inspects, which must be complete before they are passed on.
#[derive(Debug, Default)]
pub struct BackendScanner {
    /// Bytes of a large uninspected message still to pass through.
    skip: usize,
}

impl BackendScanner {
    /// True while a message has been passed on only in part.
    pub fn mid_message(&self) -> bool {
        self.skip > 0
    }

    /// Scans `buf`, calling `on_event` for inspected messages; returns how many bytes may be
    /// forwarded now (a prefix of `buf` that never ends inside an inspected message).
    #[inline]
    pub fn scan(&mut self, buf: &[u8], mut on_event: impl FnMut(ServerEvent, &[u8])) -> usize {
        let mut pos = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - pos);
                pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    return pos;
                }
            }
            let rest = &buf[pos..];
            if rest.len() < HEADER_LEN {
                return pos;
            }
            let tag = rest[0];
            let total =
                i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]).max(4) as usize + 1;
            let inspected = matches!(
                tag,
                be::READY_FOR_QUERY
                    | be::ERROR_RESPONSE
                    | be::PARAMETER_STATUS
                    | be::COPY_IN_RESPONSE
            );
            if !inspected {
                let n = total.min(rest.len());
                pos += n;
                self.skip = total - n;
                continue;
            }
            if rest.len() < total {
                return pos;
            }
            let msg = &rest[..total];
            let event = match tag {
                be::READY_FOR_QUERY => ServerEvent::Ready(*msg.get(5).unwrap_or(&b'I')),
                be::ERROR_RESPONSE => ServerEvent::Error(super::messages::sqlstate_of(&msg[5..])),
                be::PARAMETER_STATUS => ServerEvent::ParameterStatus,
                _ => ServerEvent::CopyIn,
            };
            on_event(event, msg);
            pos += total;
        }
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
        assert_eq!(
            peek_header(b"Q\0\0\0\x02", 100),
            Err(FrameError::BadLength(2))
        );
        assert!(matches!(
            peek_header(b"Q\x7f\xff\xff\xff", 1 << 20),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(peek_header(b"Q\0\0\0\x08abcd", 100), Ok(Some((b'Q', 9))));
    }

    #[test]
    fn scanner_streams_rows_and_holds_inspected_messages_until_complete() {
        let mut out = data_row(100);
        out.extend_from_slice(&messages::error_response("ERROR", "42P01", "nope"));
        out.extend_from_slice(&messages::ready_for_query(b'E'));
        // Feed in 7-byte slices and check every event arrives once, and byte accounting is exact.
        let mut scanner = BackendScanner::default();
        let mut events = vec![];
        let mut buf: Vec<u8> = vec![];
        let mut forwarded = 0;
        for chunk in out.chunks(7) {
            buf.extend_from_slice(chunk);
            let n = scanner.scan(&buf, |e, _| events.push(e));
            forwarded += n;
            buf.drain(..n);
        }
        assert_eq!(forwarded, out.len());
        assert_eq!(
            events,
            vec![ServerEvent::Error(*b"42P01"), ServerEvent::Ready(b'E')]
        );
        assert!(!scanner.mid_message());
    }
}
