#!/usr/bin/env python3
"""Small helpers for bench/salt/run.sh (standard library only).

Subcommands:
  mem PGIDS_FILE MASTER_PGID      memory of the master's and the minions' process groups, as JSON
  alive PGIDS_FILE MASTER_PGID    number of live (non-zombie) processes in those process groups
  cpu PGIDS_FILE MASTER_PGID      "<master_cpu_ms> <minions_cpu_ms>" used so far by those groups
  timeit OUT ERR -- CMD...        run CMD, print "<wall_ms> <cpu_ms of CMD> <exit code>"
  count OUT_FILE                  "<true> <total>" for a `salt --out=json` output file
  summary STATE_FILE              final JSON line (stdout) and human summary (stderr)
  memavail                        MemAvailable in MiB
"""

import json
import os
import statistics
import sys


def _proc_groups():
    """Yield (pid, pgid) for every process visible in /proc."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # comm may contain spaces/parens: fields start after the last ')'
        rest = stat[stat.rfind(")") + 2:].split()
        # rest[0]=state rest[1]=ppid rest[2]=pgrp
        if rest[0] == "Z":
            continue
        yield int(name), int(rest[2])


def _rollup(pid):
    """(rss_kib, pss_kib) from /proc/<pid>/smaps_rollup; falls back to VmRSS."""
    rss = pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    if rss is None:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
        except OSError:
            return 0, 0
    return rss or 0, pss if pss is not None else (rss or 0)


def cmd_mem(pgids_file, master_pgid):
    master_pgid = int(master_pgid)
    minion_pgids = set()
    if os.path.exists(pgids_file):
        with open(pgids_file) as f:
            minion_pgids = {int(x) for x in f.read().split()}
    master = {"procs": 0, "rss_kib": 0, "pss_kib": 0}
    per_group = {}
    for pid, pgid in _proc_groups():
        if pgid == master_pgid:
            rss, pss = _rollup(pid)
            master["procs"] += 1
            master["rss_kib"] += rss
            master["pss_kib"] += pss
        elif pgid in minion_pgids:
            rss, pss = _rollup(pid)
            g = per_group.setdefault(pgid, [0, 0, 0])
            g[0] += 1
            g[1] += rss
            g[2] += pss
    groups = list(per_group.values())
    n = len(groups)
    rss_each = sorted(g[1] for g in groups)
    minions = {
        "groups_alive": n,
        "groups_expected": len(minion_pgids),
        "procs": sum(g[0] for g in groups),
        "rss_kib": sum(rss_each),
        "pss_kib": sum(g[2] for g in groups),
        "per_minion_rss_kib_mean": round(sum(rss_each) / n) if n else 0,
        "per_minion_rss_kib_min": rss_each[0] if n else 0,
        "per_minion_rss_kib_max": rss_each[-1] if n else 0,
        "per_minion_pss_kib_mean": round(sum(g[2] for g in groups) / n) if n else 0,
    }
    print(json.dumps({"master": master, "minions": minions}))


def _load_salt_json(path):
    """Merge every JSON object in a `salt --out=json` output: without --static the CLI prints
    one object per minion as its return arrives."""
    with open(path, errors="replace") as f:
        text = f.read()
    merged = {}
    dec = json.JSONDecoder()
    pos = text.find("{")
    while 0 <= pos < len(text):
        try:
            obj, end = dec.raw_decode(text, pos)
        except ValueError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(obj, dict):
            merged.update(obj)
        pos = text.find("{", end)
    return merged


def cmd_alive(pgids_file, master_pgid):
    groups = {int(master_pgid)}
    if os.path.exists(pgids_file):
        with open(pgids_file) as f:
            groups |= {int(x) for x in f.read().split()}
    groups.discard(0)
    print(sum(1 for _, pgid in _proc_groups() if pgid in groups))


def cmd_cpu(pgids_file, master_pgid):
    """CPU ms (user+sys, incl. reaped children) used so far by the master's and the minions' groups."""
    master_pgid = int(master_pgid)
    minion_pgids = set()
    if os.path.exists(pgids_file):
        with open(pgids_file) as f:
            minion_pgids = {int(x) for x in f.read().split()}
    tick = os.sysconf("SC_CLK_TCK")
    master = minions = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        pgid = int(rest[2])
        if pgid != master_pgid and pgid not in minion_pgids:
            continue
        # utime, stime, cutime, cstime are fields 14..17 (rest[11..14])
        ticks = sum(int(x) for x in rest[11:15])
        if pgid == master_pgid:
            master += ticks
        else:
            minions += ticks
    print(master * 1000 // tick, minions * 1000 // tick)


def cmd_timeit(out_path, err_path, *cmd):
    """Run cmd with stdout/stderr to files; print '<wall_ms> <cli_cpu_ms> <exit code>'."""
    import resource
    import subprocess
    import time
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.monotonic()
        rc = subprocess.call(list(cmd), stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        t1 = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"{(t1 - t0) * 1000:.1f} {cpu * 1000:.0f} {rc}")


def cmd_count(path):
    obj = _load_salt_json(path)
    true = sum(1 for v in obj.values() if v is True)
    print(true, len(obj))


def cmd_memavail():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                print(int(line.split()[1]) // 1024)
                return
    print(0)


def _pct(values, p):
    s = sorted(values)
    if not s:
        return None
    k = (len(s) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _med(values):
    return round(statistics.median(values), 1) if values else None


def cmd_summary(state_file):
    with open(state_file) as f:
        st = json.load(f)
    n = st["minions"]
    walls = st["wall_ms"]
    counts = st["returned"]
    noop = st.get("noop_ms", [])
    mem = st["mem"]
    out = {
        "bench": "salt-test.ping-fanout",
        "date": st["date"],
        "salt_version": st["salt_version"],
        "python_version": st["python_version"],
        "host": st["host"],
        "config": st["config"],
        "minions": n,
        "runs": len(walls),
        "timeout_s": st["timeout_s"],
        "wall_ms": [round(w, 1) for w in walls],
        "wall_ms_p50": round(statistics.median(walls), 1),
        "wall_ms_min": round(min(walls), 1),
        "wall_ms_max": round(max(walls), 1),
        "cli_cpu_ms_p50": _med(st.get("cli_cpu_ms")),
        "master_cpu_ms_p50": _med(st.get("master_cpu_ms")),
        "minions_cpu_ms_p50": _med(st.get("minions_cpu_ms")),
        "idle_cpu_ms_per_s": st.get("idle_cpu_ms_per_s"),
        "loadavg1_before_runs": st.get("load1"),
        "jobs_published_per_run": st.get("jobs_per_run"),
        "returned_true": counts,
        "all_returned": all(c == n for c in counts),
        "noop_cli_ms_p50": round(statistics.median(noop), 1) if noop else None,
        "startup_s_until_all_answer": round(st["startup_s"], 1),
        "keys_accepted_s": round(st["keys_s"], 1),
        "master_procs": mem["master"]["procs"],
        "master_rss_mib": round(mem["master"]["rss_kib"] / 1024, 1),
        "master_pss_mib": round(mem["master"]["pss_kib"] / 1024, 1),
        "minion_procs": mem["minions"]["procs"],
        "minions_rss_total_mib": round(mem["minions"]["rss_kib"] / 1024, 1),
        "minions_pss_total_mib": round(mem["minions"]["pss_kib"] / 1024, 1),
        "per_minion_rss_mib": round(mem["minions"]["per_minion_rss_kib_mean"] / 1024, 1),
        "per_minion_rss_mib_min": round(mem["minions"]["per_minion_rss_kib_min"] / 1024, 1),
        "per_minion_rss_mib_max": round(mem["minions"]["per_minion_rss_kib_max"] / 1024, 1),
        "per_minion_pss_mib": round(mem["minions"]["per_minion_pss_kib_mean"] / 1024, 1),
        "peak_sampled_total_pss_mib": round(st["peak_pss_kib"] / 1024, 1),
        "mem_available_mib_at_start": st["mem_available_mib_at_start"],
        "loadavg_at_start": st["loadavg_at_start"],
    }
    print(json.dumps(out, sort_keys=False))
    h = sys.stderr
    print("", file=h)
    print("=== salt test.ping fan-out summary ===", file=h)
    print(f"salt {out['salt_version']}  python {out['python_version']}  date {out['date']}", file=h)
    print(f"host: {st['host']['cores']} cores, {st['host']['mem_total_mib']} MiB, "
          f"loadavg at start {out['loadavg_at_start']} (machine shared with other benchmarks)", file=h)
    print(f"minions N={n}  runs R={out['runs']}  salt -t {out['timeout_s']}", file=h)
    print(f"test.ping wall ms: p50 {out['wall_ms_p50']}  min {out['wall_ms_min']}  max {out['wall_ms_max']}  "
          f"(each: {out['wall_ms']})", file=h)
    print(f"CPU per run (p50 ms): salt CLI {out['cli_cpu_ms_p50']}, master {out['master_cpu_ms_p50']}, "
          f"all minions {out['minions_cpu_ms_p50']}; idle fleet CPU ms/s {out['idle_cpu_ms_per_s']}; 1-min loadavg before each run {out['loadavg1_before_runs']}", file=h)
    print(f"jobs published per run (job cache): {out['jobs_published_per_run']}", file=h)
    print(f"returned True per run: {counts}  all returned: {'yes' if out['all_returned'] else 'NO'}", file=h)
    print(f"salt CLI with no matching minion (CLI/connect overhead) p50 ms: {out['noop_cli_ms_p50']}", file=h)
    print(f"start-up: keys accepted after {out['keys_accepted_s']} s, all answer after "
          f"{out['startup_s_until_all_answer']} s", file=h)
    print(f"master: {out['master_procs']} procs, RSS {out['master_rss_mib']} MiB (PSS {out['master_pss_mib']} MiB)", file=h)
    print(f"minions: {out['minion_procs']} procs, RSS total {out['minions_rss_total_mib']} MiB "
          f"(PSS {out['minions_pss_total_mib']} MiB); per minion RSS {out['per_minion_rss_mib']} MiB "
          f"[{out['per_minion_rss_mib_min']}..{out['per_minion_rss_mib_max']}], PSS {out['per_minion_pss_mib']} MiB", file=h)
    print(f"peak sampled total PSS (master+minions): {out['peak_sampled_total_pss_mib']} MiB", file=h)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "mem":
        cmd_mem(*args)
    elif cmd == "alive":
        cmd_alive(*args)
    elif cmd == "cpu":
        cmd_cpu(*args)
    elif cmd == "timeit":
        cmd_timeit(*args)
    elif cmd == "count":
        cmd_count(*args)
    elif cmd == "summary":
        cmd_summary(*args)
    elif cmd == "memavail":
        cmd_memavail()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
