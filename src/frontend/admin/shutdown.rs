//! SHUTDOWN: the same graceful shutdown as SIGTERM (stop accepting, let units finish for up to
//! `proxy.shutdown_timeout`, close each client at its next idle point, exit 0).

use super::Answer;
use crate::frontend::shared::Shared;

pub fn shutdown(shared: &Shared) -> Answer {
    tracing::info!("SHUTDOWN from the admin console");
    shared.lifecycle.request_stop();
    Answer::Done("SHUTDOWN")
}
