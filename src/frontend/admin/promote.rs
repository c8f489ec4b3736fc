//! PROMOTE [node] [FORCE]: once the leader is confirmed dead, has the failover driver promote
//! the election's choice or the named node (FORCE: even if it is behind another follower), and
//! answers when the promotion is done or refused. Also how console commands ask the driver.

use super::Answer;
use crate::error::ProxyError;
use crate::frontend::shared::Shared;
use crate::topology::failover::{Order, Request};
use std::time::Duration;

/// Longest wait for the driver's answer (freeze, elect, pg_promote; drain and catch up).
const ANSWER_WAIT: Duration = Duration::from_secs(60);

pub async fn promote(shared: &Shared, node: Option<String>, force: bool) -> Result<Answer, ProxyError> {
    let node = node_named(shared, node.as_deref(), ProxyError::Promote)?;
    let done = ask_driver(shared, Request::Promote { node, force }, ProxyError::Promote).await?;
    tracing::warn!(%done, force, "PROMOTE from the admin console");
    Ok(Answer::Done("PROMOTE"))
}

/// The index of the node `name` names (None: none named).
pub(super) fn node_named(
    shared: &Shared,
    name: Option<&str>,
    error: fn(String) -> ProxyError,
) -> Result<Option<usize>, ProxyError> {
    let Some(name) = name else { return Ok(None) };
    let index = shared.config().node_index(name);
    index.map(Some).ok_or_else(|| error(format!("no node named \"{name}\" (see SHOW NODES)")))
}

/// Sends `request` to the failover driver and waits for its outcome.
pub(super) async fn ask_driver(
    shared: &Shared,
    request: Request,
    error: fn(String) -> ProxyError,
) -> Result<String, ProxyError> {
    if shared.config().failover.mode == crate::config::FailoverMode::Off {
        return Err(error("failover.mode = off: pgcausal does not promote nodes".into()));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    shared.failovers.order(Order { request, reply }).map_err(|_| error("the failover driver is not running".into()))?;
    match crate::control::timeout(ANSWER_WAIT, answer).await {
        Ok(Ok(Ok(done))) => Ok(done),
        Ok(Ok(Err(why))) => Err(error(why)),
        Ok(Err(_)) => Err(error("the failover driver stopped".into())),
        Err(_) => Err(error("no outcome within 60 s; see SHOW FAILOVERS".into())),
    }
}
