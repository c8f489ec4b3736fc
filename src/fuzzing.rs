//! Entry points for the cargo-fuzz targets (`fuzz/`): each runs one parser on arbitrary bytes the
//! way the proxy runs it on a client's or server's bytes. Built only with the `fuzzing` feature.

use crate::frontend::inflight::{Inflight, Request};
use crate::frontend::prepared::ClientStatements;
use crate::frontend::proxy_statements::ProxyStatements;
use crate::frontend::requests::{self, Outbound};
use crate::frontend::session::scan_server_output;
use crate::protocol::{fe, framing, startup, TxStatus};
use bytes::BytesMut;

/// Client bytes after login: framed as the session frames them (its limit on message length),
/// each complete message through what reads it: the `pgcausal.*` statements, the proxy's own
/// answers without a server, statement-name translation and request accounting.
pub fn client_messages(data: &[u8]) {
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    let mut inflight = Inflight::default();
    let mut server = crate::backend::statements::ServerStatements::default();
    let mut client = ClientStatements::default();
    let mut proxy = ProxyStatements::default();
    let ddl = crate::frontend::ddl::DdlLog::default();
    let mut rest = data;
    while let Ok(Some((tag, total))) = framing::peek_header(rest, 1 << 20) {
        let Some(msg) = rest.get(..total) else { return };
        rest = &rest[total..];
        if !fe::known_after_login(tag) {
            return; // the session ends there (FATAL 08P01)
        }
        let body = &msg[5..];
        let _ = match tag {
            fe::PARSE => proxy.parse_other(body),
            fe::BIND => proxy.bind(body),
            fe::DESCRIBE => proxy.describe(body),
            fe::EXECUTE => proxy.execute(body),
            fe::CLOSE => proxy.close(body),
            _ => crate::frontend::proxy_statements::Step::Pass,
        };
        let answered = if requests::answerable_without_server(tag, msg) {
            requests::answer_without_server(tag, msg, &mut client, &mut inflight, &mut to_client, TxStatus::Idle, 0)
        } else {
            let mut out = Outbound {
                to_server: &mut to_server,
                to_client: &mut to_client,
                inflight: &mut inflight,
                server: &mut server,
                client: &mut client,
                replaying: false,
                schema: 0,
                ddl: &ddl,
            };
            out.message(tag, msg)
        };
        if answered.is_err() {
            return; // a malformed message ends the session (FATAL 08P01)
        }
        if inflight.sync_points() > 64 {
            inflight.clear(); // a real server would have answered by now
        }
    }
}

/// A connection's first packet: the length word checked against the default limit, then the body.
pub fn startup_packet(data: &[u8]) {
    let Some((head, body)) = data.split_first_chunk::<4>() else { return };
    let Ok(len) = startup::packet_len(*head, startup::MAX_STARTUP_LEN) else { return };
    if let Some(body) = body.get(..len - 4) {
        let _ = startup::parse(body);
    }
}

/// SQL text as a client sends it in a Query or Parse: fingerprinted (the fast scan), then
/// classified by the parser path (sqlparser and the fallbacks) as on a cache miss.
pub fn classify_sql(data: &[u8]) {
    let fingerprint = crate::route::fingerprint_bytes(data);
    let sql = String::from_utf8_lossy(data);
    let classification = crate::route::classify(&sql, &FUNCTIONS);
    std::hint::black_box((fingerprint, classification));
}

static FUNCTIONS: std::sync::LazyLock<crate::route::FunctionCatalog> = std::sync::LazyLock::new(Default::default);

/// Server output through the session's scanner and its real sink, after requests taken from the
/// first bytes (so answers meet a queue of requests as they do in a session).
pub fn server_messages(data: &[u8]) {
    let Some((&count, data)) = data.split_first() else { return };
    let count = usize::from(count % 16).min(data.len());
    let (kinds, output) = data.split_at(count);
    let mut inflight = Inflight::default();
    let mut to_client = BytesMut::new();
    for &kind in kinds {
        let request = match kind % 8 {
            0 => Request::Parse { hash: Some(u64::from(kind)), swallow: kind & 0x80 != 0 },
            1 => Request::Bind,
            2 => Request::DescribeStatement,
            3 => Request::Execute,
            4 => Request::Sync,
            5 => Request::Query { swallow: kind & 0x80 != 0 },
            6 => Request::InjectedSync,
            _ => Request::CopyEnd,
        };
        inflight.push(request, &mut to_client);
    }
    // In slices, as a socket delivers it: the scanner keeps what it has not used.
    let mut scanner = framing::BackendScanner::default();
    let mut buffered = Vec::new();
    for chunk in output.chunks(97) {
        buffered.extend_from_slice(chunk);
        let scanned = scan_server_output(&mut scanner, &buffered, &mut inflight, TxStatus::Idle);
        buffered.drain(..scanned.used);
        std::hint::black_box((scanned.to_client, scanned.closed_between_units));
    }
}
