//! Writing rows to PostgreSQL. The fast path is one binary COPY in one transaction. When it hits
//! a unique violation (a redelivered batch, an SDK retry) the batch goes through a temporary
//! staging table and `INSERT … ON CONFLICT DO NOTHING`, de-duplicated within the batch first.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use event_model::QueuedEvent;
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::{NoTls, Transaction};

use crate::FlusherError;

const COLUMNS: &str = "time, event_id, name, source, device_id, session_id, user_id, properties, sent_at, received_at";
const TYPES: [Type; 10] = [
    Type::TIMESTAMPTZ,
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
];

/// Which path a committed batch took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    Copy,
    Dedup,
}

/// Why a write failed, as the flusher must react to it.
#[derive(Debug)]
pub enum WriteError {
    /// PostgreSQL refused a row for its data: isolate it, dead-letter it.
    Data { sqlstate: String, message: String },
    /// PostgreSQL is down, restarting, or failed for reasons not tied to the rows: back off, retry.
    Transient(FlusherError),
}

/// Creates the connection pool. No connection is made yet.
pub fn pool(database_url: &str, size: usize) -> Result<Pool, FlusherError> {
    let mut pg: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e| FlusherError::Config(format!("invalid database URL: {e}")))?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(std::time::Duration::from_secs(5));
    }
    pg.application_name("eventtracker-flusher");
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| FlusherError::Config(format!("postgres pool: {e}")))
}

/// Writes the rows in one transaction; on a unique violation, once more through staging.
pub async fn write(pool: &Pool, rows: &[&QueuedEvent]) -> Result<WritePath, WriteError> {
    let mut client = pool
        .get()
        .await
        .map_err(|e| WriteError::Transient(FlusherError::PostgresPool(e.to_string())))?;
    match copy_into(&mut client, "events", rows, false).await {
        Ok(()) => Ok(WritePath::Copy),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            copy_into(&mut client, "events", rows, true)
                .await
                .map_err(classify)?;
            Ok(WritePath::Dedup)
        }
        Err(e) => Err(classify(e)),
    }
}

async fn copy_into(
    client: &mut deadpool_postgres::Client,
    table: &str,
    rows: &[&QueuedEvent],
    dedup: bool,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    if dedup {
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE events_staging (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
        ))
        .await?;
        copy_rows(&tx, "events_staging", rows).await?;
        tx.batch_execute(&format!(
            "INSERT INTO {table} ({COLUMNS})
             SELECT DISTINCT ON (event_id, time) {COLUMNS} FROM events_staging
             ON CONFLICT DO NOTHING"
        ))
        .await?;
    } else {
        copy_rows(&tx, table, rows).await?;
    }
    tx.commit().await
}

async fn copy_rows(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[&QueuedEvent],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &TYPES);
    pin_mut!(writer);
    for r in rows {
        let properties = Json(&*r.properties);
        let values: [&(dyn ToSql + Sync); 10] = [
            &r.time,
            &r.event_id,
            &r.name,
            &r.source,
            &r.device_id,
            &r.session_id,
            &r.user_id,
            &properties,
            &r.sent_at,
            &r.received_at,
        ];
        writer.as_mut().write(&values).await?;
    }
    writer.finish().await
}

/// Data errors are the rows' fault; everything else is PostgreSQL's state.
fn classify(e: tokio_postgres::Error) -> WriteError {
    match e.as_db_error() {
        Some(db) if is_data_error(db.code()) => WriteError::Data {
            sqlstate: db.code().code().to_string(),
            message: db.message().to_string(),
        },
        _ => WriteError::Transient(FlusherError::Postgres(e)),
    }
}

/// SQLSTATE class 22 (data exception), class 23 (integrity constraint) and 54000/54001
/// (a value too large): refused for what the row holds, so retrying cannot help.
fn is_data_error(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("22") || c.starts_with("23") || c == "54000" || c == "54001"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sqlstates() {
        assert!(is_data_error(&SqlState::INVALID_TEXT_REPRESENTATION));
        assert!(is_data_error(&SqlState::CHECK_VIOLATION));
        assert!(is_data_error(&SqlState::NOT_NULL_VIOLATION));
        assert!(is_data_error(&SqlState::PROGRAM_LIMIT_EXCEEDED));
        assert!(!is_data_error(&SqlState::ADMIN_SHUTDOWN));
        assert!(!is_data_error(&SqlState::UNDEFINED_TABLE));
        assert!(!is_data_error(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(!is_data_error(&SqlState::TOO_MANY_CONNECTIONS));
    }
}
