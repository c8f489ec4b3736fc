//! PAUSE and RESUME: units of work that start while paused wait at the gate; PAUSE answers once
//! the units in flight have finished (or `proxy.shutdown_timeout` passed), so an operator knows
//! no unit is running when it returns.

use super::Answer;
use crate::frontend::clients::ClientStatus;
use crate::frontend::shared::Shared;
use std::time::{Duration, Instant};

pub async fn pause(shared: &Shared) -> Answer {
    if shared.lifecycle.pause() {
        tracing::info!("paused: new units of work wait for RESUME");
    }
    let deadline = Instant::now() + shared.config().proxy.shutdown_timeout;
    while active_units(shared) > 0 && Instant::now() < deadline {
        crate::control::sleep(Duration::from_millis(10)).await;
    }
    Answer::Done("PAUSE")
}

pub fn resume(shared: &Shared) -> Answer {
    if shared.lifecycle.resume() {
        tracing::info!("resumed");
    }
    Answer::Done("RESUME")
}

/// Clients running a unit on a server connection now.
fn active_units(shared: &Shared) -> usize {
    shared.clients.list().iter().filter(|c| c.status() == ClientStatus::Active).count()
}
