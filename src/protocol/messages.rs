//! Every message the proxy writes itself, to clients and to servers, and readers for the fields it inspects.

use super::{be, fe, TxStatus};
use bytes::{BufMut, Bytes, BytesMut};

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
    if s.contains('\0') {
        buf.put_slice(s.replace('\0', "").as_bytes());
    } else {
        buf.put_slice(s.as_bytes());
    }
    buf.put_u8(0);
}

/// A name (statement, portal) copied as the client sent it, NUL-terminated.
fn put_name(buf: &mut BytesMut, name: &[u8]) {
    buf.put_slice(name);
    buf.put_u8(0);
}

/// A message with no body (the acknowledgements), as a constant.
const fn empty(tag: u8) -> [u8; 5] {
    [tag, 0, 0, 0, 4]
}

/// A Sync the proxy sends on its own (to end an extended batch before moving a unit).
pub const SYNC: &[u8] = &empty(super::fe::SYNC);
/// The answer to an empty query string.
pub const EMPTY_QUERY_RESPONSE: &[u8] = &empty(be::EMPTY_QUERY);
pub const PARSE_COMPLETE: &[u8] = &empty(be::PARSE_COMPLETE);
pub const BIND_COMPLETE: &[u8] = &empty(be::BIND_COMPLETE);
pub const CLOSE_COMPLETE: &[u8] = &empty(be::CLOSE_COMPLETE);
pub const NO_DATA: &[u8] = &empty(be::NO_DATA);
/// ParameterDescription with no parameters.
pub const NO_PARAMETERS: &[u8] = &[be::PARAMETER_DESCRIPTION, 0, 0, 0, 6, 0, 0];

/// The answer to an SSLRequest or GSSENCRequest the proxy declines: go on in plain text.
pub const ENCRYPTION_REFUSED: &[u8] = b"N";
/// The answer to SSLRequest when TLS is configured: the TLS handshake follows.
pub const ENCRYPTION_ACCEPTED: &[u8] = b"S";

/// Field types in an ErrorResponse or NoticeResponse body.
pub mod field {
    pub const SEVERITY: u8 = b'S';
    /// The severity, never translated.
    pub const SEVERITY_RAW: u8 = b'V';
    pub const CODE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const FILE: u8 = b'F';
    pub const ROUTINE: u8 = b'R';
}

/// The severity of an ErrorResponse the proxy sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

impl Severity {
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// ErrorResponse ('E') or NoticeResponse ('N') with severity, SQLSTATE, message and extra fields.
fn put_error_fields(buf: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str, extra: &[(u8, &str)]) {
    let at = begin(buf, tag);
    let fields =
        [(field::SEVERITY, severity), (field::SEVERITY_RAW, severity), (field::CODE, code), (field::MESSAGE, message)];
    for (kind, value) in fields.iter().chain(extra) {
        buf.put_u8(*kind);
        put_cstr(buf, value);
    }
    buf.put_u8(0);
    finish(buf, at);
}

/// ErrorResponse or NoticeResponse (`tag`) with severity, SQLSTATE and message.
pub fn put_error(buf: &mut BytesMut, tag: u8, severity: &str, code: &str, message: &str) {
    put_error_fields(buf, tag, severity, code, message, &[]);
}

/// ErrorResponse with extra fields (e.g. 'R' routine, which some drivers match on).
pub fn error_response_with(severity: &str, code: &str, message: &str, extra: &[(u8, &str)]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(96 + message.len());
    put_error_fields(&mut buf, be::ERROR_RESPONSE, severity, code, message, extra);
    buf
}

pub fn error_response(severity: &str, code: &str, message: &str) -> BytesMut {
    let mut buf = BytesMut::with_capacity(64 + message.len());
    put_error(&mut buf, be::ERROR_RESPONSE, severity, code, message);
    buf
}

pub const fn ready_for_query(status: TxStatus) -> [u8; 6] {
    [be::READY_FOR_QUERY, 0, 0, 0, 5, status.byte()]
}

pub fn put_command_complete(out: &mut BytesMut, tag: &str) {
    let at = begin(out, be::COMMAND_COMPLETE);
    put_cstr(out, tag);
    finish(out, at);
}

/// CommandComplete(tag) then ReadyForQuery: a whole answer to a query the proxy runs itself.
pub fn command_complete_and_ready(tag: &str, status: TxStatus) -> Bytes {
    let mut out = BytesMut::new();
    put_command_complete(&mut out, tag);
    out.extend_from_slice(&ready_for_query(status));
    out.freeze()
}

/// Authentication request codes (the int32 after an 'R' tag).
pub mod auth {
    pub const OK: i32 = 0;
    pub const MD5_PASSWORD: i32 = 5;
    pub const SASL: i32 = 10;
    pub const SASL_CONTINUE: i32 = 11;
    pub const SASL_FINAL: i32 = 12;
}

/// An Authentication message: `code` (see [`auth`]) and its payload.
pub fn put_auth(buf: &mut BytesMut, code: i32, payload: &[u8]) {
    let at = begin(buf, be::AUTHENTICATION);
    buf.put_i32(code);
    buf.put_slice(payload);
    finish(buf, at);
}

pub fn put_parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let at = begin(buf, be::PARAMETER_STATUS);
    put_cstr(buf, name);
    put_cstr(buf, value);
    finish(buf, at);
}

pub fn put_backend_key_data(buf: &mut BytesMut, pid: u32, secret: u32) {
    let at = begin(buf, be::BACKEND_KEY_DATA);
    buf.put_u32(pid);
    buf.put_u32(secret);
    finish(buf, at);
}

/// NegotiateProtocolVersion: the newest minor version we speak and the options we ignored.
pub fn put_negotiate_protocol_version(buf: &mut BytesMut, minor: i32, unrecognized: &[String]) {
    let at = begin(buf, be::NEGOTIATE_PROTOCOL_VERSION);
    buf.put_i32(minor);
    buf.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        put_cstr(buf, o);
    }
    finish(buf, at);
}

/// The end of a login: AuthenticationOk, the server's parameters, our cancel key and ReadyForQuery.
pub fn put_login_ok(out: &mut BytesMut, params: &[(String, String)], pid: u32, secret: u32) {
    put_auth(out, auth::OK, &[]);
    for (name, value) in params {
        put_parameter_status(out, name, value);
    }
    put_backend_key_data(out, pid, secret);
    out.extend_from_slice(&ready_for_query(TxStatus::Idle));
}

/// Parse (to a server) of `statement`; `tail` is what follows the name in a client's Parse
/// (query\0, parameter count and types).
pub fn put_parse(out: &mut BytesMut, statement: &[u8], tail: &[u8]) {
    let at = begin(out, fe::PARSE);
    put_name(out, statement);
    out.put_slice(tail);
    finish(out, at);
}

/// Bind (to a server) of `portal` to `statement`; `rest` is what follows the names in a client's
/// Bind (parameters and result formats).
pub fn put_bind(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    let at = begin(out, fe::BIND);
    put_name(out, portal);
    put_name(out, statement);
    out.put_slice(rest);
    finish(out, at);
}

/// Close (to a server) of a statement or portal (`target`, see `protocol::target`).
pub fn put_close(out: &mut BytesMut, target: u8, name: &[u8]) {
    put_targeted(out, fe::CLOSE, target, name);
}

/// Describe (to a server) of a statement or portal (`target`, see `protocol::target`).
pub fn put_describe(out: &mut BytesMut, target: u8, name: &[u8]) {
    put_targeted(out, fe::DESCRIBE, target, name);
}

fn put_targeted(out: &mut BytesMut, tag: u8, target: u8, name: &[u8]) {
    let at = begin(out, tag);
    out.put_u8(target);
    put_name(out, name);
    finish(out, at);
}

/// A RowDescription column's format code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text = 0,
    Binary = 1,
}

/// The type oid of `text`, the type of every column the proxy answers with.
const TEXT_OID: i32 = 25;

/// A result set of `text` columns the proxy answers itself (SHOW pgcausal.*, the admin console).
/// The extended protocol splits it: a Describe gets `put_description`, an Execute `put_rows`
/// and its CommandComplete. For proxy answers only: it allocates, the forwarding path never
/// builds one.
#[derive(Debug, Clone)]
pub struct ResultSet {
    columns: Vec<String>,
    /// The DataRows so far, encoded.
    rows: BytesMut,
}

impl ResultSet {
    pub fn new(columns: &[&str]) -> ResultSet {
        ResultSet { columns: columns.iter().map(|c| c.to_string()).collect(), rows: BytesMut::new() }
    }

    /// Adds a row: one value a column, `None` for NULL.
    pub fn row(&mut self, values: &[Option<&str>]) -> &mut ResultSet {
        assert_eq!(values.len(), self.columns.len(), "a row has one value a column");
        let at = begin(&mut self.rows, be::DATA_ROW);
        self.rows.put_i16(values.len() as i16);
        for value in values {
            match value {
                Some(v) => {
                    self.rows.put_i32(v.len() as i32);
                    self.rows.put_slice(v.as_bytes());
                }
                None => self.rows.put_i32(-1),
            }
        }
        finish(&mut self.rows, at);
        self
    }

    /// The RowDescription alone (a Describe's answer). A `text` value has the same bytes in both
    /// formats, so a Bind that asked for binary results only changes the format code here.
    pub fn put_description(&self, out: &mut BytesMut, format: Format) {
        let at = begin(out, be::ROW_DESCRIPTION);
        out.put_i16(self.columns.len() as i16);
        for column in &self.columns {
            put_cstr(out, column);
            out.put_i32(0); // table oid
            out.put_i16(0); // column number
            out.put_i32(TEXT_OID);
            out.put_i16(-1); // type length: variable
            out.put_i32(-1); // type modifier: none
            out.put_i16(format as i16);
        }
        finish(out, at);
    }

    /// The DataRows alone (an Execute's answer: its Describe gave the RowDescription).
    pub fn put_rows(&self, out: &mut BytesMut) {
        out.extend_from_slice(&self.rows);
    }

    /// The whole answer to a simple Query: RowDescription, DataRows, CommandComplete(tag).
    pub fn write(&self, out: &mut BytesMut, tag: &str) {
        self.put_description(out, Format::Text);
        self.put_rows(out);
        put_command_complete(out, tag);
    }
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

/// The SQLSTATE ('C' field) of an ErrorResponse body, if it has one (`error::sqlstate_of`
/// reads a missing one as XX000).
pub fn code_field(body: &[u8]) -> Option<[u8; 5]> {
    fields(body).find(|(k, v)| *k == field::CODE && v.len() == 5).map(|(_, v)| [v[0], v[1], v[2], v[3], v[4]])
}

/// The human message ('M' field) of an ErrorResponse body.
pub fn message_of(body: &[u8]) -> String {
    fields(body)
        .find(|(k, _)| *k == field::MESSAGE)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
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
        assert_eq!(&code_field(&m[5..]).unwrap(), b"08P01");
        assert_eq!(message_of(&m[5..]), "bad thing");
    }

    #[test]
    fn a_result_set_has_its_columns_rows_and_nulls() {
        let mut rs = ResultSet::new(&["name", "value"]);
        rs.row(&[Some("a"), None]).row(&[Some("bc"), Some("")]);
        let mut out = BytesMut::new();
        rs.write(&mut out, "SELECT 2");
        let column = |name: &[u8]| [name, b"\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0"].concat();
        let expected = [
            b"T\0\0\0\x35\0\x02".as_slice(),
            &column(b"name\0"),
            &column(b"value\0"),
            b"D\0\0\0\x0f\0\x02\0\0\0\x01a\xff\xff\xff\xff",
            b"D\0\0\0\x10\0\x02\0\0\0\x02bc\0\0\0\0",
            b"C\0\0\0\x0dSELECT 2\0",
        ]
        .concat();
        assert_eq!(&out[..], &expected[..]);
        let mut described = BytesMut::new();
        rs.put_description(&mut described, Format::Binary);
        assert_eq!(&described[described.len() - 2..], &[0, 1], "binary format code");
        assert_eq!(described.len(), 1 + 0x35);
        let mut rows = BytesMut::new();
        rs.put_rows(&mut rows);
        assert_eq!(&rows[..], &expected[1 + 0x35..expected.len() - 14]);
    }

    #[test]
    fn frontend_messages_carry_their_names() {
        let mut out = BytesMut::new();
        put_close(&mut out, crate::protocol::target::STATEMENT, b"s1");
        put_describe(&mut out, crate::protocol::target::PORTAL, b"");
        put_parse(&mut out, b"p", b"SELECT 1\0\0\0");
        assert_eq!(&out[..], b"C\0\0\0\x08Ss1\0D\0\0\0\x06P\0P\0\0\0\x11p\0SELECT 1\0\0\0");
    }

    #[test]
    fn parameter_status_round_trip() {
        let mut b = BytesMut::new();
        put_parameter_status(&mut b, "TimeZone", "UTC");
        assert_eq!(parameter_status(&b), Some(("TimeZone".into(), "UTC".into())));
    }
}
