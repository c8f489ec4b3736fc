//! Which server answers belong to which request, in order. This lets the session swallow the
//! answers to messages it injected and put its own answers (ParseComplete for a statement the
//! server already holds, CloseComplete, ReadyForQuery) exactly where the server's would be.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

use crate::protocol::framing::Verdict;
use crate::protocol::{be, fe};

/// One request sent to the server (or answered by the proxy) whose answer is still to come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `hash` names the server-side statement, so a failed Parse can be forgotten.
    Parse {
        hash: Option<u64>,
        swallow: bool,
    },
    Bind,
    DescribeStatement,
    DescribePortal,
    Execute,
    Close {
        swallow: bool,
    },
    Sync,
    /// A simple query; `swallow` for the ones the proxy injects (settings, resets).
    Query {
        swallow: bool,
    },
    FunctionCall,
    /// An answer the proxy gives itself, emitted once everything before it has been answered.
    Reply(Bytes),
    /// A Sync the proxy added to end a unit early (to move it to another node); swallowed.
    InjectedSync,
    /// Where the client's CopyDone/CopyFail fell: no answer of its own, but Syncs sent before it
    /// during an extended-protocol COPY FROM are ignored by the server.
    CopyEnd,
}

impl Request {
    /// The request a client message that names no statement is, forwarded as it is (None:
    /// Flush, COPY data and unknown types have no answer of their own). Messages that name
    /// statements (Parse, Bind, Describe, a statement's Close) go through `requests::Outbound`.
    pub fn of_message(tag: u8) -> Option<Request> {
        match tag {
            fe::CLOSE => Some(Request::Close { swallow: false }),
            fe::EXECUTE => Some(Request::Execute),
            fe::SYNC => Some(Request::Sync),
            fe::QUERY => Some(Request::Query { swallow: false }),
            fe::FUNCTION_CALL => Some(Request::FunctionCall),
            fe::COPY_DONE | fe::COPY_FAIL => Some(Request::CopyEnd),
            _ => None,
        }
    }

    /// Requests that end with a ReadyForQuery.
    fn is_sync_point(&self) -> bool {
        matches!(self, Request::Sync | Request::InjectedSync | Request::Query { .. } | Request::FunctionCall)
    }

    fn is_extended(&self) -> bool {
        matches!(
            self,
            Request::Parse { .. }
                | Request::Bind
                | Request::DescribeStatement
                | Request::DescribePortal
                | Request::Execute
                | Request::Close { .. }
        )
    }
}

/// What one server message meant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// A Parse failed: the server does not hold this statement after all.
    pub failed_parse: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Inflight {
    queue: VecDeque<Request>,
    /// The server is in COPY FROM mode of an extended-protocol Execute: it ignores Syncs.
    copy_in: bool,
    /// The server asked for COPY data (CopyInResponse or CopyBothResponse, any protocol) and has
    /// not yet sent ReadyForQuery.
    awaits_copy_data: bool,
}

impl Inflight {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// An idle session gives back its queue's room (the next request brings it back).
    pub fn shrink(&mut self) {
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
    }

    /// True while the answers now arriving belong to a query the proxy injected.
    pub fn answering_injected_query(&self) -> bool {
        matches!(self.queue.front(), Some(Request::Query { swallow: true }))
    }

    /// How many ReadyForQuery messages the client still expects from what was sent.
    /// The server owes a ReadyForQuery it will send without more client input, so the session
    /// need not watch the client for input until then.
    pub fn answer_owed_without_input(&self) -> bool {
        // From the back: the last request is usually the Sync or Query that ends the batch.
        !self.awaits_copy_data && self.queue.iter().rev().any(Request::is_sync_point)
    }

    pub fn sync_points(&self) -> usize {
        self.queue.iter().filter(|r| r.is_sync_point()).count()
    }

    /// Queues a request; a reply with nothing before it goes out at once.
    pub fn push(&mut self, request: Request, out: &mut BytesMut) {
        match request {
            Request::Reply(bytes) if self.queue.is_empty() => out.extend_from_slice(&bytes),
            // The server ignores a Sync sent while it copies in: no answer will come.
            Request::Sync if self.copy_in => {}
            Request::CopyEnd => {
                self.copy_in = false;
                if !self.queue.is_empty() {
                    self.queue.push_back(Request::CopyEnd);
                }
            }
            r => self.queue.push_back(r),
        }
    }

    /// The server entered COPY FROM for the Execute at the front: Syncs the client sent before
    /// its CopyDone/CopyFail will get no answer.
    fn copy_in_started(&mut self) {
        let end = self.queue.iter().position(|r| *r == Request::CopyEnd);
        let mut index = 0;
        self.queue.retain(|r| {
            index += 1;
            !(index > 1 && end.is_none_or(|e| index - 1 < e) && *r == Request::Sync)
        });
        self.copy_in = end.is_none();
    }

    /// Markers that produce no answer are dropped when they reach the front.
    fn drop_markers(&mut self) {
        while matches!(self.queue.front(), Some(Request::CopyEnd)) {
            self.queue.pop_front();
        }
    }

    /// Accounts for one server message (whole, or the header of a streaming one).
    pub fn on_server_message(&mut self, tag: u8) -> (Verdict, Outcome) {
        let mut outcome = Outcome::default();
        let Some(front) = self.queue.front() else {
            return (Verdict::Forward, outcome); // unsolicited: notices, notifications, FATALs
        };
        let swallowing = matches!(front, Request::Query { swallow: true });
        let mut verdict = if swallowing { Verdict::Swallow } else { Verdict::Forward };
        let ends_front = match (tag, front) {
            (be::READY_FOR_QUERY, _) => {
                self.awaits_copy_data = false;
                // Pops through the sync point; anything before it got no answer.
                while let Some(r) = self.queue.pop_front() {
                    if r.is_sync_point() {
                        if matches!(r, Request::Query { swallow: true } | Request::InjectedSync) {
                            verdict = Verdict::Swallow;
                        }
                        break;
                    }
                }
                false
            }
            (be::COPY_IN_RESPONSE, Request::Execute) => {
                self.awaits_copy_data = true;
                self.copy_in_started();
                false
            }
            (be::COPY_IN_RESPONSE | be::COPY_BOTH_RESPONSE, _) => {
                self.awaits_copy_data = true;
                false
            }
            (be::ERROR_RESPONSE, r) if r.is_extended() => {
                if let Request::Parse { hash, .. } = r {
                    outcome.failed_parse = *hash;
                }
                // The server skips everything up to the next Sync: none of it will be answered.
                while self.queue.front().is_some_and(|r| !r.is_sync_point()) {
                    self.queue.pop_front();
                }
                verdict = Verdict::Forward; // the client must see why its batch failed
                false
            }
            (be::ERROR_RESPONSE, _) => {
                verdict = Verdict::Forward;
                false
            }
            (be::PARSE_COMPLETE, Request::Parse { swallow, .. }) | (be::CLOSE_COMPLETE, Request::Close { swallow }) => {
                verdict = if *swallow { Verdict::Swallow } else { Verdict::Forward };
                true
            }
            (be::BIND_COMPLETE, Request::Bind) => true,
            (be::NO_DATA | be::ROW_DESCRIPTION, Request::DescribeStatement | Request::DescribePortal) => true,
            (be::COMMAND_COMPLETE | be::EMPTY_QUERY | be::PORTAL_SUSPENDED, Request::Execute) => true,
            _ => false,
        };
        if ends_front {
            self.queue.pop_front();
        }
        self.drop_markers();
        (verdict, outcome)
    }

    /// Whether a reply of the proxy's own is at the head of the queue.
    pub fn replies_due(&mut self) -> bool {
        self.drop_markers();
        matches!(self.queue.front(), Some(Request::Reply(_)))
    }

    /// Emits the proxy's own replies that are now at the head of the queue.
    pub fn emit_due_replies(&mut self, out: &mut BytesMut) {
        loop {
            self.drop_markers();
            let Some(Request::Reply(_)) = self.queue.front() else { return };
            if let Some(Request::Reply(bytes)) = self.queue.pop_front() {
                out.extend_from_slice(&bytes);
            }
        }
    }

    /// Drops everything (the server connection is gone).
    pub fn clear(&mut self) {
        self.copy_in = false;
        self.awaits_copy_data = false;
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::messages::PARSE_COMPLETE;

    /// Feeds server tags through the tracker and returns what the client receives.
    fn run(requests: Vec<Request>, server: &[u8]) -> (Vec<u8>, Vec<Outcome>, usize) {
        let mut t = Inflight::default();
        let mut out = BytesMut::new();
        for r in requests {
            t.push(r, &mut out);
        }
        let mut outcomes = vec![];
        for &tag in server {
            let (verdict, outcome) = t.on_server_message(tag);
            if verdict == Verdict::Forward {
                out.extend_from_slice(&[tag]);
            }
            outcomes.push(outcome);
            t.emit_due_replies(&mut out);
        }
        (out.to_vec(), outcomes, t.queue.len())
    }

    #[test]
    fn synthetic_parse_complete_lands_in_order() {
        let reply = Request::Reply(Bytes::from_static(PARSE_COMPLETE));
        // Bind/Execute of statement a, then Parse of b which the server holds (proxy replies),
        // then Bind/Execute of b and Sync.
        let requests = vec![Request::Bind, Request::Execute, reply, Request::Bind, Request::Execute, Request::Sync];
        let (out, _, left) = run(requests, b"2DDC2DCZ");
        assert_eq!(out, [b"2DDC".as_slice(), PARSE_COMPLETE, b"2DCZ"].concat());
        assert_eq!(left, 0);
    }

    #[test]
    fn injected_parse_and_query_answers_are_swallowed() {
        let requests = vec![
            Request::Query { swallow: true },
            Request::Parse { hash: Some(7), swallow: true },
            Request::Bind,
            Request::Execute,
            Request::Sync,
        ];
        let (out, _, left) = run(requests, b"CSZ12DCZ");
        assert_eq!(out, b"2DCZ");
        assert_eq!(left, 0);
    }

    #[test]
    fn an_error_skips_to_sync_and_reports_the_failed_parse() {
        let reply = Request::Reply(Bytes::from_static(PARSE_COMPLETE));
        let requests = vec![
            Request::Parse { hash: Some(9), swallow: true },
            Request::Bind,
            reply,
            Request::Execute,
            Request::Sync,
        ];
        let (out, outcomes, left) = run(requests, b"EZ");
        assert_eq!(out, b"EZ");
        assert_eq!(outcomes[0].failed_parse, Some(9));
        assert_eq!(left, 0);
    }

    #[test]
    fn syncs_sent_during_an_extended_copy_in_get_no_answer() {
        // tokio-postgres: Bind, Execute, Sync, CopyData, CopyDone, Sync, Close(S, answered here), Sync.
        let mut t = Inflight::default();
        let mut out = BytesMut::new();
        for r in [Request::Bind, Request::Execute, Request::Sync, Request::CopyEnd, Request::Sync] {
            t.push(r, &mut out);
        }
        t.push(Request::Reply(Bytes::from_static(b"3")), &mut out);
        t.push(Request::Sync, &mut out);
        for &tag in b"2GCZ" {
            assert_eq!(t.on_server_message(tag).0, Verdict::Forward);
            t.emit_due_replies(&mut out);
        }
        assert_eq!(&out[..], b"3", "the proxy's CloseComplete follows the first ReadyForQuery");
        t.on_server_message(b'Z');
        assert!(t.is_empty(), "{:?}", t.queue);
        // A Sync the client sends while the server copies in is not waited for either.
        let mut t = Inflight::default();
        t.push(Request::Execute, &mut out);
        t.on_server_message(b'G');
        t.push(Request::Sync, &mut out);
        t.push(Request::CopyEnd, &mut out);
        t.push(Request::Sync, &mut out);
        t.on_server_message(b'C');
        t.on_server_message(b'Z');
        assert!(t.is_empty(), "{:?}", t.queue);
    }

    #[test]
    fn simple_queries_keep_everything_until_ready() {
        let (out, _, left) = run(vec![Request::Query { swallow: false }, Request::Sync], b"TDCEZ");
        assert_eq!(out, b"TDCEZ");
        assert_eq!(left, 1);
        let mut t = Inflight::default();
        t.push(Request::Query { swallow: false }, &mut BytesMut::new());
        t.push(Request::Parse { hash: None, swallow: false }, &mut BytesMut::new());
        t.push(Request::Sync, &mut BytesMut::new());
        assert_eq!(t.sync_points(), 2);
    }

    #[test]
    fn an_answer_is_owed_without_input_until_the_server_asks_for_copy_data() {
        let mut t = Inflight::default();
        let mut out = BytesMut::new();
        assert!(!t.answer_owed_without_input(), "nothing sent");
        // Parse/Bind/Execute without Sync or Flush: the server may wait for more.
        t.push(Request::Parse { hash: None, swallow: false }, &mut out);
        t.push(Request::Execute, &mut out);
        assert!(!t.answer_owed_without_input());
        t.push(Request::Sync, &mut out);
        assert!(t.answer_owed_without_input());
        t.on_server_message(b'1');
        t.on_server_message(b'C');
        t.on_server_message(b'Z');
        assert!(!t.answer_owed_without_input(), "answered");
        // COPY FROM STDIN by simple query: owed until CopyInResponse, then the client must be read.
        t.push(Request::Query { swallow: false }, &mut out);
        assert!(t.answer_owed_without_input());
        t.on_server_message(b'G');
        assert!(!t.answer_owed_without_input());
        t.on_server_message(b'C');
        t.on_server_message(b'Z');
        t.push(Request::Query { swallow: false }, &mut out);
        assert!(t.answer_owed_without_input(), "a ReadyForQuery ends the COPY");
    }
}
