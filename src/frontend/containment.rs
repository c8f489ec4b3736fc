//! Panic containment: a panic while serving one client ends that client only, logged and counted.

use futures_util::FutureExt;
use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// A panic caught while serving a client: its message (for the log, never the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked(pub String);

/// Runs `work`; a panic inside it is caught, logged at error and counted, and returned as
/// [`Panicked`]. The state `work` touched may be half-updated: the caller must drop what it
/// cannot trust (the server connection above all) and close the client.
///
/// A plain function, not `async fn`: an async body would hold `work` twice (as its argument
/// and inside the catching future), and every client task is sized by it for its whole life.
pub fn contained<F: Future>(stage: &'static str, work: F) -> impl Future<Output = Result<F::Output, Panicked>> {
    // Unwind safety: on a panic the caller closes the client and discards its server
    // connection, so nothing half-updated is used again.
    AssertUnwindSafe(work).catch_unwind().map(move |caught| {
        caught.map_err(|payload| {
            let message = panic_message(payload.as_ref());
            tracing::error!(stage, panic = %message, "a panic ended one client connection; the others go on");
            metrics::counter!(crate::metrics::SESSION_PANICS).increment(1);
            Panicked(message)
        })
    })
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_caught_and_its_message_kept() {
        let caught = contained("test", async {
            let v: Vec<u8> = Vec::new();
            // An index past the end: the kind of panic a parser bug causes.
            v[usize::from(v.is_empty())]
        })
        .await;
        let Err(Panicked(message)) = caught else { panic!("the panic was caught: {caught:?}") };
        assert!(message.contains("index out of bounds"), "{message}");
        assert_eq!(contained("test", async { 7 }).await, Ok(7), "no panic: the output passes through");
        let formatted = contained("test", async { panic!("bad {}", 42) }).await;
        assert_eq!(formatted, Err(Panicked("bad 42".into())));
    }
}
