//! What ingest-api and the flusher share as services, once: log setup ([`logging`]), the
//! Prometheus recorder and the `/healthz` and `/metrics` handlers ([`metrics`]), a named
//! [`shutdown::Shutdown`] handle (signal + grace deadline), and turning an error into a log line
//! with its causes and an exit code ([`report`]), and the TCP keepalives and user timeout of
//! every connection to Redis and PostgreSQL ([`tcp`]), and settings that are never printed
//! ([`secret`]). Nothing here knows about events or queues.

pub mod logging;
pub mod metrics;
pub mod report;
pub mod secret;
pub mod shutdown;
pub mod tcp;
