# Usage: source "$(dirname "$0")/lib.sh"   (shared helpers for scripts/*; not executable on its own)
# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this file

ET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# Private clusters run as the postgres user, which must be able to reach the data dir.
if runuser -u postgres -- test -x "$ET_ROOT" 2>/dev/null; then
  ET_DATA="$ET_ROOT/.data"
else
  ET_DATA="/tmp/eventtracker-$(basename "$ET_ROOT")-$(printf %s "$ET_ROOT" | sha256sum | cut -c1-8)"
fi
ET_PG_BIN=/usr/lib/postgresql/15/bin
export ET_ROOT ET_DATA
ET_TSDB_CONTROL=/usr/share/postgresql/15/extension/timescaledb.control

# The private pair used by scripts/services and scripts/run.
ET_REDIS_PORT=${ET_REDIS_PORT:-16379}
ET_PG_PORT=${ET_PG_PORT:-15432}
ET_RUN_REDIS_URL="redis://127.0.0.1:$ET_REDIS_PORT/"
ET_RUN_DATABASE_URL="postgres://postgres@127.0.0.1:$ET_PG_PORT/eventtracker"

die() { echo "error: $*" >&2; exit 1; }

# retry N CMD...: run CMD every 0.1s until it succeeds, at most N times.
retry() {
  local n=$1 i; shift
  for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

ensure_data_dir() { mkdir -p "$ET_DATA"; chmod 755 "$ET_DATA"; }

# ---- Redis ------------------------------------------------------------------
redis_pid() { cat "$ET_DATA/redis-$1/redis.pid" 2>/dev/null; }
redis_running() { local pid; pid=$(redis_pid "$1") && kill -0 "$pid" 2>/dev/null; }
redis_pong() { [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ]; }
pid_gone() { ! kill -0 "$1" 2>/dev/null; }

start_redis() { # NAME PORT
  local name=$1 port=$2 dir="$ET_DATA/redis-$1"
  if redis_running "$name"; then echo "redis $name already running on :$port"; return 0; fi
  ensure_data_dir; mkdir -p "$dir"
  /usr/bin/redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --appendonly yes --appendfsync always --maxmemory-policy noeviction --save ""
  retry 100 redis_pong "$port" || die "redis $name did not answer on :$port (see $dir/redis.log)"
  echo "redis $name running on :$port"
}

stop_redis() { # NAME PORT
  local name=$1 port=$2 pid
  if ! redis_running "$name"; then echo "redis $name not running"; return 0; fi
  pid=$(redis_pid "$name")
  kill "$pid"
  retry 100 pid_gone "$pid" || { echo "error: redis $name (pid $pid) did not stop" >&2; return 1; }
  echo "redis $name on :$port stopped"
}

# ---- PostgreSQL -------------------------------------------------------------
as_pg() { runuser -u postgres -- "$@"; }
pg_running() { as_pg "$ET_PG_BIN/pg_ctl" -D "$ET_DATA/pg-$1" status >/dev/null 2>&1; }

start_pg() { # NAME PORT
  local name=$1 port=$2 dir="$ET_DATA/pg-$1"
  ensure_data_dir; mkdir -p "$dir"; chown postgres: "$dir"; chmod 700 "$dir"
  if [ ! -f "$dir/PG_VERSION" ]; then
    as_pg "$ET_PG_BIN/initdb" -A trust -U postgres --no-sync -D "$dir" >/dev/null
  fi
  if pg_running "$name"; then
    echo "postgres $name already running"
  else
    as_pg "$ET_PG_BIN/pg_ctl" -D "$dir" -l "$dir/postgres.log" -w -s start -o "-p $port -k $dir \
      -c listen_addresses=127.0.0.1 -c shared_preload_libraries=timescaledb \
      -c timescaledb.telemetry_level=off -c max_connections=300" \
      || die "postgres $name failed to start (see $dir/postgres.log)"
    echo "postgres $name running on :$port"
  fi
  retry 100 "$ET_PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" || die "postgres $name not ready on :$port"
}

stop_pg() { # NAME PORT
  local name=$1 port=$2
  if ! pg_running "$name"; then echo "postgres $name not running"; return 0; fi
  as_pg "$ET_PG_BIN/pg_ctl" -D "$ET_DATA/pg-$name" -m fast -w -s stop
  echo "postgres $name on :$port stopped"
}

# True when scripts/setup still has something to install (it is idempotent either way).
needs_setup() {
  [ ! -f "$ET_TSDB_CONTROL" ] || [ ! -x /usr/bin/redis-server ] || [ ! -x "$ET_PG_BIN/initdb" ] \
    || [ ! -x /usr/bin/promtool ] || [ ! -x /usr/bin/docker-compose ] \
    || ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q 'install ok installed' \
    || ! cargo nextest --version >/dev/null 2>&1
}

# ---- Phase timing -----------------------------------------------------------
# phase NAME CMD...: run CMD and record how long it took. Under set -e a failing
# CMD exits the script; print_phase_summary (from the EXIT trap) then marks the
# unfinished phase as FAILED.
ET_PHASES=()
ET_PHASE=""
_phase_end() { # RC
  local took=$((SECONDS - ET_PHASE_START)) status=""
  [ "$1" -eq 0 ] || status="  FAILED (exit $1)"
  echo "==> $ET_PHASE took ${took}s$status"
  ET_PHASES+=("$(printf '%-10s %5ss%s' "$ET_PHASE" "$took" "$status")")
  ET_PHASE=""
}

phase() {
  local name=$1 rc; shift
  [ -z "$ET_PHASE" ] || _phase_end 1
  ET_PHASE=$name ET_PHASE_START=$SECONDS
  echo "==> $name"
  "$@"; rc=$?
  _phase_end "$rc"
  return "$rc"
}

print_phase_summary() { # [RC of the unfinished phase]
  [ -z "$ET_PHASE" ] || _phase_end "${1:-1}"
  [ ${#ET_PHASES[@]} -gt 0 ] || return 0
  echo "==> phase summary (total ${SECONDS}s)"
  printf '    %s\n' "${ET_PHASES[@]}"
}
