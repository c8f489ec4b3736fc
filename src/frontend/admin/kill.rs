//! KILL <client id>: closes one client's connection at once, as PostgreSQL's
//! pg_terminate_backend does (FATAL 57P01); a unit in flight is rolled back with its server
//! connection, which is closed, never reused.

use super::Answer;
use crate::error::ProxyError;
use crate::frontend::clients::signal;
use crate::frontend::shared::Shared;

pub fn kill(shared: &Shared, id: u64) -> Result<Answer, ProxyError> {
    let client = shared.clients.get(id).ok_or(ProxyError::UnknownClient(id))?;
    tracing::info!(client = id, user = %client.user, address = %client.peer, "KILL from the admin console");
    client.signal(signal::KILL);
    Ok(Answer::Done("KILL"))
}
