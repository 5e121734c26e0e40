#!/usr/bin/env bash
# Postgres for development and tests. Source this file, then call one of:
#   pg_local_url       -> prints a URL for the machine's Postgres on 127.0.0.1:5432 (user postgres),
#                         starting the Debian cluster if it is stopped; fails if there is none.
#   pg_private_url DIR -> creates (once) and starts a private cluster in DIR on a free loopback port,
#                         prints its URL. Needs only the PostgreSQL server binaries.
#   pg_private_stop DIR

_pg_bin() {
  local name=$1 dir
  for dir in /usr/lib/postgresql/*/bin; do
    if [[ -x $dir/$name ]]; then
      printf '%s\n' "$dir/$name"
      return 0
    fi
  done
  command -v "$name"
}

pg_local_url() {
  local url=postgres://postgres@127.0.0.1:5432/postgres
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    printf '%s\n' "$url"
    return 0
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]]; then
    local version
    for version in /etc/postgresql/*; do
      pg_ctlcluster --skip-systemctl-redirect "$(basename "$version")" main start >&2 || true
    done
    local _
    for _ in $(seq 1 100); do
      pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && { printf '%s\n' "$url"; return 0; }
      sleep 0.1
    done
  fi
  return 1
}

_pg_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Runs a command as the owner of the cluster (initdb and postgres refuse to run as root).
_pg_as_owner() {
  if [[ $(id -u) == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_private_url() {
  local dir=$1 data port initdb pgctl
  data=$dir/data
  initdb=$(_pg_bin initdb) || { echo "pg: initdb not found; install the PostgreSQL server binaries" >&2; return 1; }
  pgctl=$(_pg_bin pg_ctl) || return 1
  mkdir -p "$dir"
  if [[ $(id -u) == 0 ]]; then chown postgres:postgres "$dir"; fi
  if [[ ! -f $data/PG_VERSION ]]; then
    _pg_as_owner "$initdb" --no-sync -A trust -U postgres -D "$data" >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; return 1; }
  fi
  if [[ -f $dir/port ]] && pg_isready -q -h 127.0.0.1 -p "$(<"$dir/port")" 2>/dev/null; then
    printf 'postgres://postgres@127.0.0.1:%s/postgres\n' "$(<"$dir/port")"
    return 0
  fi
  port=$(_pg_free_port)
  _pg_as_owner "$pgctl" -D "$data" -l "$dir/postgres.log" -w \
    -o "-k $dir -c listen_addresses=127.0.0.1 -c port=$port -c fsync=off" start >&2 ||
    { cat "$dir/postgres.log" >&2; return 1; }
  printf '%s\n' "$port" >"$dir/port"
  printf 'postgres://postgres@127.0.0.1:%s/postgres\n' "$port"
}

pg_private_stop() {
  local dir=$1 pgctl
  pgctl=$(_pg_bin pg_ctl) || return 0
  [[ -f $dir/data/postmaster.pid ]] && _pg_as_owner "$pgctl" -D "$dir/data" -m fast stop >&2 || true
}
