#!/usr/bin/env bash
# Pinned CI tools, installed on demand and reused afterwards (a no-op takes well under a second):
#   cargo-deny        -> cargo's bin dir (cargo install --locked; ~2.5-5 min the first time on 2 cores)
#   @redocly/cli      -> .tools/node      (npm; needs Node >= 20.19, the machine has 20.x)
#   schemathesis,
#   detect-secrets    -> .tools/venv      (PyPI, one virtualenv)
# Commands are linked into .tools/bin, which goes first on PATH; the venv's python is not put on PATH.
#
# Usage (from any directory; paths are found from this file's location):
#   source scripts/lib/tools.sh && tools_install      # installs what is missing, exports PATH etc.
#   scripts/lib/tools.sh                              # same in a subshell (to pre-install)
# .tools/ must be ignored by git.

TOOLS_CARGO_DENY_VERSION=0.20.2
TOOLS_REDOCLY_VERSION=2.77.0
TOOLS_SCHEMATHESIS_VERSION=4.32.5
TOOLS_DETECT_SECRETS_VERSION=1.5.0

_tools_log() { printf 'tools: %s\n' "$*" >&2; }

_tools_cargo_deny() {
  local have cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
  # cargo install puts binaries here; make sure they are found even if PATH lacks it.
  case ":$PATH:" in
    *":$cargo_bin:"*) ;;
    *) export PATH="$PATH:$cargo_bin" ;;
  esac
  have=$(cargo-deny --version 2>/dev/null) || have=
  [[ $have == "cargo-deny $TOOLS_CARGO_DENY_VERSION" ]] && return 0
  _tools_log "installing cargo-deny $TOOLS_CARGO_DENY_VERSION (was: ${have:-none})"
  nice -n 10 cargo install --locked --quiet "cargo-deny@$TOOLS_CARGO_DENY_VERSION" || return 1
  have=$(cargo-deny --version 2>/dev/null) || have=
  [[ $have == "cargo-deny $TOOLS_CARGO_DENY_VERSION" ]] || {
    _tools_log "cargo-deny on PATH is '${have:-none}' after install; is cargo's bin dir on PATH?"
    return 1
  }
}

_tools_redocly() {
  local prefix=$TOOLS_DIR/node stamp=$TOOLS_DIR/node/.installed want="@redocly/cli@$TOOLS_REDOCLY_VERSION"
  if [[ -f $stamp && $(<"$stamp") == "$want" && -x $prefix/node_modules/.bin/redocly ]]; then
    return 0
  fi
  _tools_log "installing $want into $prefix"
  mkdir -p "$prefix" || return 1
  REDOCLY_TELEMETRY=off npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    --save-exact "$want" >&2 || return 1
  printf '%s\n' "$want" >"$stamp"
}

_tools_venv() {
  local venv=$TOOLS_DIR/venv stamp=$TOOLS_DIR/venv/.installed
  local want="schemathesis==$TOOLS_SCHEMATHESIS_VERSION detect-secrets==$TOOLS_DETECT_SECRETS_VERSION"
  if [[ -f $stamp && $(<"$stamp") == "$want" && -x $venv/bin/schemathesis && -x $venv/bin/detect-secrets ]]; then
    return 0
  fi
  _tools_log "installing $want into $venv"
  if [[ ! -x $venv/bin/python ]]; then
    python3 -m venv "$venv" || return 1
  fi
  # shellcheck disable=SC2086 # $want is a list of requirements
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $want >&2 || return 1
  printf '%s\n' "$want" >"$stamp"
}

_tools_link() {
  local bin=$TOOLS_DIR/bin
  mkdir -p "$bin" || return 1
  ln -sfn ../node/node_modules/.bin/redocly "$bin/redocly" &&
    ln -sfn ../venv/bin/schemathesis "$bin/schemathesis" &&
    ln -sfn ../venv/bin/st "$bin/st" &&
    ln -sfn ../venv/bin/detect-secrets "$bin/detect-secrets" &&
    ln -sfn ../venv/bin/detect-secrets-hook "$bin/detect-secrets-hook"
}

tools_install() {
  local repo_root
  # The repository is two levels above this file (scripts/lib/), wherever the caller's directory is.
  repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P) || return 1
  TOOLS_DIR=${TOOLS_DIR:-$repo_root/.tools}
  mkdir -p "$TOOLS_DIR" || return 1
  # One installer at a time (e.g. two scripts started together); fd 9 is closed again below.
  exec 9>"$TOOLS_DIR/.lock" && flock 9 || return 1
  local rc=0
  _tools_cargo_deny && _tools_redocly && _tools_venv && _tools_link || rc=1
  exec 9>&-
  ((rc == 0)) || return 1

  case ":$PATH:" in
    *":$TOOLS_DIR/bin:"*) ;;
    *) export PATH="$TOOLS_DIR/bin:$PATH" ;;
  esac
  export TOOLS_DIR
  export REDOCLY_TELEMETRY=off              # no usage reports
  export REDOCLY_SUPPRESS_UPDATE_NOTICE=true # no version look-up at start
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  tools_install
  printf 'cargo-deny %s, redocly %s, schemathesis %s, detect-secrets %s in %s\n' \
    "$TOOLS_CARGO_DENY_VERSION" "$TOOLS_REDOCLY_VERSION" "$TOOLS_SCHEMATHESIS_VERSION" \
    "$TOOLS_DETECT_SECRETS_VERSION" "$TOOLS_DIR"
fi
