#!/usr/bin/env bash
# SaltStack side of the fan-out benchmark: one salt-master and N salt-minions on 127.0.0.1,
# then `salt '*' test.ping` timed R times. See bench/salt/README.md.
#
# Usage: bench/salt/run.sh [--minions N] [--runs R] [--workdir DIR] [--timeout T]
#                          [--batch B] [--multiprocessing true|false] [--worker-threads W]
#                          [--publish-port P] [--ret-port P] [--ready-deadline S]
#                          [--mem-budget-mib M] [--mem-floor-mib M] [--minion-nice 0..19]
#                          [--json-out FILE]
# Every option also reads an environment variable (SALT_BENCH_MINIONS, SALT_BENCH_RUNS,
# SALT_BENCH_DIR, SALT_BENCH_TIMEOUT, SALT_BENCH_BATCH, SALT_BENCH_MULTIPROCESSING,
# SALT_BENCH_WORKER_THREADS, SALT_BENCH_PUBLISH_PORT, SALT_BENCH_RET_PORT,
# SALT_BENCH_READY_DEADLINE, SALT_BENCH_MEM_BUDGET_MIB, SALT_BENCH_MEM_FLOOR_MIB,
# SALT_BENCH_MINION_NICE, SALT_BENCH_JSON_OUT). Progress and the human summary go to stderr;
# the last stdout line is the JSON summary.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

N=${SALT_BENCH_MINIONS:-100}
R=${SALT_BENCH_RUNS:-5}
WORK=${SALT_BENCH_DIR:-/tmp/moltops-salt-bench}
T=${SALT_BENCH_TIMEOUT:-120}
BATCH=${SALT_BENCH_BATCH:-25}
MULTIPROC=${SALT_BENCH_MULTIPROCESSING:-false}
WORKERS=${SALT_BENCH_WORKER_THREADS:-4}
PUB_PORT=${SALT_BENCH_PUBLISH_PORT:-14505}
RET_PORT=${SALT_BENCH_RET_PORT:-14506}
READY_DEADLINE=${SALT_BENCH_READY_DEADLINE:-900}   # s, from first minion start to all answering
MEM_BUDGET_MIB=${SALT_BENCH_MEM_BUDGET_MIB:-12288}  # abort before our total PSS would exceed it
MEM_FLOOR_MIB=${SALT_BENCH_MEM_FLOOR_MIB:-4096}     # abort if the machine's MemAvailable drops below
JSON_OUT=${SALT_BENCH_JSON_OUT:-}
MINION_NICE=${SALT_BENCH_MINION_NICE:-10}          # minions share 2 cores with the master: see README
MASTER_DEADLINE=120   # s for the master to listen
BATCH_DEADLINE=300    # s for one batch of minions to get its keys accepted
STOP_DEADLINE=90      # s for every process to exit after SIGTERM, then SIGKILL
POLL_TIMEOUT=60       # salt -t of each readiness poll
POLL_PAUSE=10         # s between readiness polls (each poll is itself a fan-out that loads the fleet)

die() { echo "salt-bench: ERROR: $*" >&2; exit 1; }
log() { echo "salt-bench: $(date +%H:%M:%S) $*" >&2; }
is_running() {   # pid exists and is not a zombie
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    [ "${s%% *}" != Z ]
}

while [ $# -gt 0 ]; do
    case "$1" in
        --minions) N=$2; shift 2 ;;
        --runs) R=$2; shift 2 ;;
        --workdir) WORK=$2; shift 2 ;;
        --timeout) T=$2; shift 2 ;;
        --batch) BATCH=$2; shift 2 ;;
        --multiprocessing) MULTIPROC=$2; shift 2 ;;
        --worker-threads) WORKERS=$2; shift 2 ;;
        --publish-port) PUB_PORT=$2; shift 2 ;;
        --ret-port) RET_PORT=$2; shift 2 ;;
        --ready-deadline) READY_DEADLINE=$2; shift 2 ;;
        --mem-budget-mib) MEM_BUDGET_MIB=$2; shift 2 ;;
        --mem-floor-mib) MEM_FLOOR_MIB=$2; shift 2 ;;
        --json-out) JSON_OUT=$2; shift 2 ;;
        --minion-nice) MINION_NICE=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
for v in N R T BATCH WORKERS PUB_PORT RET_PORT READY_DEADLINE MEM_BUDGET_MIB MEM_FLOOR_MIB MINION_NICE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
[ "$N" -ge 1 ] && [ "$N" -le 99999 ] || die "--minions must be 1..99999"
[ "$R" -ge 1 ] || die "--runs must be >= 1"
[ "$MINION_NICE" -le 19 ] || die "--minion-nice must be 0..19"
case "$MULTIPROC" in true|false) ;; *) die "--multiprocessing must be true or false" ;; esac

HELPER="python3 $HERE/helper.py"
VENV=$WORK/venv
RUN=$WORK/run                 # wiped on every invocation
MDIR=$RUN/master
PGIDS=$RUN/minion-pgids       # one process-group id per started minion
mkdir -p "$WORK"
exec 9> "$WORK/.lock"
flock -n 9 || die "another run.sh is using $WORK (lock $WORK/.lock)"
rm -f "$PGIDS"                # a previous run's ids: never signal them (pids get reused)

# ---------------------------------------------------------------- cleanup (always)
MASTER_PGID=""
cleanup() {
    local rc=$?
    set +e
    trap - INT TERM
    local groups=()
    [ -f "$PGIDS" ] && mapfile -t groups < "$PGIDS"
    [ -n "$MASTER_PGID" ] && groups+=("$MASTER_PGID")
    if [ ${#groups[@]} -gt 0 ]; then
        log "stopping ${#groups[@]} process groups (SIGTERM, up to ${STOP_DEADLINE}s, then SIGKILL)"
        for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done
        local end=$((SECONDS + STOP_DEADLINE)) alive
        while :; do
            alive=$($HELPER alive "$PGIDS" "${MASTER_PGID:-0}")
            [ "$alive" = 0 ] && break
            [ $SECONDS -ge $end ] && break
            sleep 1
        done
        if [ "$alive" != 0 ]; then
            log "$alive processes still running ${STOP_DEADLINE}s after SIGTERM: SIGKILL"
            for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
            sleep 1
            alive=$($HELPER alive "$PGIDS" "${MASTER_PGID:-0}")
        fi
        log "stopped (processes left in our groups: $alive)"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- venv with pinned salt
want=$(sed -n 's/^salt==\([^ ]*\).*/\1/p' "$HERE/requirements.txt")
[ -n "$want" ] || die "requirements.txt has no salt==VERSION pin"
have=""
[ -x "$VENV/bin/salt" ] && have=$("$VENV/bin/python" -c 'import salt.version; print(salt.version.__version__)' 2>/dev/null || true)
if [ "$have" != "$want" ]; then
    log "creating venv $VENV with salt==$want (pip, as configured on this machine)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        -r "$HERE/requirements.txt" -c "$HERE/constraints.txt" >&2
    have=$("$VENV/bin/python" -c 'import salt.version; print(salt.version.__version__)')
    [ "$have" = "$want" ] || die "installed salt $have, wanted $want"
else
    log "reusing venv $VENV (salt $have)"
fi
SALT_VERSION=$have
PY_VERSION=$("$VENV/bin/python" -c 'import platform; print(platform.python_version())')

# ---------------------------------------------------------------- preflight
for p in "$PUB_PORT" "$RET_PORT"; do
    if ss -Hltn "sport = :$p" | grep -q .; then die "port $p on this host is already in use; pick another with --publish-port/--ret-port"; fi
done
nofile=$(ulimit -n)
# each minion holds a few sockets to the master; the master needs ~2 per minion plus its own
[ "$nofile" -ge $((N * 3 + 1000)) ] || log "WARNING: ulimit -n is $nofile, may be short for N=$N"
rm -rf "$RUN"
mkdir -p "$MDIR" "$RUN/m"
: > "$PGIDS"
START_MEMAVAIL=$($HELPER memavail)
START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
log "N=$N R=$R timeout=${T}s batch=$BATCH multiprocessing=$MULTIPROC workers=$WORKERS minion-nice=$MINION_NICE ports=$PUB_PORT/$RET_PORT"
log "MemAvailable ${START_MEMAVAIL} MiB, loadavg $START_LOAD, salt $SALT_VERSION, python $PY_VERSION"

# ---------------------------------------------------------------- master
cat > "$MDIR/master" <<EOF
# generated by bench/salt/run.sh
interface: 127.0.0.1
ipv6: False
publish_port: $PUB_PORT
ret_port: $RET_PORT
user: root
root_dir: $MDIR
pki_dir: $MDIR/pki
cachedir: $MDIR/cache
sock_dir: $MDIR/sock
pidfile: $MDIR/master.pid
log_file: $MDIR/master.log
key_logfile: $MDIR/key.log
log_level: warning
log_level_logfile: warning
auto_accept: True
worker_threads: $WORKERS
max_open_files: $nofile
EOF
setsid "$VENV/bin/salt-master" -c "$MDIR" > "$MDIR/stdout.log" 2>&1 < /dev/null &
MASTER_PGID=$!
log "salt-master started (pid/pgid $MASTER_PGID); waiting for ports $PUB_PORT and $RET_PORT"
end=$((SECONDS + MASTER_DEADLINE))
until ss -Hltn "sport = :$RET_PORT" | grep -q . && ss -Hltn "sport = :$PUB_PORT" | grep -q .; do
    is_running "$MASTER_PGID" || { tail -n 30 "$MDIR/stdout.log" "$MDIR/master.log" >&2 || true; die "salt-master exited during start-up"; }
    [ $SECONDS -lt $end ] || die "salt-master not listening after ${MASTER_DEADLINE}s (see $MDIR/master.log)"
    sleep 0.5
done
log "salt-master listening"

SALT=("$VENV/bin/salt" -c "$MDIR")
# every CLI call also has a hard bound (salt's own -t can be extended by its find_job checks)
poll_cmd=(timeout -k 10 $((POLL_TIMEOUT * 3)) "${SALT[@]}")
run_cmd=(timeout -k 10 $((T * 3)) "${SALT[@]}")

# ---------------------------------------------------------------- minions
mid() { printf 'bench-minion-%05d' "$1"; }
for i in $(seq 1 "$N"); do
    d=$RUN/m/$(printf '%05d' "$i")   # short path: ZeroMQ ipc socket paths must stay < 108 bytes
    mkdir -p "$d"
    cat > "$d/minion" <<EOF
# generated by bench/salt/run.sh
id: $(mid "$i")
master: 127.0.0.1
master_port: $RET_PORT
publish_port: $PUB_PORT
ipv6: False
user: root
root_dir: $d
pki_dir: $d/pki
cachedir: $d/cache
sock_dir: $d/sock
pidfile: $d/minion.pid
log_file: $d/minion.log
log_level: warning
log_level_logfile: warning
multiprocessing: $MULTIPROC
enable_fqdns_grains: False
enable_gpu_grains: False
metadata_server_grains: False
EOF
done

accepted() { find "$MDIR/pki/minions" -maxdepth 1 -type f 2>/dev/null | wc -l; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{(float(sys.argv[2]) - float(sys.argv[1])):.3f}')" "$1" "$2"; }
PEAK_PSS=0
sample_mem() {   # sets MEM_JSON, updates PEAK_PSS; returns total PSS in KiB in TOTAL_PSS
    MEM_JSON=$($HELPER mem "$PGIDS" "$MASTER_PGID")
    TOTAL_PSS=$(python3 -c 'import json,sys; m=json.loads(sys.argv[1]); print(m["master"]["pss_kib"]+m["minions"]["pss_kib"])' "$MEM_JSON")
    [ "$TOTAL_PSS" -gt "$PEAK_PSS" ] && PEAK_PSS=$TOTAL_PSS
    return 0
}
check_minions_alive() {
    local i=0 g
    while read -r g; do
        i=$((i + 1))
        if ! is_running "$g"; then
            local d=$RUN/m/$(printf '%05d' "$i")
            tail -n 20 "$d/stdout.log" "$d/minion.log" >&2 2>/dev/null || true
            die "minion $(mid "$i") (pid $g) exited; its files are in $d"
        fi
    done < "$PGIDS"
}

T_START=$(now)
START_SEC=$SECONDS
launched=0
while [ "$launched" -lt "$N" ]; do
    if [ "$launched" -gt 0 ]; then
        sample_mem
        per=$(python3 -c 'import json,sys; m=json.loads(sys.argv[1]); print(max(1, m["minions"]["pss_kib"] // max(1, m["minions"]["groups_alive"])))' "$MEM_JSON")
        next=$(( N - launched < BATCH ? N - launched : BATCH ))
        projected=$(( (TOTAL_PSS + per * next) / 1024 ))
        [ "$projected" -le "$MEM_BUDGET_MIB" ] || die "memory budget: $launched minions + master use $((TOTAL_PSS / 1024)) MiB PSS (~$((per / 1024)) MiB per minion); $next more would reach ~$projected MiB > --mem-budget-mib $MEM_BUDGET_MIB"
        avail=$($HELPER memavail)
        [ "$avail" -ge "$MEM_FLOOR_MIB" ] || die "machine MemAvailable is $avail MiB < --mem-floor-mib $MEM_FLOOR_MIB after $launched minions"
    fi
    upto=$(( launched + BATCH < N ? launched + BATCH : N ))
    for i in $(seq $((launched + 1)) "$upto"); do
        d=$RUN/m/$(printf '%05d' "$i")
        # --disable-keepalive: run the minion in this process instead of a supervisor parent
        # plus a forked child (halves the process count, saves ~26 MiB PSS per minion).
        # nice: in a real fleet each minion has its own host; here N minions share 2 cores with
        # the master, and at default priority their CPU starves the master's workers.
        nice -n "$MINION_NICE" setsid "$VENV/bin/salt-minion" -c "$d" --disable-keepalive \
            > "$d/stdout.log" 2>&1 < /dev/null &
        echo $! >> "$PGIDS"
    done
    launched=$upto
    end=$((SECONDS + BATCH_DEADLINE))
    while [ "$(accepted)" -lt "$launched" ]; do
        check_minions_alive
        [ $SECONDS -lt $end ] || die "only $(accepted)/$launched minion keys accepted after ${BATCH_DEADLINE}s for this batch"
        sleep 1
    done
    log "started $launched/$N minions, $(accepted) keys accepted ($(elapsed "$T_START" "$(now)") s)"
done
T_KEYS=$(now)

# readiness: every minion must answer test.ping (poll; each poll is bounded by salt -t)
end=$((START_SEC + READY_DEADLINE))
got=0
while :; do
    "${poll_cmd[@]}" '*' test.ping --timeout="$POLL_TIMEOUT" --out=json > "$RUN/ready.json" 2> "$RUN/ready.err" || true
    read -r got total < <($HELPER count "$RUN/ready.json")
    [ "$got" -eq "$N" ] && break
    check_minions_alive
    log "readiness: $got/$N minions answered test.ping"
    [ $SECONDS -lt $end ] || die "only $got/$N minions answered test.ping within --ready-deadline ${READY_DEADLINE}s of the first minion start (see $RUN/ready.json)"
    sleep "$POLL_PAUSE"
done
T_READY=$(now)
KEYS_S=$(elapsed "$T_START" "$T_KEYS")
STARTUP_S=$(elapsed "$T_START" "$T_READY")
log "all $N minions answer test.ping, ${STARTUP_S}s after the first minion start"
sample_mem

# ---------------------------------------------------------------- measurement
# Plain `salt '*' test.ping --out=json`, no --static: in salt 3008 --static goes through the CLI's
# batch path (salt/cli/salt.py), which first pings every target to discover it and then publishes
# the job again as a 100% batch, i.e. two test.ping fan-outs per command.
jobs_in_cache() { find "$MDIR/cache/jobs" -mindepth 3 -maxdepth 3 -name jid 2>/dev/null | wc -l; }
log "warm-up run (not counted)"
"${run_cmd[@]}" '*' test.ping --timeout="$T" --out=json > "$RUN/warmup.json" 2>&1 || true
WALLS=(); COUNTS=(); CLI_CPU=(); M_CPU=(); N_CPU=(); LOAD1=(); JOBS=()
for r in $(seq 1 "$R"); do
    LOAD1+=("$(cut -d' ' -f1 /proc/loadavg)")
    j0=$(jobs_in_cache)
    read -r mc0 nc0 < <($HELPER cpu "$PGIDS" "$MASTER_PGID")
    read -r ms cli_cpu rc < <($HELPER timeit "$RUN/run-$r.json" "$RUN/run-$r.err" -- \
        "${run_cmd[@]}" '*' test.ping --timeout="$T" --out=json)
    read -r mc1 nc1 < <($HELPER cpu "$PGIDS" "$MASTER_PGID")
    jobs=$(( $(jobs_in_cache) - j0 ))
    read -r got total < <($HELPER count "$RUN/run-$r.json")
    [ "$got" -eq "$N" ] || log "WARNING: run $r: only $got/$N minions returned True (salt exit $rc, see $RUN/run-$r.json)"
    log "run $r/$R: ${ms} ms wall, $got/$N returned True, $jobs job(s) published; CPU ms: cli $cli_cpu, master $((mc1 - mc0)), minions $((nc1 - nc0))"
    WALLS+=("$ms"); COUNTS+=("$got"); CLI_CPU+=("$cli_cpu"); M_CPU+=("$((mc1 - mc0))"); N_CPU+=("$((nc1 - nc0))"); JOBS+=("$jobs")
done
# background CPU of the idle fleet (no job running), to read the per-run CPU figures against
IDLE_S=10
read -r mc0 nc0 < <($HELPER cpu "$PGIDS" "$MASTER_PGID")
sleep "$IDLE_S"
read -r mc1 nc1 < <($HELPER cpu "$PGIDS" "$MASTER_PGID")
IDLE_MASTER=$(( (mc1 - mc0) / IDLE_S )); IDLE_MINIONS=$(( (nc1 - nc0) / IDLE_S ))
log "idle: master ${IDLE_MASTER} CPU ms/s, all minions ${IDLE_MINIONS} CPU ms/s"
# the salt CLI's own cost: same command, a target that matches no minion
NOOPS=()
for r in $(seq 1 "$R"); do
    read -r ms _ _ < <($HELPER timeit /dev/null /dev/null -- "${run_cmd[@]}" 'no-such-minion-*' test.ping --timeout="$T" --out=json)
    NOOPS+=("$ms")
done
sample_mem

# ---------------------------------------------------------------- summary
join() { local IFS=,; echo "$*"; }
STATE=$RUN/state.json
cat > "$STATE" <<EOF
{"date": "$(date -u +%F)", "salt_version": "$SALT_VERSION", "python_version": "$PY_VERSION",
 "host": {"cores": $(nproc), "mem_total_mib": $(( $(awk '/^MemTotal:/{print $2}' /proc/meminfo) / 1024 ))},
 "config": {"multiprocessing": $MULTIPROC, "worker_threads": $WORKERS, "keepalive": false,
            "start_batch": $BATCH, "minion_nice": $MINION_NICE, "publish_port": $PUB_PORT, "ret_port": $RET_PORT},
 "minions": $N, "timeout_s": $T,
 "wall_ms": [$(join "${WALLS[@]}")], "returned": [$(join "${COUNTS[@]}")],
 "noop_ms": [$(join "${NOOPS[@]}")],
 "cli_cpu_ms": [$(join "${CLI_CPU[@]}")], "master_cpu_ms": [$(join "${M_CPU[@]}")],
 "minions_cpu_ms": [$(join "${N_CPU[@]}")], "jobs_per_run": [$(join "${JOBS[@]}")],
 "idle_cpu_ms_per_s": {"master": $IDLE_MASTER, "minions": $IDLE_MINIONS}, "load1": [$(join "${LOAD1[@]}")],
 "startup_s": $STARTUP_S, "keys_s": $KEYS_S,
 "mem": $MEM_JSON, "peak_pss_kib": $PEAK_PSS,
 "mem_available_mib_at_start": $START_MEMAVAIL, "loadavg_at_start": "$START_LOAD"}
EOF
SUMMARY=$($HELPER summary "$STATE")
if [ -n "$JSON_OUT" ]; then
    mkdir -p "$(dirname "$JSON_OUT")"
    echo "$SUMMARY" > "$JSON_OUT"
fi
echo "$SUMMARY"
all_ok=1
for c in "${COUNTS[@]}"; do [ "$c" -eq "$N" ] || all_ok=0; done
[ $all_ok -eq 1 ] || die "not every minion returned in every run (see above)"
