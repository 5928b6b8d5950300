//! Settling entries a consumer read: acknowledging and deleting those whose rows are stored,
//! moving those that can never be stored to the dead-letter stream.
//!
//! Both run as Lua scripts flagged `allow-oom`: a Redis at `maxmemory` refuses every command
//! queued in a MULTI/EXEC, and the queue could then never shrink. Each script is atomic, as the
//! transaction was: an entry is never acknowledged while it stays in the stream (it would never
//! be delivered again and would hold the lag up forever) nor deleted while it stays pending.

use redis::Cmd;

use crate::scripts::{self, ACK_DELETE, DEAD_LETTER};
use crate::{QueueError, Shared};

/// The command that acknowledges and deletes entries whose rows are committed, atomically,
/// also while Redis is out of memory; `None` for no IDs. Built apart from [`run`] so that the
/// IDs are copied once, into the command, and what sends it borrows none of them.
pub fn ack_delete<'i>(
    key: &str,
    group: &str,
    ids: impl IntoIterator<Item = &'i str>,
) -> Option<Cmd> {
    let mut cmd = scripts::evalsha(&ACK_DELETE);
    cmd.arg(1).arg(key).arg(group);
    let mut any = false;
    for id in ids {
        cmd.arg(id);
        any = true;
    }
    any.then_some(cmd)
}

/// Sends an [`ack_delete`] command: returns how many of its entries were still pending.
pub async fn run(redis: &Shared, cmd: &Cmd) -> Result<u64, QueueError> {
    scripts::query(redis, &ACK_DELETE, cmd).await
}

/// One entry for [`dead_letter`]: its ID and every field the dead-letter entry gets (the
/// original ones and the reasons).
pub struct DeadLetter<'a> {
    pub id: &'a str,
    pub fields: Vec<(&'a [u8], &'a [u8])>,
}

/// Moves entries still pending with `consumer` to `dead_key`, each atomically, in one round
/// trip, also while Redis is out of memory. Returns how many were moved (an entry another
/// consumer claimed meanwhile is left to it).
pub async fn dead_letter(
    redis: &Shared,
    key: &str,
    dead_key: &str,
    group: &str,
    consumer: &str,
    dead: &[DeadLetter<'_>],
) -> Result<u64, QueueError> {
    if dead.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    for d in dead {
        let cmd = scripts::pipe_evalsha(&mut pipe, &DEAD_LETTER)
            .arg(2)
            .arg(key)
            .arg(dead_key)
            .arg(group)
            .arg(consumer)
            .arg(d.id);
        for (k, v) in &d.fields {
            cmd.arg(*k).arg(*v);
        }
    }
    // Sent again after a NOSCRIPT: an entry moved the first time is no longer pending, and the
    // script leaves it.
    let moved: Vec<u64> = scripts::query_pipe(redis, &DEAD_LETTER, &pipe).await?;
    Ok(moved.iter().sum())
}
