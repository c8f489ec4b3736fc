//! The server side: connections to PostgreSQL nodes and their pools.

pub mod abort;
pub mod conn;
pub mod failures;
pub mod pool;
pub mod pools;
pub mod scram_passthrough;
pub mod server_secret;
pub mod settings;
pub mod sql_statements;
pub mod statements;
pub mod tls;

pub use conn::{BackendError, Login, ServerConn};
pub use pool::{Lease, LeaseError, Pool};
pub use pools::Pools;
pub use server_secret::ServerSecret;
