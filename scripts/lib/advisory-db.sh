#!/usr/bin/env bash
# Offline RustSec advisory database for `cargo deny --offline check`.
#
# cargo-deny reads the database from `<db-path>/advisory-db-3157b0e258782691` (the name is derived from the
# default database URL, so deny.toml must not set `db-urls`), and it must be a git repository whose HEAD is
# younger than `maximum-db-staleness` (90 days by default; the commit made here is dated now).
# This script copies the read-only snapshot from shared/advisory-db into such a repository under
# target/advisory-dbs, once: it is redone only when the snapshot's content changes.
#
# Usage (from any directory; paths are found from this file's location):
#   source scripts/lib/advisory-db.sh && advisory_db_prepare   # exports DENY_ADVISORY_DB_ROOT
#   scripts/lib/advisory-db.sh                                 # same, prints the root
# then: cargo deny --offline check      (deny.toml reads db-path from DENY_ADVISORY_DB_ROOT)
#
# Overrides: ADVISORY_DB_SNAPSHOT (default <repo>/../shared/advisory-db),
#            DENY_ADVISORY_DB_ROOT (default <repo>/target/advisory-dbs).

advisory_db_prepare() {
  local repo_root snapshot root db stamp_file stamp
  # The repository is two levels above this file (scripts/lib/), wherever the caller's directory is.
  repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P) || return 1
  snapshot=${ADVISORY_DB_SNAPSHOT:-$repo_root/../shared/advisory-db}
  root=${DENY_ADVISORY_DB_ROOT:-$repo_root/target/advisory-dbs}
  db=$root/advisory-db-3157b0e258782691
  stamp_file=$root/.snapshot-sha256

  if [[ ! -d $snapshot/crates ]]; then
    echo "advisory-db: no snapshot at $snapshot (set ADVISORY_DB_SNAPSHOT)" >&2
    return 1
  fi

  # Content hash of the snapshot, independent of where it lives (~0.1 s for ~1,200 files).
  stamp=$(cd "$snapshot" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)

  if [[ -f $stamp_file && $(<"$stamp_file") == "$stamp" ]] && git --git-dir="$db/.git" rev-parse -q --verify HEAD >/dev/null 2>&1; then
    export DENY_ADVISORY_DB_ROOT=$root
    return 0
  fi

  rm -rf "$db" "$stamp_file"
  mkdir -p "$db" || return 1
  cp -R "$snapshot"/. "$db"/ || return 1
  chmod -R u+w "$db"
  (
    cd "$db" &&
      git init -q -b main &&
      git add -A &&
      git -c user.name=advisory-db-snapshot -c user.email=advisory-db-snapshot@localhost \
        -c commit.gpgsign=false -c core.hooksPath=/dev/null \
        commit -q --no-verify -m "advisory-db snapshot $(head -c 200 SOURCE 2>/dev/null | grep -o 'commit [0-9a-f]*' | head -n 1)"
  ) || {
    echo "advisory-db: failed to create the git repository at $db" >&2
    return 1
  }
  printf '%s\n' "$stamp" >"$stamp_file"
  export DENY_ADVISORY_DB_ROOT=$root
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  advisory_db_prepare
  printf '%s\n' "$DENY_ADVISORY_DB_ROOT"
fi
