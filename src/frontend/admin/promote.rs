//! PROMOTE [node] [FORCE]: once the leader is confirmed dead, has the failover driver promote
//! the election's choice or the named node (FORCE: even if it is behind another follower), and
//! answers when the promotion is done or refused.

use super::Answer;
use crate::error::ProxyError;
use crate::frontend::shared::Shared;
use crate::topology::failover::Order;
use std::time::Duration;

/// Longest wait for the driver's answer (freeze, elect, pg_promote).
const ANSWER_WAIT: Duration = Duration::from_secs(60);

pub async fn promote(shared: &Shared, node: Option<String>, force: bool) -> Result<Answer, ProxyError> {
    let config = shared.config();
    let node = match node {
        Some(name) => Some(
            config
                .node_index(&name)
                .ok_or_else(|| ProxyError::Promote(format!("no node named \"{name}\" (see SHOW NODES)")))?,
        ),
        None => None,
    };
    if config.failover.mode == crate::config::FailoverMode::Off {
        return Err(ProxyError::Promote("failover.mode = off: pgcausal does not promote nodes".into()));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    shared
        .failovers
        .order(Order { node, force, reply })
        .map_err(|_| ProxyError::Promote("the failover driver is not running".into()))?;
    match crate::control::timeout(ANSWER_WAIT, answer).await {
        Ok(Ok(Ok(done))) => {
            tracing::warn!(%done, force, "PROMOTE from the admin console");
            Ok(Answer::Done("PROMOTE"))
        }
        Ok(Ok(Err(why))) => Err(ProxyError::Promote(why)),
        Ok(Err(_)) => Err(ProxyError::Promote("the failover driver stopped".into())),
        Err(_) => Err(ProxyError::Promote("no outcome within 60 s; see SHOW FAILOVERS".into())),
    }
}
