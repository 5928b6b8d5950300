//! The subcommands: which one runs ([`dispatch`]), and the one-shot ones — `migrate`,
//! `retention`, `dead-letters` — each connecting, doing its job and exiting.

use std::time::Duration;

use crate::config::{Cli, Command, DeadLetterCommand, GlobalArgs};
use crate::consumer::Consumer;
use crate::deadletters::{self, Selection};
use crate::error::FlusherError;
use crate::{migrate, retention, service};

/// Runs the subcommand `cli` names (`run` when none); `signal` stops `run`.
pub async fn dispatch(
    cli: Cli,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<(), FlusherError> {
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => service::run(cli.common, cli.run, signal).await,
        Command::Migrate => apply_migrations(&cli.common).await,
        Command::Retention => drop_old_chunks_once(&cli.common).await,
        Command::DeadLetters(command) => dead_letters(&cli.common, command).await,
    }
}

/// A PostgreSQL client whose connection is driven on a task (ended when the client drops),
/// with the flusher's TCP keepalives ([`crate::sink::pg_config`]): a migration or a retention
/// run cut off by a silent partition fails in about 30 s instead of hanging for hours.
async fn connect_postgres(
    url: &str,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), FlusherError> {
    let config = crate::sink::pg_config(url, Duration::ZERO)?;
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::warn!("postgres connection: {e}");
        }
    });
    Ok((client, task))
}

/// `flusher migrate`: applies the migrations not applied yet.
pub async fn apply_migrations(common: &GlobalArgs) -> Result<(), FlusherError> {
    let (mut client, task) = connect_postgres(common.database_url.expose()).await?;
    let applied = migrate::apply(&mut client).await?;
    if applied.is_empty() {
        log::info!("schema is up to date");
    }
    if !migrate::events_is_hypertable(&client).await? {
        log::warn!("events is a plain table: TimescaleDB is not installed in this database");
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// `flusher retention`: drops old chunks once.
pub async fn drop_old_chunks_once(common: &GlobalArgs) -> Result<(), FlusherError> {
    let keep = common.retention.ok_or_else(|| {
        FlusherError::Usage("flusher retention needs --retention (e.g. 30d)".into())
    })?;
    let (redis, check) = crate::consumer::connect(common, Duration::from_secs(10), false)?;
    retention::record(&redis, check.layout(), keep).await;
    let (client, _task) = connect_postgres(common.database_url.expose()).await?;
    let dropped = retention::drop_old_chunks(&client, keep).await?;
    println!("dropped {} chunks", dropped.unwrap_or(0));
    Ok(())
}

/// `flusher dead-letters …`; prints what it did.
pub async fn dead_letters(
    common: &GlobalArgs,
    command: DeadLetterCommand,
) -> Result<(), FlusherError> {
    // The CLI verifies the shard count but records none: listing must not create a layout.
    let (redis, check) = crate::consumer::connect(common, Duration::from_secs(10), false)?;
    let consumer = Consumer::new(
        redis,
        check,
        &common.group,
        "dead-letters-cli",
        Duration::from_secs(1),
    );
    consumer.check_layout().await?;
    match command {
        DeadLetterCommand::List { count } => {
            let n = deadletters::list(&consumer, count).await?;
            log::info!("{n} dead letters listed");
        }
        DeadLetterCommand::Requeue { ids, all } => {
            let n = deadletters::requeue(&consumer, selection(ids, all)?).await?;
            println!("requeued {n} dead letters to {}", common.stream_key);
        }
        DeadLetterCommand::Purge { ids, all } => {
            let n = deadletters::purge(&consumer, selection(ids, all)?).await?;
            println!("purged {n} dead letters of {}", common.stream_key);
        }
    }
    Ok(())
}

/// The dead letters a `requeue` or `purge` names: `--all`, or IDs.
fn selection(ids: Vec<String>, all: bool) -> Result<Selection, FlusherError> {
    match (all, ids.is_empty()) {
        (true, _) => Ok(Selection::All),
        (false, false) => Ok(Selection::Ids(ids)),
        (false, true) => Err(FlusherError::Usage("give dead-letter IDs or --all".into())),
    }
}
