#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the store tests and prints its URL on stdout
# (e.g. `export MIDEUM_TEST_PG_URL=$(bash scripts/pg-test-server.sh)`).
# Installs Debian's `postgresql` when no server binaries are found (needs root, as in CI).
# The cluster lives in a temp dir, owned by the `postgres` user, on PORT (default 55432),
# trusting local connections. The dir is printed on stderr, and written to the file named by
# $PG_TEST_DIR_FILE when that is set; `bash scripts/pg-test-server.sh stop DIR` stops the
# server and removes the dir.
set -euo pipefail
run_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
bindir=""
for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bindir="$d"; done
if [ "${1:-}" = stop ]; then
  dir="${2:?usage: pg-test-server.sh stop DIR}"
  case "$dir" in /tmp/mideum-pg.*) ;; *) echo "pg-test-server: not a test cluster: $dir" >&2; exit 1;; esac
  if [ -n "$bindir" ] && [ -f "$dir/data/postmaster.pid" ]; then
    run_pg "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  fi
  rm -rf "$dir"
  exit 0
fi
PORT="${1:-55432}"
if [ -z "$bindir" ]; then
  echo "pg-test-server: installing postgresql from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bindir="$d"; done
fi
[ -n "$bindir" ] || { echo "pg-test-server: no initdb found after install" >&2; exit 1; }
# Take the next free port when PORT is busy (e.g. a server left from an earlier run).
for _ in $(seq 1 50); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then PORT=$((PORT + 1)); else break; fi
done
dir="$(mktemp -d /tmp/mideum-pg.XXXXXX)"
[ -n "${PG_TEST_DIR_FILE:-}" ] && echo "$dir" > "$PG_TEST_DIR_FILE"
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
run_pg "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
run_pg "$bindir/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
  -o "-p $PORT -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
echo "pg-test-server: cluster in $dir/data, port $PORT" >&2
echo "postgres://postgres@127.0.0.1:$PORT/postgres"
