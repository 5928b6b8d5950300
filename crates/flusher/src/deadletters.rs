//! `flusher dead-letters list|requeue|purge`: lets a person look at the entries that could not be
//! stored and, once the cause is fixed, put them back on the queue. With several shards every
//! shard has its own dead-letter stream; IDs are printed as `<shard>/<entry ID>` then, and a
//! dead letter is requeued to the shard it came from.

use redis_queue::redis::{self, Value};
use serde_json::json;

use crate::FlusherError;
use crate::consumer::{
    Consumer, DL_AT, DL_CONSUMER, DL_ORIGINAL_ID, DL_REASON, DL_SQLSTATE, Entry,
};

/// Which dead letters a command applies to.
pub enum Selection {
    All,
    Ids(Vec<String>),
}

/// A dead letter and the shard whose dead-letter stream holds it.
struct DeadLetterEntry {
    shard: usize,
    entry: Entry,
}

impl DeadLetterEntry {
    /// The ID as printed and as accepted back: the entry ID, prefixed by the shard when there
    /// are several.
    fn id(&self, stream: &Consumer) -> String {
        if stream.shards() > 1 {
            format!("{}/{}", self.shard, self.entry.id)
        } else {
            self.entry.id.clone()
        }
    }
}

/// Prints up to `count` dead letters, oldest first (per shard), one JSON object a line.
pub async fn list(stream: &Consumer, count: usize) -> Result<usize, FlusherError> {
    let entries = read_all(stream, count).await?;
    for d in &entries {
        let e = &d.entry;
        let text = |f: &str| e.field(f).map(|v| String::from_utf8_lossy(v).into_owned());
        let event = e
            .field(event_model::queue::EVENT_FIELD)
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            .unwrap_or_else(|| json!(text(event_model::queue::EVENT_FIELD)));
        println!(
            "{}",
            json!({
                "id": d.id(stream),
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

/// Moves dead letters back to their shard's stream (their original fields only), each in one
/// MULTI/EXEC with its removal from the dead-letter stream (both keys share the shard's slot).
pub async fn requeue(stream: &Consumer, which: Selection) -> Result<usize, FlusherError> {
    let entries = select(stream, which).await?;
    for DeadLetterEntry { shard, entry: e } in &entries {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let originals = e
            .fields
            .iter()
            .filter(|(k, _)| !k.starts_with(b"dl_"))
            .map(|(k, v)| (k.as_ref(), v.as_ref()));
        redis_queue::append::add_fields(&mut pipe, &stream.key(*shard), originals);
        pipe.cmd("XDEL")
            .arg(stream.dead_key(*shard))
            .arg(&e.id)
            .ignore();
        stream
            .query(async |c| pipe.query_async::<()>(c).await)
            .await?;
    }
    Ok(entries.len())
}

/// Deletes dead letters for good. `--all` empties each shard's dead-letter stream with one
/// `XTRIM … MAXLEN 0`, which says how many it deleted: nothing is read into memory, however
/// many there are.
pub async fn purge(stream: &Consumer, which: Selection) -> Result<usize, FlusherError> {
    if let Selection::All = which {
        let mut purged = 0;
        for shard in 0..stream.shards() {
            let key = &stream.dead_key(shard);
            let n: usize = stream
                .query(async |c| {
                    redis::cmd("XTRIM")
                        .arg(key)
                        .arg("MAXLEN")
                        .arg(0)
                        .query_async(c)
                        .await
                })
                .await?;
            purged += n;
        }
        return Ok(purged);
    }
    let entries = select(stream, which).await?;
    for shard in 0..stream.shards() {
        let ids: Vec<&String> = entries
            .iter()
            .filter(|d| d.shard == shard)
            .map(|d| &d.entry.id)
            .collect();
        for chunk in ids.chunks(500) {
            let key = &stream.dead_key(shard);
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
    }
    Ok(entries.len())
}

async fn select(stream: &Consumer, which: Selection) -> Result<Vec<DeadLetterEntry>, FlusherError> {
    match which {
        Selection::All => read_all(stream, usize::MAX).await,
        Selection::Ids(ids) => {
            let mut out = Vec::new();
            for given in ids {
                let (shard, id) = match given.split_once('/') {
                    Some((s, id)) => match s.parse::<usize>() {
                        Ok(s) if s < stream.shards() => (s, id.to_string()),
                        _ => {
                            return Err(FlusherError::Config(format!(
                                "no shard {s:?} (there are {})",
                                stream.shards()
                            )));
                        }
                    },
                    None if stream.shards() == 1 => (0, given.clone()),
                    None => {
                        return Err(FlusherError::Config(format!(
                            "give dead-letter IDs as printed by `list`: <shard>/{given}"
                        )));
                    }
                };
                let key = &stream.dead_key(shard);
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
                let found = crate::consumer::parse_entries(reply);
                if found.is_empty() {
                    return Err(FlusherError::Config(format!(
                        "no dead letter with id {given}"
                    )));
                }
                out.extend(
                    found
                        .into_iter()
                        .map(|entry| DeadLetterEntry { shard, entry }),
                );
            }
            Ok(out)
        }
    }
}

/// Up to `count` dead letters, shard by shard.
async fn read_all(stream: &Consumer, count: usize) -> Result<Vec<DeadLetterEntry>, FlusherError> {
    let mut out = Vec::new();
    for shard in 0..stream.shards() {
        if out.len() >= count {
            break;
        }
        let entries = read(stream, shard, count - out.len()).await?;
        out.extend(
            entries
                .into_iter()
                .map(|entry| DeadLetterEntry { shard, entry }),
        );
    }
    Ok(out)
}

async fn read(stream: &Consumer, shard: usize, count: usize) -> Result<Vec<Entry>, FlusherError> {
    let mut out = Vec::new();
    let mut start = "-".to_string();
    while out.len() < count {
        let key = &stream.dead_key(shard);
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
        let entries = crate::consumer::parse_entries(reply);
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
