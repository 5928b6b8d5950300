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
# The C++ SDK's Windows cross-build (sdk/cpp/cmake/mingw-w64-x86_64.cmake): the target's third-party
# libraries (built by scripts/mingw-deps), and the Wine loader and prefix that run the target's programs.
ET_MINGW_PREFIX=${ET_MINGW_PREFIX:-$ET_DATA/mingw-x86_64}
ET_WINE=${ET_WINE:-/usr/lib/wine/wine64}
ET_WINEPREFIX=${ET_WINEPREFIX:-$ET_DATA/wine}

# The private pair used by scripts/services and scripts/run.
ET_REDIS_PORT=${ET_REDIS_PORT:-16379}
ET_PG_PORT=${ET_PG_PORT:-15432}
ET_RUN_REDIS_URL="redis://127.0.0.1:$ET_REDIS_PORT/"
# The private 3-master Redis Cluster used by `scripts/services start --cluster` and `scripts/run --cluster`:
# ports BASE..BASE+2 (cluster bus on port+10000); the seed list is what --redis-url takes with --redis-cluster.
ET_REDIS_CLUSTER_PORT=${ET_REDIS_CLUSTER_PORT:-17000}
ET_RUN_REDIS_CLUSTER_URL="redis://127.0.0.1:$ET_REDIS_CLUSTER_PORT/,redis://127.0.0.1:$((ET_REDIS_CLUSTER_PORT + 1))/,redis://127.0.0.1:$((ET_REDIS_CLUSTER_PORT + 2))/"
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
# Gone, or a zombie: a daemonized server's parent is init, which here may reap late or never.
pid_gone() { ! kill -0 "$1" 2>/dev/null || [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" = Z ]; }

start_redis() { # NAME PORT [EXTRA redis-server ARGS...]
  local name=$1 port=$2 dir="$ET_DATA/redis-$1"; shift 2
  if redis_running "$name"; then echo "redis $name already running on :$port"; return 0; fi
  ensure_data_dir; mkdir -p "$dir"
  # The config file first (redis-server reads it before the flags): tcp-keepalive, see the file.
  /usr/bin/redis-server "$ET_ROOT/scripts/conf/redis-network.conf" --port "$port" --bind 127.0.0.1 --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --appendonly yes --appendfsync always --maxmemory-policy noeviction --save "" "$@"
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

# ---- Redis Cluster (3 masters, no replicas) ----------------------------------
# Node PORT of cluster NAME lives in $ET_DATA/redis-NAME-PORT/ (nodes.conf + AOF), so a stopped
# cluster comes back as the same cluster.
redis_cluster_ports() { echo "$1" "$(($1 + 1))" "$(($1 + 2))"; } # BASEPORT
redis_cluster_urls() { # BASEPORT: the comma-separated seed list for --redis-url
  local p urls=()
  for p in $(redis_cluster_ports "$1"); do urls+=("redis://127.0.0.1:$p/"); done
  (IFS=,; echo "${urls[*]}")
}
redis_cluster_info() { redis-cli -p "$1" cluster info 2>/dev/null | tr -d '\r'; } # PORT
redis_cluster_field() { redis_cluster_info "$1" | sed -n "s/^$2://p"; } # PORT FIELD
redis_cluster_node_ok() { # PORT: the node sees all 3 nodes and every slot served
  local info; info=$(redis_cluster_info "$1")
  grep -qx 'cluster_state:ok' <<<"$info" && grep -qx 'cluster_known_nodes:3' <<<"$info"
}
redis_cluster_ok() { # BASEPORT
  local p
  for p in $(redis_cluster_ports "$1"); do redis_cluster_node_ok "$p" || return 1; done
}

start_redis_cluster() { # NAME BASEPORT
  local name=$1 base=$2 p ports=() nodes=()
  read -ra ports <<<"$(redis_cluster_ports "$base")"
  for p in "${ports[@]}"; do
    start_redis "$name-$p" "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-node-timeout 2000 --cluster-require-full-coverage no >/dev/null
    nodes+=("127.0.0.1:$p")
  done
  if [ "$(redis_cluster_field "$base" cluster_known_nodes)" != 3 ]; then
    # Only a set of fresh nodes (each alone, no slots) may be joined into a new cluster.
    for p in "${ports[@]}"; do
      if [ "$(redis_cluster_field "$p" cluster_known_nodes)" != 1 ] \
        || [ "$(redis_cluster_field "$p" cluster_slots_assigned)" != 0 ]; then
        die "redis cluster $name: node :$p is neither fresh nor part of a 3-node cluster" \
          "(stop_redis_cluster $name $base, then remove $ET_DATA/redis-$name-*)"
      fi
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null \
      || die "redis cluster $name: redis-cli --cluster create ${nodes[*]} failed"
    echo "redis cluster $name created"
  fi
  retry 300 redis_cluster_ok "$base" \
    || die "redis cluster $name on :${ports[0]}-${ports[2]} not ok after 30s (see $ET_DATA/redis-$name-*/redis.log)"
  echo "redis cluster $name running on :${ports[0]}-${ports[2]}"
}

stop_redis_cluster() { # NAME BASEPORT
  local name=$1 base=$2 p rc=0 any=""
  for p in $(redis_cluster_ports "$base"); do
    redis_running "$name-$p" || continue
    any=1
    stop_redis "$name-$p" "$p" >/dev/null || rc=1
  done
  if [ -z "$any" ]; then echo "redis cluster $name not running"; return 0; fi
  [ "$rc" -eq 0 ] || { echo "error: redis cluster $name did not stop" >&2; return 1; }
  echo "redis cluster $name on :$base-$((base + 2)) stopped"
}

# ---- PostgreSQL -------------------------------------------------------------
as_pg() { runuser -u postgres -- "$@"; }
pg_running() { as_pg "$ET_PG_BIN/pg_ctl" -D "$ET_DATA/pg-$1" status >/dev/null 2>&1; }

# pg_conf_opts FILE: `-c NAME=VALUE` for every setting of a postgresql.conf-style FILE (comments
# and blank lines skipped), for the server's command line.
pg_conf_opts() {
  sed -E -e 's/#.*//' -e '/^[[:space:]]*$/d' \
    -e 's/^[[:space:]]*([a-z_.]+)[[:space:]]*=[[:space:]]*([^[:space:]]+)[[:space:]]*$/-c \1=\2/' "$1" | tr '\n' ' '
}

# What a production install would set for a write-heavy load (deploy/README.md recommends the same):
# fewer checkpoints (max_wal_size, checkpoint_timeout), cheaper full-page images (wal_compression,
# lz4: PostgreSQL 15 built --with-lz4, as Debian's is), a larger WAL buffer. Durability is untouched:
# fsync, synchronous_commit and full_page_writes stay on. The TCP keepalives of
# scripts/conf/postgres-network.conf end the backends of clients that vanished in a minute.
start_pg() { # NAME PORT
  local name=$1 port=$2 dir="$ET_DATA/pg-$1" network
  network=$(pg_conf_opts "$ET_ROOT/scripts/conf/postgres-network.conf")
  ensure_data_dir; mkdir -p "$dir"; chown postgres: "$dir"; chmod 700 "$dir"
  if [ ! -f "$dir/PG_VERSION" ]; then
    as_pg "$ET_PG_BIN/initdb" -A trust -U postgres -E UTF8 --locale=C.UTF-8 --no-sync -D "$dir" >/dev/null
  fi
  if pg_running "$name"; then
    echo "postgres $name already running"
  else
    as_pg "$ET_PG_BIN/pg_ctl" -D "$dir" -l "$dir/postgres.log" -w -s start -o "-p $port -k $dir \
      -c listen_addresses=127.0.0.1 -c shared_preload_libraries=timescaledb \
      -c timescaledb.telemetry_level=off -c max_connections=300 \
      -c max_wal_size=4GB -c wal_compression=lz4 -c wal_buffers=16MB -c checkpoint_timeout=15min \
      $network" \
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
    || ! command -v tc >/dev/null || ! command -v ss >/dev/null || ! command -v sysctl >/dev/null \
    || [ ! -x "$ET_WINE" ] || [ ! -f "$ET_MINGW_PREFIX/.stamp" ] \
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
