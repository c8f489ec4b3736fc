//! SWITCHOVER [TO node]: has the failover driver hand the leadership to the named follower (or
//! the most advanced one in rotation) with the leader healthy, and answers once the successor is
//! promoted, with the time writes were held in a NOTICE, or with why it was refused or called off.

use super::promote::{ask_driver, node_named};
use super::Answer;
use crate::error::ProxyError;
use crate::frontend::shared::Shared;
use crate::topology::failover::Request;

pub async fn switchover(shared: &Shared, to: Option<String>) -> Result<Answer, ProxyError> {
    let to = node_named(shared, to.as_deref(), ProxyError::Switchover)?;
    let done = ask_driver(shared, Request::Switchover { to }, ProxyError::Switchover).await?;
    tracing::warn!(%done, "SWITCHOVER from the admin console");
    Ok(Answer::Told("SWITCHOVER", done))
}
