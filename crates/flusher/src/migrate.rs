//! `flusher migrate`: applies `migrations/*.sql` in order, each once, recorded in
//! `schema_migrations`, under an advisory lock so that concurrent runs never overlap.

use tokio_postgres::Client;

use crate::FlusherError;

/// A migration compiled into the binary (containers need no files beside it).
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
    /// What it holds up on a populated table, said before it starts (with the table's size).
    pub blocks: Option<&'static str>,
}

/// Every migration, in order. A test checks this list matches the `migrations/` folder.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_events.sql",
        sql: include_str!("../../../migrations/0001_events.sql"),
        blocks: None,
    },
    Migration {
        version: 2,
        name: "0002_device_time.sql",
        sql: include_str!("../../../migrations/0002_device_time.sql"),
        blocks: None,
    },
    Migration {
        version: 3,
        name: "0003_index_order.sql",
        sql: include_str!("../../../migrations/0003_index_order.sql"),
        blocks: Some(
            "builds the unique index (time, event_id) on every chunk of events: writes to events \
             wait until it commits, reads only for its last step (the old indexes dropped); \
             flushers time out, back off and retry meanwhile, nothing is lost, and the queue \
             holds the backlog",
        ),
    },
];

/// Arbitrary constant naming EventTracker's migration lock.
const MIGRATION_LOCK: i64 = 0x4576_656e_7454_726b;

/// Applies what is missing; returns the versions applied by this run.
pub async fn apply(client: &mut Client) -> Result<Vec<i32>, FlusherError> {
    check_encoding(client).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = apply_missing(client).await;
    // The lock also ends with the session; unlocking early is a courtesy to waiting runs.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

/// ingest-api accepts any Unicode text (but NUL) and jsonb stores it only in a UTF8 database:
/// in another encoding rows it accepted would be refused and dead-lettered.
async fn check_encoding(client: &Client) -> Result<(), FlusherError> {
    let row = client
        .query_one(
            "SELECT pg_encoding_to_char(encoding), current_database() FROM pg_database \
             WHERE datname = current_database()",
            &[],
        )
        .await?;
    let (encoding, db): (String, String) = (row.get(0), row.get(1));
    if encoding != "UTF8" {
        return Err(FlusherError::Config(format!(
            "database {db:?} has encoding {encoding}: EventTracker needs UTF8 (create it with \
             CREATE DATABASE {db} ENCODING 'UTF8' TEMPLATE template0)"
        )));
    }
    Ok(())
}

async fn apply_missing(client: &mut Client) -> Result<Vec<i32>, FlusherError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let done: Vec<i32> = client
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        if let Some(what) = m.blocks {
            let rows = approximate_rows(client).await.unwrap_or(0);
            log::warn!(
                "migration {} {what}; events holds about {rows} rows (how long that takes: \
                 README, \"Upgrading\", measured by scripts/measure-schema)",
                m.name
            );
        }
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| FlusherError::Migration {
                name: m.name,
                source: e,
            })?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await?;
        tx.commit().await?;
        log::info!("applied migration {}", m.name);
        applied.push(m.version);
    }
    Ok(applied)
}

/// The rows of `events` as the statistics estimate them (every chunk), without counting.
async fn approximate_rows(client: &Client) -> Result<i64, FlusherError> {
    let sql = if events_is_hypertable(client).await? {
        "SELECT approximate_row_count('events')::bigint"
    } else {
        "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'events'::regclass"
    };
    Ok(client.query_one(sql, &[]).await?.get(0))
}

/// Whether `events` is a TimescaleDB hypertable (false when the extension is absent).
pub async fn events_is_hypertable(client: &Client) -> Result<bool, FlusherError> {
    let row = client
        .query_one(
            "SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL",
            &[],
        )
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(false);
    }
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                            WHERE hypertable_name = 'events' AND hypertable_schema = current_schema())",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_matches_the_folder() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, listed);
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version as usize,
                i + 1,
                "versions are 1, 2, 3, … in order"
            );
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }
}
