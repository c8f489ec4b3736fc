//! The admin console: a client that logs in to database `pgcausal` as an admin user gets
//! commands (SHOW NODES, RELOAD, ...) answered by the proxy as result sets, one file per command.

pub mod command;
