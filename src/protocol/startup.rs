//! The untagged first message of a connection: startup, SSL/GSS encryption requests, cancel.

use super::messages::read_cstr;

/// PostgreSQL caps startup packets at 10000 bytes; so do we, by default.
pub const MAX_STARTUP_LEN: usize = 10_000;
const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: u32,
        secret: u32,
    },
    /// Protocol 3.x with its parameters (user, database, options, ...).
    Startup {
        minor: i32,
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet: {0}")]
    BadLength(i64),
    #[error("startup packet length {len} exceeds the limit of {max} bytes (proxy.max_startup_packet_size)")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    UnsupportedVersion(i32, i32),
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Length of the packet announced by its first 4 bytes, validated: at least 8, at most `max`.
pub fn packet_len(head: [u8; 4], max: usize) -> Result<usize, StartupError> {
    let len = i32::from_be_bytes(head);
    if len < 8 || len as usize > MAX_PLAUSIBLE_LEN {
        // Not a startup packet at all (an HTTP request reads as 1.1 GB): PostgreSQL's wording.
        return Err(StartupError::BadLength(len as i64));
    }
    if len as usize > max {
        return Err(StartupError::TooLarge { len: len as usize, max });
    }
    Ok(len as usize)
}

/// Beyond this no client means a startup packet (the configurable limit stays far below it).
const MAX_PLAUSIBLE_LEN: usize = 1024 * 1024;

/// Parses the packet body (everything after the length word).
pub fn parse(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let Some((code, rest)) = body.split_first_chunk::<4>() else {
        return Err(StartupError::Malformed("shorter than its protocol code"));
    };
    let code = i32::from_be_bytes(*code);
    match code {
        SSL_REQUEST => return Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => return Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if rest.len() < 8 {
                return Err(StartupError::Malformed("short cancel request"));
            }
            let pid = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let secret = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            return Ok(StartupPacket::Cancel { pid, secret });
        }
        _ => {}
    }
    let (major, minor) = (code >> 16, code & 0xffff);
    if major != 3 {
        return Err(StartupError::UnsupportedVersion(major, minor));
    }
    let mut params = Vec::new();
    let mut rest = rest;
    loop {
        let (name, tail) = read_cstr(rest).ok_or(StartupError::Malformed("missing terminator"))?;
        if name.is_empty() {
            break;
        }
        let (value, tail) = read_cstr(tail).ok_or(StartupError::Malformed("missing value"))?;
        let text = |b: &[u8]| {
            std::str::from_utf8(b).map(str::to_owned).map_err(|_| StartupError::Malformed("parameter is not UTF-8"))
        };
        params.push((text(name)?, text(value)?));
        rest = tail;
    }
    params.shrink_to_fit(); // kept for the session's life
    Ok(StartupPacket::Startup { minor, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: i32, params: &[(&str, &str)]) -> Vec<u8> {
        let mut b = code.to_be_bytes().to_vec();
        for (k, v) in params {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn parses_the_packet_kinds() {
        let p = parse(&body(196608, &[("user", "app"), ("database", "db")])).unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                minor: 0,
                params: vec![("user".into(), "app".into()), ("database".into(), "db".into())]
            }
        );
        assert_eq!(parse(&SSL_REQUEST.to_be_bytes()).unwrap(), StartupPacket::SslRequest);
        assert_eq!(parse(&body(2 << 16, &[])).unwrap_err(), StartupError::UnsupportedVersion(2, 0));
        assert!(parse(&[0, 3, 0, 0, b'u', b's']).is_err());
        assert_eq!(packet_len(0x7fff_ffffu32.to_be_bytes(), 10_000), Err(StartupError::BadLength(0x7fff_ffff)));
        assert_eq!(packet_len(4u32.to_be_bytes(), 10_000), Err(StartupError::BadLength(4)));
        assert_eq!(
            packet_len(20_000u32.to_be_bytes(), 10_000),
            Err(StartupError::TooLarge { len: 20_000, max: 10_000 })
        );
        assert_eq!(packet_len(10_000u32.to_be_bytes(), 10_000), Ok(10_000));
        assert!(parse(&[0, 3]).is_err(), "a body shorter than its code is an error, not a panic");
    }
}
