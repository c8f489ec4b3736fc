//! PostgreSQL v3 wire protocol: framing and the few messages the proxy inspects or builds.

pub mod framing;
pub mod messages;
pub mod startup;

/// A session's transaction status, as ReadyForQuery reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxStatus {
    /// 'I': not in a transaction.
    #[default]
    Idle,
    /// 'T': in a transaction block.
    InBlock,
    /// 'E': in a failed transaction block (statements are rejected until it ends).
    Failed,
}

impl TxStatus {
    /// The status in a ReadyForQuery's byte (an unknown byte reads as idle, as libpq does).
    pub const fn from_byte(byte: u8) -> TxStatus {
        match byte {
            b'T' => TxStatus::InBlock,
            b'E' => TxStatus::Failed,
            _ => TxStatus::Idle,
        }
    }

    pub const fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InBlock => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Frontend (client → server) message tags the proxy cares about.
pub mod fe {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';

    /// Whether PostgreSQL takes a message with this tag once logged in (PostgresMain's
    /// list): any other tag makes it end the connection with FATAL 08P01.
    #[inline]
    pub const fn known_after_login(tag: u8) -> bool {
        matches!(
            tag,
            QUERY
                | PARSE
                | BIND
                | DESCRIBE
                | EXECUTE
                | CLOSE
                | SYNC
                | FLUSH
                | FUNCTION_CALL
                | COPY_DATA
                | COPY_DONE
                | COPY_FAIL
                | TERMINATE
        )
    }
}

/// What a Describe or Close names: the byte after its tag.
pub mod target {
    pub const STATEMENT: u8 = b'S';
    pub const PORTAL: u8 = b'P';
}

/// Backend (server → client) message tags the proxy cares about.
pub mod be {
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const DATA_ROW: u8 = b'D';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NO_DATA: u8 = b'n';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const COPY_DATA: u8 = b'd';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}
