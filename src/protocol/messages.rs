//! Builders for the backend messages the proxy itself sends, and readers for the fields it inspects.

use super::{be, TxStatus};
use bytes::{BufMut, BytesMut};

/// Starts a message: tag + length placeholder; `finish` fills the length in.
pub fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    at
}

pub fn finish(buf: &mut BytesMut, at: usize) {
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; PostgreSQL strings cannot contain one.
    buf.put_slice(s.replace('\0', "").as_bytes());
    buf.put_u8(0);
}

/// ErrorResponse ('E') or NoticeResponse ('N') with severity, SQLSTATE and message.
pub fn put_error(buf: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    let at = begin(buf, tag);
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)] {
        buf.put_u8(field);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// ErrorResponse with extra fields (e.g. 'R' routine, which some drivers match on).
pub fn error_response_with(severity: &str, code: &str, message: &str, extra: &[(u8, &str)]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(96 + message.len());
    let at = begin(&mut buf, b'E');
    for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)].iter().chain(extra) {
        buf.put_u8(*field);
        put_cstr(&mut buf, value);
    }
    buf.put_u8(0);
    finish(&mut buf, at);
    buf
}

pub fn error_response(severity: &str, code: &str, message: &str) -> BytesMut {
    let mut buf = BytesMut::with_capacity(64 + message.len());
    put_error(&mut buf, b'E', severity, code, message);
    buf
}

pub const fn ready_for_query(status: TxStatus) -> [u8; 6] {
    [be::READY_FOR_QUERY, 0, 0, 0, 5, status.byte()]
}

pub fn put_auth(buf: &mut BytesMut, code: i32, payload: &[u8]) {
    let at = begin(buf, b'R');
    buf.put_i32(code);
    buf.put_slice(payload);
    finish(buf, at);
}

pub fn put_parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, b'S');
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish(buf, at);
}

pub fn put_backend_key_data(buf: &mut BytesMut, pid: u32, secret: u32) {
    let at = begin(buf, b'K');
    buf.put_u32(pid);
    buf.put_u32(secret);
    finish(buf, at);
}

/// NegotiateProtocolVersion: the newest minor version we speak and the options we ignored.
pub fn put_negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unrecognized: &[String]) {
    let at = begin(buf, b'v');
    buf.put_i32(minor);
    buf.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        put_cstr(buf, o);
    }
    finish(buf, at);
}

/// Fields of an ErrorResponse/NoticeResponse body: (field type, value) pairs.
pub fn fields(body: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = body;
    std::iter::from_fn(move || {
        let (&kind, tail) = rest.split_first()?;
        if kind == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        let value = &tail[..end];
        rest = &tail[end + 1..];
        Some((kind, value))
    })
}

/// The SQLSTATE ('C' field) of an ErrorResponse body, or XX000 if missing.
pub fn sqlstate_of(body: &[u8]) -> [u8; 5] {
    fields(body)
        .find(|(k, v)| *k == b'C' && v.len() == 5)
        .map(|(_, v)| [v[0], v[1], v[2], v[3], v[4]])
        .unwrap_or(*b"XX000")
}

/// The human message ('M' field) of an ErrorResponse body.
pub fn message_of(body: &[u8]) -> String {
    fields(body).find(|(k, _)| *k == b'M').map(|(_, v)| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
}

/// Reads a NUL-terminated string at the start of `buf`: (string, rest).
pub fn read_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    // Statement and portal names are mostly empty or short: a plain loop finds their end in a
    // few instructions; query texts can be long, and memchr goes a vector at a time.
    const SHORT: usize = 16;
    let head = &buf[..buf.len().min(SHORT)];
    let end = match head.iter().position(|&b| b == 0) {
        Some(end) => end,
        None => head.len() + memchr::memchr(0, &buf[head.len()..])?,
    };
    Some((&buf[..end], &buf[end + 1..]))
}

/// Name and value of a ParameterStatus message (whole message, header included).
pub fn parameter_status(msg: &[u8]) -> Option<(String, String)> {
    let (name, rest) = read_cstr(msg.get(5..)?)?;
    let (value, _) = read_cstr(rest)?;
    Some((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_cstr_finds_the_end_of_short_and_long_strings() {
        assert_eq!(read_cstr(b"\0rest"), Some((&b""[..], &b"rest"[..])));
        for len in [1, 15, 16, 17, 40, 5000] {
            let mut buf = vec![b'x'; len];
            buf.extend_from_slice(b"\0tail\0");
            let (s, rest) = read_cstr(&buf).unwrap();
            assert_eq!((s.len(), rest), (len, &b"tail\0"[..]), "length {len}");
            assert_eq!(read_cstr(&buf[..len]), None, "no terminator, length {len}");
        }
        assert_eq!(read_cstr(b""), None);
    }

    #[test]
    fn error_round_trip() {
        let m = error_response("FATAL", "08P01", "bad\0 thing");
        assert_eq!(m[0], b'E');
        assert_eq!(i32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize, m.len() - 1);
        assert_eq!(&sqlstate_of(&m[5..]), b"08P01");
        assert_eq!(message_of(&m[5..]), "bad thing");
    }

    #[test]
    fn parameter_status_round_trip() {
        let mut b = BytesMut::new();
        put_parameter_status(&mut b, "TimeZone", "UTC");
        assert_eq!(parameter_status(&b), Some(("TimeZone".into(), "UTC".into())));
    }
}
