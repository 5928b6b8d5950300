//! `flusher dead-letters list|requeue|purge`: lets a person look at the entries that could not be
//! stored and, once the cause is fixed, put them back on the queue.

use deadpool_redis::redis::{self, Value};
use serde_json::json;

use crate::FlusherError;
use crate::stream::{DL_AT, DL_CONSUMER, DL_ORIGINAL_ID, DL_REASON, DL_SQLSTATE, Entry, Stream};

/// Which dead letters a command applies to.
pub enum Selection {
    All,
    Ids(Vec<String>),
}

/// Prints up to `count` dead letters, oldest first, one JSON object a line.
pub async fn list(stream: &Stream, count: usize) -> Result<usize, FlusherError> {
    let entries = read(stream, count).await?;
    for e in &entries {
        let text = |f: &str| e.field(f).map(|v| String::from_utf8_lossy(v).into_owned());
        let event = e
            .field(event_model::queue::EVENT_FIELD)
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            .unwrap_or_else(|| json!(text(event_model::queue::EVENT_FIELD)));
        println!(
            "{}",
            json!({
                "id": e.id,
                "original_id": text(DL_ORIGINAL_ID),
                "reason": text(DL_REASON),
                "sqlstate": text(DL_SQLSTATE).filter(|s| !s.is_empty()),
                "at": text(DL_AT),
                "consumer": text(DL_CONSUMER),
                "version": text(event_model::queue::VERSION_FIELD),
                "event": event,
            })
        );
    }
    Ok(entries.len())
}

/// Moves dead letters back to the main stream (their original fields only), each in one
/// MULTI/EXEC with its removal from the dead-letter stream.
pub async fn requeue(stream: &Stream, which: Selection) -> Result<usize, FlusherError> {
    let entries = select(stream, which).await?;
    for e in &entries {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let cmd = pipe.cmd("XADD").arg(&stream.key).arg("*");
        for (k, v) in e.fields.iter().filter(|(k, _)| !k.starts_with(b"dl_")) {
            cmd.arg(k).arg(v);
        }
        cmd.ignore();
        pipe.cmd("XDEL").arg(&stream.dead_key).arg(&e.id).ignore();
        stream
            .query(async |c| pipe.query_async::<()>(c).await)
            .await?;
    }
    Ok(entries.len())
}

/// Deletes dead letters for good.
pub async fn purge(stream: &Stream, which: Selection) -> Result<usize, FlusherError> {
    let ids: Vec<String> = select(stream, which)
        .await?
        .into_iter()
        .map(|e| e.id)
        .collect();
    for chunk in ids.chunks(500) {
        let key = &stream.dead_key;
        stream
            .query(async |c| {
                redis::cmd("XDEL")
                    .arg(key)
                    .arg(chunk)
                    .query_async::<()>(c)
                    .await
            })
            .await?;
    }
    Ok(ids.len())
}

async fn select(stream: &Stream, which: Selection) -> Result<Vec<Entry>, FlusherError> {
    match which {
        Selection::All => read(stream, usize::MAX).await,
        Selection::Ids(ids) => {
            let mut out = Vec::new();
            for id in ids {
                let key = &stream.dead_key;
                let reply: Value = stream
                    .query(async |c| {
                        redis::cmd("XRANGE")
                            .arg(key)
                            .arg(&id)
                            .arg(&id)
                            .query_async(c)
                            .await
                    })
                    .await?;
                let found = crate::stream::parse_entries(reply);
                if found.is_empty() {
                    return Err(FlusherError::Config(format!("no dead letter with id {id}")));
                }
                out.extend(found);
            }
            Ok(out)
        }
    }
}

async fn read(stream: &Stream, count: usize) -> Result<Vec<Entry>, FlusherError> {
    let mut out = Vec::new();
    let mut start = "-".to_string();
    while out.len() < count {
        let key = &stream.dead_key;
        let page = (count - out.len()).min(500);
        let from = &start;
        let reply: Value = stream
            .query(async |c| {
                redis::cmd("XRANGE")
                    .arg(key)
                    .arg(from)
                    .arg("+")
                    .arg("COUNT")
                    .arg(page)
                    .query_async(c)
                    .await
            })
            .await?;
        let entries = crate::stream::parse_entries(reply);
        let Some(last) = entries.last() else { break };
        start = format!("({}", last.id);
        let done = entries.len() < page;
        out.extend(entries);
        if done {
            break;
        }
    }
    Ok(out)
}
