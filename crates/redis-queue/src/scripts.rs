//! The Lua scripts, each a file of `src/lua/`, sent by SHA (`EVALSHA`) instead of whole on
//! every call, as Relay runs its scripts through `redis::Script`. A node that does not know a
//! script (restarted, `SCRIPT FLUSH`ed, a new cluster node) answers NOSCRIPT: the script is
//! loaded there and the call sent once more ([`query`]).

use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, FromRedisValue, Pipeline, RedisResult, Script, ServerErrorKind};

use crate::{QueueError, Shared};

/// Deletes, then acknowledges, entries of `KEYS[1]` for group `ARGV[1]`: IDs `ARGV[2..]`. `unpack`
/// takes at most a few thousand values, so IDs go in slices of 1,000 (straight from ARGV: no
/// table is built). Flagged `allow-oom`.
pub static ACK_DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/ack_delete.lua")));

/// Moves entry `ARGV[3]` of `KEYS[1]` to the dead-letter stream `KEYS[2]` (fields `ARGV[4..]` as
/// name/value pairs) only if it is still pending with consumer `ARGV[2]` of group `ARGV[1]`:
/// another flusher that claimed it in the meantime settles it instead, so an entry is
/// dead-lettered once whatever the timing. Returns 1 if it moved it, 0 if not. `allow-oom`.
pub static DEAD_LETTER: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/dead_letter.lua")));

/// Reads `INFO memory` on the node that holds `KEYS[1]`: `{used memory as maxmemory counts it,
/// maxmemory}`. Flagged `no-writes` and `allow-oom`, so it runs on a node out of memory too.
pub static MEMORY: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/memory.lua")));

/// GCRA on Redis's clock for the rate limit of key `KEYS[1]`: `ARGV[1]` the interval between
/// events in µs, `ARGV[2]` the burst, `ARGV[3]` the events asked for. Returns 0 when admitted (the
/// state advanced), else the µs to wait.
pub static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/gcra.lua")));

/// `EVALSHA <sha of script>`, to which the caller adds the key count, keys and arguments.
pub fn evalsha(script: &Script) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash());
    cmd
}

/// The same, as the next command of `pipe`.
pub fn pipe_evalsha<'p>(pipe: &'p mut Pipeline, script: &Script) -> &'p mut Pipeline {
    pipe.cmd("EVALSHA").arg(script.get_hash())
}

/// Sends `cmd` (an [`evalsha`] of `script`); on NOSCRIPT, loads `script` on that connection's
/// node and sends it once more. Within the shared timeout.
pub async fn query<T: FromRedisValue>(
    redis: &Shared,
    script: &Script,
    cmd: &Cmd,
) -> Result<T, QueueError> {
    redis
        .query(async |c| match cmd.query_async(c).await {
            Err(e) if is_noscript(&e) => {
                load(script, c).await?;
                cmd.query_async(c).await
            }
            other => other,
        })
        .await
}

/// The same for a pipeline holding [`pipe_evalsha`]s of `script`; it is sent whole once more,
/// so its commands must be harmless twice (reads, or scripts that do nothing the second time).
pub async fn query_pipe<T: FromRedisValue>(
    redis: &Shared,
    script: &Script,
    pipe: &Pipeline,
) -> Result<T, QueueError> {
    redis
        .query(async |c| match pipe.query_async(c).await {
            Err(e) if is_noscript(&e) => {
                load(script, c).await?;
                pipe.query_async(c).await
            }
            other => other,
        })
        .await
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// `SCRIPT LOAD` (on a cluster, redis-rs sends it to every primary).
async fn load<C: ConnectionLike + Send>(script: &Script, c: &mut C) -> RedisResult<()> {
    script.load_async(c).await.map(|_| ())
}
