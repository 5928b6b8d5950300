//! Test harness: starts the real `ingest-api` and `flusher` binaries against real Redis and real
//! PostgreSQL + TimescaleDB, and gives each test its own stream key and database.
//!
//! `scripts/test` starts the shared services and exports `ET_TEST_REDIS_URL` and
//! `ET_TEST_DATABASE_URL`. Tests that stop, kill or freeze a service start one of their own
//! ([`RedisServer`], [`PgServer`]), so parallel tests never see a shared one vanish; tests of
//! `--redis-cluster` start a private [`RedisCluster`].
//! Silent unless a test fails: then the logs of the processes it started are printed.

mod apps;
mod checks;
mod netns;
mod processes;
mod redis_cluster;
mod services;

pub use apps::*;
pub use checks::*;
pub use netns::*;
pub use processes::*;
pub use redis_cluster::*;
pub use services::*;

pub use redis::aio::MultiplexedConnection;
