//! Writing rows to PostgreSQL. Binary COPY applies no casts, so the `events` columns are checked
//! against [`EXPECTED_COLUMNS`] before the first write ([`check_columns`]). The fast path is one
//! binary COPY in one transaction. When it hits
//! a unique violation (a redelivered batch, an SDK retry) the batch goes through a temporary
//! staging table and `INSERT … ON CONFLICT DO NOTHING`, de-duplicated within the batch first.
//!
//! Rows that ingest-api corrected for the device's clock skew (`device_time` set) take a guarded
//! write of their own: each attempt of an SDK's retry is corrected by its own latency, so the
//! same event comes with a slightly different `time` each time and the unique key
//! `(event_id, time)` cannot tell the copies apart. The guard can: same `event_id`, same
//! `device_time`, a `time` within [`CORRECTION_SPREAD`] (see [`copy_guarded`]).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use event_model::EventView;
use futures_util::{SinkExt, pin_mut};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::FlusherError;
use crate::policy::Class;

const COLUMNS: &str = "time, event_id, name, source, device_id, session_id, user_id, properties, sent_at, received_at, device_time";

/// The columns of `events` COPY writes, each with the type its binary form is encoded for (as
/// `format_type` names it; see [`encode_binary`]). Binary COPY applies no casts: a column of
/// another type refuses every row (22P03), or worse takes them as something else.
pub const EXPECTED_COLUMNS: [(&str, &str); 11] = [
    ("time", "timestamp with time zone"),
    ("event_id", "uuid"),
    ("name", "text"),
    ("source", "text"),
    ("device_id", "text"),
    ("session_id", "text"),
    ("user_id", "text"),
    ("properties", "jsonb"),
    ("sent_at", "timestamp with time zone"),
    ("received_at", "timestamp with time zone"),
    ("device_time", "timestamp with time zone"),
];

/// Whether the `events` columns were found as [`EXPECTED_COLUMNS`] says, shared by the
/// workers: checked at start, or before the first write when PostgreSQL did not answer then.
#[derive(Debug, Default)]
pub struct SchemaCheck {
    verified: std::sync::atomic::AtomicBool,
}

impl SchemaCheck {
    pub fn verified(&self) -> bool {
        self.verified.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_verified(&self) {
        self.verified
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Compares the `events` table (as `COPY events` resolves it, through the search path) with
/// [`EXPECTED_COLUMNS`]: `FlusherError::Schema` naming every missing column and every column of
/// another type, with the type expected and the type found.
pub async fn check_columns(client: &tokio_postgres::Client) -> Result<(), FlusherError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL), format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass('events') AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .await?;
    if rows.is_empty() {
        return Err(FlusherError::Schema(
            "PostgreSQL has no table events (in the search path of this database URL): run \
             `flusher migrate` first"
                .into(),
        ));
    }
    let found: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let problems: Vec<String> = EXPECTED_COLUMNS
        .iter()
        .filter_map(
            |(column, expected)| match found.iter().find(|(name, _, _)| name == column) {
                None => Some(format!(
                    "column {column} is missing (expected {expected}; run `flusher migrate`)"
                )),
                Some((_, base, shown)) if base != expected => Some(format!(
                    "column {column} has type {shown}, expected {expected}"
                )),
                Some(_) => None,
            },
        )
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    Err(FlusherError::Schema(format!(
        "the events table does not match what this flusher writes with binary COPY: {}. \
         Restore the column (e.g. ALTER TABLE events ALTER COLUMN <column> TYPE <expected>) or \
         run a flusher built for the new schema; nothing was written or dead-lettered meanwhile",
        problems.join("; ")
    )))
}

/// [`check_columns`] on a pooled connection, taking it and querying each within `timeout`. A
/// connection whose query was cut off is closed, never handed to a write.
pub async fn check_columns_pooled(pool: &Pool, timeout: Duration) -> Result<(), FlusherError> {
    let cut_off = |what| FlusherError::PostgresTimeout {
        what,
        ms: timeout.as_millis(),
    };
    let client = tokio::time::timeout(timeout, pool.get())
        .await
        .map_err(|_| cut_off("taking a connection"))??;
    match tokio::time::timeout(timeout, check_columns(&client)).await {
        Ok(checked) => checked,
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(cut_off("checking the events columns"))
        }
    }
}

/// How far apart the corrected times of one event's attempts may be for the guard to find the
/// earlier copy: the difference of the attempts' latencies (at most `--header-timeout-ms` +
/// `--body-timeout-ms` of ingest-api, 35 s by default, plus the client's own delays) and any
/// change of the device's clock between attempts. Copies further apart are stored twice. The
/// guard also asks for the same `device_time`, so a wide spread merges no other event; it
/// only bounds the chunks the lookup reads (three of one day).
pub const CORRECTION_SPREAD: &str = "1 day";

/// First key of the advisory locks that serialise guarded writes of one `event_id` (the second
/// is the id's hash): "ETdt".
const GUARD_LOCK: i32 = 0x4554_6474;

/// Which path a committed batch took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    Copy,
    Dedup,
    /// The batch held rows corrected for the device's clock, written by the guarded insert
    /// (its other rows by COPY).
    Guarded,
}

/// Why a write failed, as the flusher must react to it.
#[derive(Debug)]
pub enum WriteError {
    /// PostgreSQL refused a row for its data: isolate it, dead-letter it.
    Data { sqlstate: String, message: String },
    /// PostgreSQL refused the write with a SQLSTATE that is neither a data error nor its own
    /// trouble (a chunk that takes no writes, an operator's trigger or constraint): possibly
    /// tied to one row. Retried; after [`crate::policy::REFUSED_STREAK`] failures in a row with
    /// the same SQLSTATE the batch is split as for data errors (see [`crate::policy::decide`]).
    Refused { sqlstate: String, message: String },
    /// PostgreSQL is down, restarting, or failed for reasons not tied to the rows: back off, retry.
    Transient(FlusherError),
    /// The `events` columns are not what this flusher writes (found before the write, or after
    /// PostgreSQL refused the binary form of a value, 22P03): no row is at fault, and no row can
    /// be written until an operator acts. `FlusherError::Schema`, fatal.
    Schema(FlusherError),
}

/// The settings of every PostgreSQL connection the flusher makes: the URL's, plus a connect
/// timeout of 5 s and the TCP keepalives and user timeout of [`service_kit::tcp`] (the user
/// timeout never below `call_timeout`, the longest a call on it may wait) where the URL sets
/// none (`connect_timeout`, `keepalives_idle`, `keepalives_interval`, `keepalives_retries`,
/// `tcp_user_timeout` in the URL win). tokio-postgres turns keepalive on by itself, but after
/// two hours of silence: a silent partition would leave the connection for that long.
pub fn pg_config(
    database_url: &str,
    call_timeout: Duration,
) -> Result<tokio_postgres::Config, FlusherError> {
    use service_kit::tcp;
    /// tokio-postgres's own `keepalives_idle` when the URL gives none.
    const LIBRARY_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
    let mut pg: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e| FlusherError::Config(format!("invalid database URL: {e}")))?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(5));
    }
    pg.keepalives(true);
    if pg.get_keepalives_idle() == LIBRARY_IDLE {
        pg.keepalives_idle(tcp::KEEPALIVE_IDLE);
    }
    if pg.get_keepalives_interval().is_none() {
        pg.keepalives_interval(tcp::KEEPALIVE_INTERVAL);
    }
    if pg.get_keepalives_retries().is_none() {
        pg.keepalives_retries(tcp::KEEPALIVE_PROBES);
    }
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(tcp::user_timeout(call_timeout));
    }
    Ok(pg)
}

/// Creates the connection pool; `timeout` is `--pg-timeout-ms`. No connection is made yet.
pub fn pool(database_url: &str, size: usize, timeout: Duration) -> Result<Pool, FlusherError> {
    let mut pg = pg_config(database_url, timeout)?;
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

/// Writes the rows in one transaction; on a unique violation, once more through staging. Rows
/// corrected for the device's clock go through the guarded write, in a transaction of its own.
///
/// Taking a connection and each write are bounded by `timeout`: a PostgreSQL that stops
/// answering without closing the connection (a failover without a TCP reset, a frozen host)
/// would otherwise hold the batch for minutes. A connection that timed out is dropped, never
/// returned to the pool; whether its write committed is unknown, so the batch is retried and
/// a committed one takes the de-duplication path.
///
/// Until `schema` is verified, the `events` columns are checked first on the same connection.
/// When PostgreSQL refuses the binary form of a value (22P03, a column whose type changed under
/// the flusher) they are checked again, to name the column: a [`WriteError::Schema`] either way.
pub async fn write(
    pool: &Pool,
    rows: &[&EventView<'_>],
    timeout: Duration,
    schema: &SchemaCheck,
) -> Result<WritePath, WriteError> {
    let mut client = tokio::time::timeout(timeout, pool.get())
        .await
        .map_err(|_| timed_out("taking a connection", timeout))?
        .map_err(|e| WriteError::Transient(e.into()))?;
    if !schema.verified() {
        match tokio::time::timeout(timeout, check_columns(&client)).await {
            Ok(Ok(())) => schema.set_verified(),
            Ok(Err(e)) if e.is_fatal() => return Err(WriteError::Schema(e)),
            Ok(Err(e)) => return Err(WriteError::Transient(e)),
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                return Err(timed_out("checking the events columns", timeout));
            }
        }
    }
    // Set when a statement was cut off: the connection is then in an unknown state.
    let mut cut_off = false;
    // Most batches hold no corrected row: they are written as they are, without a copy.
    let mut result = if rows.iter().all(|r| r.device_time.is_none()) {
        write_plain(&mut client, rows, timeout, &mut cut_off).await
    } else {
        write_mixed(&mut client, rows, timeout, &mut cut_off).await
    };
    if let Err(WriteError::Schema(FlusherError::Postgres(refused))) = &result
        && !cut_off
    {
        let why = match tokio::time::timeout(timeout, check_columns(&client)).await {
            Ok(Err(e)) if e.is_fatal() => e,
            _ => FlusherError::Schema(format!(
                "PostgreSQL refused the binary form of a value ({}): a column of the events \
                 table does not take what this flusher writes; compare its columns with \
                 migrations/",
                crate::error::describe_postgres(refused)
            )),
        };
        result = Err(WriteError::Schema(why));
    }
    if cut_off {
        // Close it rather than hand it to the next batch.
        drop(deadpool_postgres::Object::take(client));
    }
    result
}

/// The error of a statement cut off after `timeout`.
fn timed_out(what: &'static str, timeout: Duration) -> WriteError {
    WriteError::Transient(FlusherError::PostgresTimeout {
        what,
        ms: timeout.as_millis(),
    })
}

/// COPY, and on a unique violation the de-duplicating write.
async fn write_plain(
    client: &mut deadpool_postgres::Client,
    rows: &[&EventView<'_>],
    timeout: Duration,
    cut_off: &mut bool,
) -> Result<WritePath, WriteError> {
    match tokio::time::timeout(timeout, copy_plain(client, "events", rows)).await {
        Ok(Ok(())) => Ok(WritePath::Copy),
        Ok(Err(e)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            match tokio::time::timeout(timeout, copy_deduplicated(client, "events", rows)).await {
                Ok(r) => r.map(|()| WritePath::Dedup).map_err(classify),
                Err(_) => {
                    *cut_off = true;
                    Err(timed_out("the de-duplicating write", timeout))
                }
            }
        }
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => {
            *cut_off = true;
            Err(timed_out("the COPY", timeout))
        }
    }
}

/// A batch holding corrected rows: the others as [`write_plain`] writes them, then the
/// corrected ones by the guarded insert, each in a transaction of its own. Both writes are
/// idempotent, so a batch retried after the first committed is still stored once.
async fn write_mixed(
    client: &mut deadpool_postgres::Client,
    rows: &[&EventView<'_>],
    timeout: Duration,
    cut_off: &mut bool,
) -> Result<WritePath, WriteError> {
    let (corrected, plain): (Vec<&EventView<'_>>, Vec<&EventView<'_>>) =
        rows.iter().partition(|r| r.device_time.is_some());
    let mut path = WritePath::Guarded;
    if !plain.is_empty() && write_plain(client, &plain, timeout, cut_off).await? == WritePath::Dedup
    {
        path = WritePath::Dedup;
    }
    match tokio::time::timeout(timeout, copy_guarded(client, "events", &corrected)).await {
        Ok(r) => r.map(|()| path).map_err(classify),
        Err(_) => {
            *cut_off = true;
            Err(timed_out("the guarded write", timeout))
        }
    }
}

/// The fast path: one COPY statement, a transaction of its own (autocommit): no BEGIN and
/// COMMIT round trips, and the batch is still all or nothing.
async fn copy_plain(
    client: &mut deadpool_postgres::Client,
    table: &str,
    rows: &[&EventView<'_>],
) -> Result<(), tokio_postgres::Error> {
    let sink = client.copy_in(&copy_statement(table)).await?;
    send_rows(sink, rows).await.map(|_| ())
}

/// The de-duplication path: COPY into a staging table that lives only inside this
/// transaction, then `INSERT … ON CONFLICT DO NOTHING`, duplicates within the batch dropped.
async fn copy_deduplicated(
    client: &mut deadpool_postgres::Client,
    table: &str,
    rows: &[&EventView<'_>],
) -> Result<(), tokio_postgres::Error> {
    let tx = stage(client, table, rows).await?;
    tx.batch_execute(&format!(
        "INSERT INTO {table} ({COLUMNS})
         SELECT DISTINCT ON (event_id, time) {COLUMNS} FROM events_staging
         ON CONFLICT DO NOTHING"
    ))
    .await?;
    tx.commit().await
}

/// The guarded write of corrected rows. In one transaction: COPY into a staging table, take an
/// advisory lock per `event_id` (in order, so two flushers never deadlock; a flusher writing a
/// copy of the same event waits for this one to commit, then sees its row), and insert each row
/// unless `events` holds a copy of it: the same `event_id` and `device_time` with a `time`
/// within [`CORRECTION_SPREAD`], or the same `event_id` at `device_time` (an attempt that was
/// not corrected, its skew having been under the threshold). Copies within the batch keep the
/// first one received.
async fn copy_guarded(
    client: &mut deadpool_postgres::Client,
    table: &str,
    rows: &[&EventView<'_>],
) -> Result<(), tokio_postgres::Error> {
    let tx = stage(client, table, rows).await?;
    tx.batch_execute(&format!(
        "SELECT count(pg_advisory_xact_lock({GUARD_LOCK}, k))
         FROM (SELECT DISTINCT hashtext(event_id::text) AS k FROM events_staging ORDER BY k) AS keys;
         INSERT INTO {table} ({COLUMNS})
         SELECT DISTINCT ON (event_id, device_time) {COLUMNS} FROM events_staging s
         WHERE NOT EXISTS (
                   SELECT 1 FROM {table} e
                   WHERE e.event_id = s.event_id AND e.device_time = s.device_time
                     AND e.time BETWEEN s.time - interval '{CORRECTION_SPREAD}'
                                    AND s.time + interval '{CORRECTION_SPREAD}')
           AND NOT EXISTS (
                   SELECT 1 FROM {table} e WHERE e.event_id = s.event_id AND e.time = s.device_time)
         ORDER BY event_id, device_time, received_at
         ON CONFLICT DO NOTHING"
    ))
    .await?;
    tx.commit().await
}

/// Opens a transaction and COPYs the rows into a staging table that lives only inside it, for the
/// de-duplicating and the guarded writes to insert from.
async fn stage<'c>(
    client: &'c mut deadpool_postgres::Client,
    table: &str,
    rows: &[&EventView<'_>],
) -> Result<deadpool_postgres::Transaction<'c>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE events_staging (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
    ))
    .await?;
    let sink = tx.copy_in(&copy_statement("events_staging")).await?;
    send_rows(sink, rows).await?;
    Ok(tx)
}

fn copy_statement(table: &str) -> String {
    format!("COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)")
}

async fn send_rows(
    sink: tokio_postgres::CopyInSink<Bytes>,
    rows: &[&EventView<'_>],
) -> Result<u64, tokio_postgres::Error> {
    pin_mut!(sink);
    // The whole batch as one message: one allocation, no per-row future (see `encode_binary`).
    sink.send(encode_binary(rows).freeze()).await?;
    sink.as_mut().finish().await
}

/// Microseconds from the Unix epoch to PostgreSQL's epoch, 2000-01-01T00:00:00Z.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Encodes rows in PostgreSQL's binary COPY format, columns in the order of `COLUMNS`.
///
/// Binary COPY applies no casts, so each value is written exactly as its column type's binary
/// form: `timestamptz` as i64 microseconds since 2000-01-01 UTC, `uuid` as 16 bytes, `text` as
/// UTF-8, `jsonb` as the version byte 1 then the JSON text; NULL as length -1. Hand-written
/// because tokio-postgres's `BinaryCopyInWriter` awaits a future and boxes a `ToSql` per value.
pub fn encode_binary(rows: &[&EventView<'_>]) -> BytesMut {
    let size: usize = rows
        .iter()
        .map(|r| {
            2 + 11 * 4
                + 8 * 4
                + 16
                + r.name.len()
                + r.source.len()
                + r.device_id.as_deref().map_or(0, str::len)
                + r.session_id.as_deref().map_or(0, str::len)
                + r.user_id.as_deref().map_or(0, str::len)
                + 1
                + r.properties.len()
        })
        .sum();
    let mut buf = BytesMut::with_capacity(19 + size + 2);
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension length
    let text = |buf: &mut BytesMut, s: Option<&str>| match s {
        Some(s) => {
            buf.put_i32(s.len() as i32);
            buf.put_slice(s.as_bytes());
        }
        None => buf.put_i32(-1),
    };
    // Unix microseconds → PostgreSQL's; an entry's times are checked to be within ±10,000
    // years when decoded, so this cannot overflow.
    let timestamp = |buf: &mut BytesMut, t: Option<i64>| match t {
        Some(unix_micros) => {
            buf.put_i32(8);
            buf.put_i64(unix_micros - PG_EPOCH_UNIX_MICROS);
        }
        None => buf.put_i32(-1),
    };
    for r in rows {
        buf.put_i16(11);
        timestamp(&mut buf, Some(r.time));
        buf.put_i32(16);
        buf.put_slice(r.event_id.as_bytes());
        text(&mut buf, Some(&r.name));
        text(&mut buf, Some(&r.source));
        text(&mut buf, r.device_id.as_deref());
        text(&mut buf, r.session_id.as_deref());
        text(&mut buf, r.user_id.as_deref());
        let json = r.properties.as_bytes();
        buf.put_i32(json.len() as i32 + 1);
        buf.put_u8(1); // jsonb format version
        buf.put_slice(json);
        timestamp(&mut buf, r.sent_at);
        timestamp(&mut buf, Some(r.received_at));
        timestamp(&mut buf, r.device_time);
    }
    buf.put_i16(-1);
    buf
}

/// What PostgreSQL's answer means for the rows, by its SQLSTATE (see [`Class`]).
fn classify(e: tokio_postgres::Error) -> WriteError {
    let Some(db) = e.as_db_error() else {
        return WriteError::Transient(FlusherError::Postgres(e));
    };
    let (sqlstate, message) = (db.code().code().to_string(), db.message().to_string());
    match Class::of(&sqlstate) {
        Class::Schema => WriteError::Schema(FlusherError::Postgres(e)),
        Class::Data => WriteError::Data { sqlstate, message },
        Class::Other => WriteError::Refused { sqlstate, message },
        Class::ServerTrouble => WriteError::Transient(FlusherError::Postgres(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_probes_a_silent_server() {
        use service_kit::tcp;
        let pg = pg_config("postgres://u@h/db", Duration::from_secs(2)).unwrap();
        assert!(pg.get_keepalives());
        assert_eq!(pg.get_keepalives_idle(), tcp::KEEPALIVE_IDLE);
        assert_eq!(pg.get_keepalives_interval(), Some(tcp::KEEPALIVE_INTERVAL));
        assert_eq!(pg.get_keepalives_retries(), Some(tcp::KEEPALIVE_PROBES));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&tcp::USER_TIMEOUT));
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(5)));
        // A longer --pg-timeout-ms: the kernel never ends a write the flusher still waits for.
        let long = pg_config("postgres://u@h/db", Duration::from_secs(90)).unwrap();
        assert_eq!(long.get_tcp_user_timeout(), Some(&Duration::from_secs(90)));
    }

    #[test]
    fn the_url_s_own_tcp_settings_win() {
        let url = "postgres://u@h/db?keepalives_idle=60&keepalives_interval=7\
                   &keepalives_retries=9&tcp_user_timeout=120&connect_timeout=3";
        let pg = pg_config(url, Duration::from_secs(2)).unwrap();
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(pg.get_keepalives_interval(), Some(Duration::from_secs(7)));
        assert_eq!(pg.get_keepalives_retries(), Some(9));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(120)));
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
    }

    #[test]
    fn binary_copy_layout() {
        use event_model::queue::Text;
        use std::borrow::Cow;
        let e = EventView {
            time: PG_EPOCH_UNIX_MICROS + 1,
            event_id: uuid::Uuid::from_bytes([7; 16]),
            name: Text(Cow::Borrowed("n")),
            source: Text(Cow::Borrowed("s")),
            device_id: None,
            session_id: Some(Text(Cow::Borrowed("ab"))),
            user_id: None,
            properties: "{}",
            sent_at: None,
            received_at: PG_EPOCH_UNIX_MICROS - 1_000_000,
            device_time: Some(PG_EPOCH_UNIX_MICROS + 2),
        };
        let b = encode_binary(&[&e]);
        assert_eq!(&b[..11], b"PGCOPY\n\xff\r\n\0");
        assert_eq!(&b[11..19], &[0; 8]);
        assert_eq!(&b[19..21], &11i16.to_be_bytes(), "columns");
        assert_eq!(&b[21..25], &8i32.to_be_bytes());
        assert_eq!(
            &b[25..33],
            &1i64.to_be_bytes(),
            "1 µs after PostgreSQL's epoch"
        );
        assert_eq!(&b[33..37], &16i32.to_be_bytes());
        assert_eq!(&b[37..53], &[7; 16]);
        assert_eq!(&b[53..58], &[0, 0, 0, 1, b'n']);
        assert_eq!(&b[58..63], &[0, 0, 0, 1, b's']);
        assert_eq!(&b[63..67], &(-1i32).to_be_bytes(), "NULL device_id");
        assert_eq!(&b[67..73], &[0, 0, 0, 2, b'a', b'b']);
        assert_eq!(&b[73..77], &(-1i32).to_be_bytes());
        assert_eq!(
            &b[77..84],
            &[0, 0, 0, 3, 1, b'{', b'}'],
            "jsonb version byte"
        );
        assert_eq!(&b[84..88], &(-1i32).to_be_bytes(), "NULL sent_at");
        assert_eq!(&b[88..92], &8i32.to_be_bytes());
        assert_eq!(
            &b[92..100],
            &(-1_000_000i64).to_be_bytes(),
            "1 s before the epoch"
        );
        assert_eq!(&b[100..104], &8i32.to_be_bytes());
        assert_eq!(&b[104..112], &2i64.to_be_bytes(), "device_time, last");
        assert_eq!(&b[112..], &(-1i16).to_be_bytes(), "trailer");
    }
}
