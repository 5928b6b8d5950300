//! Settling entries a consumer read: acknowledging and deleting those whose rows are stored,
//! moving those that can never be stored to the dead-letter stream.
//!
//! Both run as Lua scripts flagged `allow-oom`: a Redis at `maxmemory` refuses every command
//! queued in a MULTI/EXEC, and the queue could then never shrink. Each script is atomic, as the
//! transaction was: an entry is never acknowledged while it stays in the stream (it would never
//! be delivered again and would hold the lag up forever) nor deleted while it stays pending.

use redis::Cmd;

use crate::{QueueError, Shared};

/// Deletes, then acknowledges, entries of KEYS[1] for group ARGV[1]: IDs ARGV[2..]. `unpack`
/// takes at most a few thousand values, so IDs go in slices of 1,000 (straight from ARGV: no
/// table is built).
const ACK_DELETE_LUA: &str = r#"#!lua flags=allow-oom
local n = 0
for i = 2, #ARGV, 1000 do
  local j = math.min(i + 999, #ARGV)
  redis.call('XDEL', KEYS[1], unpack(ARGV, i, j))
  n = n + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, j))
end
return n
"#;

/// Moves entry ARGV[3] of KEYS[1] to the dead-letter stream KEYS[2] (fields ARGV[4..] as
/// name/value pairs) only if it is still pending with consumer ARGV[2] of group ARGV[1]:
/// another flusher that claimed it in the meantime settles it instead, so an entry is
/// dead-lettered once whatever the timing. Returns 1 if it moved it, 0 if not.
const DEAD_LETTER_LUA: &str = r#"#!lua flags=allow-oom
local mine = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', 0, ARGV[3], ARGV[3], 1, ARGV[2])
if #mine == 0 then return 0 end
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

/// The command that acknowledges and deletes entries whose rows are committed, atomically,
/// also while Redis is out of memory; `None` for no IDs. Built apart from [`run`] so that the
/// IDs are copied once, into the command, and what sends it borrows none of them.
pub fn ack_delete<'i>(
    key: &str,
    group: &str,
    ids: impl IntoIterator<Item = &'i str>,
) -> Option<Cmd> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(ACK_DELETE_LUA).arg(1).arg(key).arg(group);
    let mut any = false;
    for id in ids {
        cmd.arg(id);
        any = true;
    }
    any.then_some(cmd)
}

/// Sends an [`ack_delete`] command: returns how many of its entries were still pending.
pub async fn run(redis: &Shared, cmd: &Cmd) -> Result<u64, QueueError> {
    redis.query(async |c| cmd.query_async(c).await).await
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
        let cmd = pipe
            .cmd("EVAL")
            .arg(DEAD_LETTER_LUA)
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
    let moved: Vec<u64> = redis.query(async |c| pipe.query_async(c).await).await?;
    Ok(moved.iter().sum())
}
