//! pgcausal: a PostgreSQL-wire-compatible proxy that sends writes to the leader and reads to
//! followers, with per-session consistency from WAL positions.

pub mod backend;
pub mod cluster;
pub mod config;
pub mod consistency;
pub mod control;
pub mod demo;
pub mod error;
pub mod failover_driver;
pub mod frontend;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub(crate) mod lexical;
pub mod membership;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod rejoin;
pub mod route;
pub mod secret;
pub mod socket;
pub mod sync_keeper;
pub mod topology;
