#!/usr/bin/env bash
# The same fan-out, side by side in one run: N SaltStack minions answering `salt '*' test.ping`
# (bench/salt/run.sh: one master, N minion processes on 127.0.0.1), then N moltops agents
# (moltops-bench, one process, against a control plane it starts on a fresh database) each
# running a Ping job, until every result is recorded. One after the other, so neither competes
# with the other for the machine. Prints both figures and their ratio, and writes them as JSON.
#
# Usage: bench/side-by-side.sh [N] [RUNS]     (default N=100, RUNS=5)
# Needs: release binaries (cargo build --release -p moltops-server -p moltops-bench), Postgres
# on 127.0.0.1:5432 (or MOLTOPS_BENCH_DATABASE_URL), pip's configured index for the salt venv.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
N=${1:-100}
RUNS=${2:-5}
out=${SIDE_BY_SIDE_DIR:-target/side-by-side}
mkdir -p "$out"
for bin in target/release/moltops-server target/release/moltops-bench; do
  [[ -x $bin ]] || { echo "side-by-side: $bin is missing: cargo build --release -p moltops-server -p moltops-bench" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "=== SaltStack: $N minions, salt '*' test.ping x $RUNS" >&2
bench/salt/run.sh --minions "$N" --runs "$RUNS" --json-out "$out/salt-$N.json" >/dev/null

echo "=== moltops: $N agents, a Ping job on each x $RUNS" >&2
fanouts=$(printf 'ping%.0s,' $(seq "$RUNS")); fanouts=${fanouts%,}
target/release/moltops-bench run --agents "$N" --spawn-server target/release/moltops-server \
  --scenario fanout --fanout "$fanouts" --json "$out/moltops-$N.json" >&2

python3 - "$out/salt-$N.json" "$out/moltops-$N.json" "$out/side-by-side-$N.json" <<'EOF'
import json, statistics, sys
salt = json.load(open(sys.argv[1]))
ours = json.load(open(sys.argv[2]))
if not salt.get("all_returned"):
    sys.exit("side-by-side: not every minion returned True in every run: " + str(salt.get("returned_true")))
ours_s = [f["all_recorded_s"] for f in ours["fanouts"]]
if any(f["verdict"]["executed_once"] != ours["agents"] for f in ours["fanouts"]):
    sys.exit("side-by-side: a moltops fan-out was not executed exactly once on every node")
salt_s = [ms / 1000 for ms in salt["wall_ms"]]
row = {
    "targets": ours["agents"],
    "runs": len(ours_s),
    "salt_version": salt["salt_version"],
    "salt_test_ping_wall_s_p50": statistics.median(salt_s),
    "salt_test_ping_wall_s_min": min(salt_s),
    "salt_test_ping_wall_s_max": max(salt_s),
    "moltops_fanout_all_recorded_s_p50": statistics.median(ours_s),
    "moltops_fanout_all_recorded_s_min": min(ours_s),
    "moltops_fanout_all_recorded_s_max": max(ours_s),
    "moltops_per_node_p99_ms": max(f["job_latency"]["p99_ms"] for f in ours["fanouts"]),
    "salt_per_minion_rss_mib": salt.get("per_minion_rss_mib"),
    "salt_master_rss_mib": salt.get("master_rss_mib"),
}
row["ratio_salt_over_moltops_p50"] = row["salt_test_ping_wall_s_p50"] / row["moltops_fanout_all_recorded_s_p50"]
json.dump(row, open(sys.argv[3], "w"), indent=2)
print(json.dumps(row, indent=2))
print(f"{row['targets']} targets: salt '*' test.ping p50 {row['salt_test_ping_wall_s_p50']:.2f} s; "
      f"moltops ping fan-out p50 {row['moltops_fanout_all_recorded_s_p50']:.2f} s; "
      f"salt / moltops = {row['ratio_salt_over_moltops_p50']:.1f}x")
EOF
