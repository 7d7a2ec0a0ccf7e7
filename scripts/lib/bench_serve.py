"""What scripts/bench-serve.sh measures that the shell cannot: latency statistics from
hyperfine's exports, the memory of the service's process tree, what one service's
executions left behind, and where a launch's time goes (from a `perf script` timeline).

Run as `python3 scripts/lib/bench_serve.py COMMAND ARGS...` (root: it reads other users'
/proc entries); each command prints Markdown rows or one JSON line for the script.
"""

import json
import os
import re
import statistics
import sys

# The uid pool executions are leased from (supervisor/src/sandbox/users.rs: POOL_BASE, POOL_SIZE).
POOL_BASE = 0x7000_0000
POOL_SIZE = 65_536


# ---------------------------------------------------------------------------------------
# Latency: `stats NAMES-FILE BASELINE JSON...`


def percentile(sorted_times, fraction):
    """The nearest-rank percentile of an already sorted list."""
    rank = max(1, round(fraction * len(sorted_times)))
    return sorted_times[min(rank, len(sorted_times)) - 1]


def stats(names_file, baseline, *exports):
    """One row per command over every round's hyperfine export: median, p90, and the ratio
    of its median to BASELINE's taken within each round (the median of the rounds' ratios,
    with their range), so a drift of the machine between rounds does not become a ratio."""
    labels = [line.rstrip("\n").split("\t")[:2] for line in open(names_file) if line.strip()]
    pooled = {name: [] for name, _ in labels}
    ratios = {name: [] for name, _ in labels}
    for export in exports:
        results = {r["command"]: r for r in json.load(open(export))["results"]}
        base = statistics.median(results[baseline]["times"])
        for name, _ in labels:
            times = results[name]["times"]
            pooled[name].extend(times)
            ratios[name].append(statistics.median(times) / base)
    print(f"| command | runs | median | p90 | vs {baseline} |")
    print("|---|---|---|---|---|")
    for name, shown in labels:
        times = sorted(pooled[name])
        r = sorted(ratios[name])
        spread = f" ({r[0]:.2f}–{r[-1]:.2f})" if len(r) > 1 else ""
        print(
            f"| {shown} | {len(times)} | {statistics.median(times) * 1e3:.2f} ms "
            f"| {percentile(times, 0.9) * 1e3:.2f} ms | {statistics.median(r):.2f}x{spread} |"
        )


# ---------------------------------------------------------------------------------------
# Processes and memory


def processes():
    """Every live process: pid -> (ppid, comm, state, uid)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            status = open(f"/proc/{entry}/status").read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
        found[int(entry)] = (int(fields[1]), comm, fields[0], uid)
    return found


def children(procs, parent):
    return sorted(pid for pid, (ppid, _, state, _) in procs.items() if ppid == parent and state not in "ZX")


def descendants(procs, root):
    found, todo = [], [root]
    while todo:
        for child in children(procs, todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def memory_kib(pid):
    """(RSS, PSS) of one process in KiB; PSS shares each page among the processes mapping
    it, so a sum of PSS counts the binary's text (shared by every worker) once."""
    try:
        rollup = open(f"/proc/{pid}/smaps_rollup").read()
    except OSError:
        return (0, 0)
    field = lambda name: int(re.search(rf"^{name}:\s+(\d+) kB", rollup, re.M).group(1))
    return (field("Rss"), field("Pss"))


def summed(pids):
    rss = pss = 0
    for pid in pids:
        r, p = memory_kib(pid)
        rss, pss = rss + r, pss + p
    return {"n": len(pids), "rss": rss, "pss": pss}


def tree(service, client_uid=None):
    """The memory of the service (its own process), its workers (its children: one
    `tollgate __execution` per execution), the sandboxes under them (each execution's init
    and command), and the callers' clients (processes of CLIENT_UID); one JSON line."""
    service = int(service)
    procs = processes()
    workers = children(procs, service)
    sandboxes = [pid for worker in workers for pid in descendants(procs, worker)]
    result = {
        "service": summed([service]),
        "workers": summed(workers),
        "sandboxes": summed(sandboxes),
        "commands": sum(1 for pid in sandboxes if procs[pid][1] == "sleep"),
    }
    if client_uid is not None:
        result["clients"] = summed(
            [pid for pid, (_, comm, state, uid) in procs.items() if uid == int(client_uid) and comm == "tollgate" and state not in "ZX"]
        )
    print(json.dumps(result))


def row(label, tree_json):
    """One row of the memory table from a `tree` line: count, RSS / PSS in MiB per column."""
    t = json.loads(tree_json)
    cell = lambda part: f"{part['n']}: {part['rss'] / 1024:.1f} / {part['pss'] / 1024:.1f}"
    service = t["service"]
    print(
        f"| {label} | {service['rss'] / 1024:.1f} / {service['pss'] / 1024:.1f} | {cell(t['workers'])} "
        f"| {cell(t['sandboxes'])} | {cell(t.get('clients', {'n': 0, 'rss': 0, 'pss': 0}))} |"
    )


def supervisor(pid):
    """The memory of a local run: its supervisor and the sandbox processes under it."""
    procs = processes()
    mib = lambda t: f"{t['rss'] / 1024:.1f} / {t['pss'] / 1024:.1f}"
    sandbox = summed(descendants(procs, int(pid)))
    print(f"supervisor {mib(summed([int(pid)]))}, sandbox processes ({sandbox['n']}) {mib(sandbox)}")


def wait_commands(parent, count, limit):
    """Waits (up to LIMIT seconds) until COUNT `sleep` commands run under PARENT's children
    (the service's workers, or a local run's init); exits 1 saying how many did."""
    import time

    deadline = time.monotonic() + float(limit)
    while True:
        procs = processes()
        running = sum(1 for w in children(procs, int(parent)) for pid in descendants(procs, w) if procs[pid][1] == "sleep")
        if running >= int(count):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {running} of {count} executions were running after {limit} s")
        time.sleep(0.02)


def peak(service, limit):
    """Samples the service's workers and running `sleep` commands every 20 ms until it has
    run some and then none (or LIMIT seconds pass); prints the peaks as one JSON line."""
    import time

    deadline = time.monotonic() + float(limit)
    most_workers = most_commands = 0
    while time.monotonic() < deadline:
        procs = processes()
        workers = children(procs, int(service))
        commands = sum(1 for w in workers for pid in descendants(procs, w) if procs[pid][1] == "sleep")
        most_workers = max(most_workers, len(workers))
        most_commands = max(most_commands, commands)
        if most_workers and not workers:
            break
        time.sleep(0.02)
    print(json.dumps({"workers": most_workers, "commands": most_commands}))


def waiting(uid, count, limit):
    """Waits (up to LIMIT seconds) until COUNT processes of UID block reading a pipe (the
    launch barrier's FIFO); exits 1 if they never do."""
    import time

    deadline = time.monotonic() + float(limit)
    while time.monotonic() < deadline:
        blocked = 0
        for pid, (_, _, state, owner) in processes().items():
            if owner == int(uid) and state == "S":
                try:
                    blocked += open(f"/proc/{pid}/wchan").read().endswith("pipe_read")
                except OSError:
                    pass
        if blocked >= int(count):
            return
        time.sleep(0.02)
    raise SystemExit(f"only {blocked} of {count} launchers reached the barrier in {limit} s")


def exit_codes(names_file, *exports):
    """Checks every run in the hyperfine exports exited with its command's expected status
    (the third column of NAMES-FILE); prints what did not, and exits 1 then."""
    expected = {}
    for line in open(names_file):
        if line.strip():
            name, _, status = line.rstrip("\n").split("\t")
            expected[name] = int(status)
    bad = []
    for export in exports:
        for r in json.load(open(export))["results"]:
            codes = [c for c in r["exit_codes"] if c != expected[r["command"]]]
            if codes:
                bad.append(f"{r['command']}: {len(codes)} runs exited {sorted(set(codes))}, not {expected[r['command']]}")
    if bad:
        print("\n".join(bad))
        raise SystemExit(1)


def migration(prefix, moves):
    """What one cgroup v1 migration costs (what the sandbox's init pays to join the
    execution's v1 hierarchies): a sleeping process moved between two memory cgroups
    PREFIX-a and PREFIX-b, MOVES times 200 ms apart and MOVES times back to back. The move
    takes the cgroup threadgroup lock for writing, which waits for an RCU grace period unless
    another migration took it moments before. Prints one Markdown row per spacing."""
    import subprocess
    import time

    memory = next(m for m in v1_mounts() if os.path.exists(f"{m}/memory.limit_in_bytes"))
    dirs = [f"{memory}/{prefix}-a", f"{memory}/{prefix}-b"]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    child = subprocess.Popen(["/bin/sleep", "600"])
    try:
        print("| moves | median | max |")
        print("|---|---|---|")
        for pause, label in ((0.2, "200 ms apart"), (0.0, "back to back")):
            times = []
            for i in range(int(moves)):
                start = time.perf_counter()
                with open(f"{dirs[i % 2]}/cgroup.procs", "w") as procs:
                    procs.write(str(child.pid))
                times.append((time.perf_counter() - start) * 1e3)
                time.sleep(pause)
            print(f"| {moves} {label} | {statistics.median(times):.2f} ms | {max(times):.2f} ms |")
    finally:
        with open(f"{memory}/cgroup.procs", "w") as procs:
            procs.write(str(child.pid))
        child.kill()
        child.wait()
        for d in dirs:
            os.rmdir(d)


# ---------------------------------------------------------------------------------------
# Leftovers: `leftovers LAUNCHES-JSONL SERVICE-PID CLIENT-UID`


def v1_mounts():
    """The mount points of the cgroup v1 hierarchies of the limits' controllers."""
    mounts = []
    for line in open("/proc/self/mountinfo"):
        head, _, tail = line.partition(" - ")
        fs = tail.split()
        if not fs or fs[0] != "cgroup":
            continue
        options = fs[2].split(",")
        fields = head.split()
        if fields[3] == "/" and any(c in options for c in ("memory", "cpu", "pids")):
            if fields[4] not in mounts:
                mounts.append(fields[4])
    return mounts


def v2_mount():
    for line in open("/proc/self/mountinfo"):
        head, _, tail = line.partition(" - ")
        if tail.split()[0] == "cgroup2":
            return head.split()[4]
    raise SystemExit("no cgroup2 mount")


def cgroup_of(pid):
    try:
        for line in open(f"/proc/{pid}/cgroup"):
            if line.startswith("0::"):
                return line[3:].strip()
    except OSError:
        pass
    return None


def leftovers(launches, service, client_uid):
    """What this service's executions left: every execution named in its launch records is
    checked for its cgroup v2 directory, its cgroup v1 directories (memory, cpu, pids), its
    runtime directory and any process still in its cgroup; then the service's children, the
    caller's processes and the processes of leased uids (any execution's). One JSON line."""
    ids = sorted(
        {json.loads(line).get("execution") for line in open(launches) if line.strip()} - {None}
    )
    problems = []
    v2 = v2_mount()
    v1 = v1_mounts()
    for ident in ids:
        for path in [f"{v2}/tollgate/{ident}", f"/run/tollgate/{ident}"] + [f"{m}/tollgate/{ident}" for m in v1]:
            if os.path.exists(path):
                problems.append(path)
    procs = processes()
    ours = {f"/tollgate/{ident}" for ident in ids}
    for pid, (_, comm, state, uid) in procs.items():
        if state in "ZX":
            continue
        if cgroup_of(pid) in ours:
            problems.append(f"process {pid} ({comm}) in {cgroup_of(pid)}")
        if uid == int(client_uid):
            problems.append(f"process {pid} ({comm}) of the caller")
    for pid in children(procs, int(service)):
        problems.append(f"worker {pid} ({procs[pid][1]}) still runs")
    leased = [pid for pid, (_, _, state, uid) in procs.items() if POOL_BASE <= uid < POOL_BASE + POOL_SIZE and state not in "ZX"]
    print(json.dumps({"executions": len(ids), "problems": problems, "leased_uid_processes": len(leased)}))


# ---------------------------------------------------------------------------------------
# Where the time goes: `breakdown PERF-SCRIPT-TEXT LAUNCHES-TSV SERVICE-PID`

LINE = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[\d+\]\s+([\d.]+):\s+(\S+):\s*(.*)$")


def events(path):
    """perf script lines as (time, tgid, tid, event, args); args as a dict."""
    out = []
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        _, tgid, tid, time, event, rest = m.groups()
        args = dict(re.findall(r"(\w+)[=:] ?(\S+?),?(?=\s|$)", rest))
        out.append((float(time), int(tgid), int(tid), event.split(":")[-1], args))
    out.sort(key=lambda e: e[0])
    return out


def num(value):
    return int(value, 0) if value.startswith("0x") else int(value)


class Timeline:
    """The events of one launch's processes: a process tree grown from its root's forks."""

    def __init__(self, evs, start, end):
        self.evs = [e for e in evs if start <= e[0] <= end]
        self.tgid_of = {}
        for t, tgid, tid, ev, args in self.evs:
            self.tgid_of[tid] = tgid
        self.parent = {}
        for t, tgid, tid, ev, args in self.evs:
            if ev == "sched_process_fork":
                self.parent[num(args["child_pid"])] = tid

    def under(self, tid, root):
        """Whether thread TID is ROOT or was forked, at some depth, from it."""
        seen = 0
        while tid is not None and seen < 64:
            if tid == root:
                return True
            tid, seen = self.parent.get(tid), seen + 1
        return False

    def first(self, pred, after=0.0):
        """The time of the first event at or after AFTER that PRED holds for; None when
        there is none (or AFTER, an earlier marker, was not found)."""
        if after is None:
            return None
        for e in self.evs:
            if e[0] >= after and pred(e):
                return e[0]
        return None

    def last(self, pred, before=float("inf")):
        found = None
        for e in self.evs:
            if e[0] <= before and pred(e):
                found = e[0]
        return found


def init_markers(tl, command_time):
    """The moments of the sandbox's init (the parent of the command's process): its fork,
    its first one-byte write (the first `0` written to a cgroup v1 `cgroup.procs`: it joins
    the execution's v1 hierarchies, the last step of building the box) and its
    `prctl(PR_SET_DUMPABLE)` (the box is built; next it forks the command)."""
    for e in tl.evs:
        if e[0] == command_time and e[3] == "sched_process_exec":
            init = tl.parent.get(e[2])
            fork = tl.first(lambda f: f[3] == "sched_process_fork" and num(f[4]["child_pid"]) == init)
            join = tl.first(lambda f: f[2] == init and f[3] == "sys_enter_write", fork or 0.0)
            built = tl.first(lambda f: f[2] == init and f[3] == "sys_enter_prctl", join or 0.0)
            return {"init": fork, "v1_join": join, "box_built": built}
    return {"init": None, "v1_join": None, "box_built": None}


def markers_local(evs, pid, start, end):
    """The moments of one local `tollgate run` (pid PID)."""
    tl = Timeline(evs, start, end)
    mine = lambda e: tl.under(e[2], pid)
    exec_ = tl.first(lambda e: e[2] == pid and e[3] == "sched_process_exec" and e[4].get("filename", "").endswith("/tollgate"))
    lease = tl.first(lambda e: e[2] == pid and e[3] == "sys_enter_flock", exec_)
    proxy = proxy_thread_fork(tl, pid)
    cmd = tl.first(lambda e: mine(e) and e[3] == "sched_process_exec" and e[4].get("filename") == "/bin/true", exec_)
    cmd_exit = tl.first(lambda e: mine(e) and e[3] == "sched_process_exit" and e[4].get("comm") == "true", cmd)
    done = tl.first(lambda e: e[2] == pid and e[3] == "sched_process_exit", cmd_exit)
    return {
        "exec": exec_, "lease": lease, "runtime": proxy, **init_markers(tl, cmd), "command": cmd,
        "command_exit": cmd_exit, "end": done,
    }


def proxy_thread_fork(tl, process):
    """When PROCESS started its async runtime (the first thread later named tollgate-proxy):
    `prepare` is done (policy loaded, secrets read, shares and outputs opened)."""
    names = {}
    for t, tgid, tid, ev, args in tl.evs:
        if ev == "sched_process_exit":
            names[tid] = args.get("comm")
    return tl.first(
        lambda e: e[1] == process and e[3] == "sched_process_fork" and names.get(num(e[4]["child_pid"])) == "tollgate-proxy"
    )


def markers_served(evs, client, service, start, end):
    """The moments of one launch through the service by client process CLIENT."""
    tl = Timeline(evs, start, end)
    at = lambda tid, ev: (lambda e: e[2] == tid and e[3] == ev)
    setpriv = tl.first(lambda e: e[2] == client and e[3] == "sched_process_exec" and e[4].get("filename", "").endswith("setpriv"))
    exec_ = tl.first(lambda e: e[2] == client and e[3] == "sched_process_exec" and e[4].get("filename", "").endswith("/tollgate"))
    connect = tl.first(at(client, "sys_enter_connect"), exec_)
    sent = tl.first(at(client, "sys_enter_sendmsg"), connect)
    received = tl.first(lambda e: e[1] == service and e[3] == "sys_exit_recvmsg", sent)
    # The worker: a process (not a thread) the service forks after it read the frame.
    worker = None
    fork = None
    for t, tgid, tid, ev, args in tl.evs:
        if received is not None and t >= received and tgid == service and ev == "sched_process_fork":
            child = num(args["child_pid"])
            if tl.tgid_of.get(child) == child:
                worker, fork = child, t
                break
    wexec = tl.first(at(worker, "sched_process_exec"), fork)
    # worker_main's first act is to mark descriptors 3, 4 and 5 close-on-exec.
    main = tl.first(lambda e: e[2] == worker and e[3] == "sys_enter_fcntl", wexec)
    # The uid lease is a file lock: the team policy is loaded by then.
    lease = tl.first(at(worker, "sys_enter_flock"), main)
    proxy = proxy_thread_fork(tl, worker)
    started = tl.first(lambda e: e[1] == worker and e[3] == "sys_enter_sendto" and num(e[4].get("fd", "-1")) == 3, wexec)
    in_worker = lambda e: tl.under(e[2], worker)
    cmd = tl.first(lambda e: in_worker(e) and e[3] == "sched_process_exec" and e[4].get("filename") == "/bin/true", wexec)
    cmd_exit = tl.first(lambda e: in_worker(e) and e[3] == "sched_process_exit" and e[4].get("comm") == "true", cmd)
    finished = tl.last(lambda e: e[1] == worker and e[3] == "sys_enter_sendto" and num(e[4].get("fd", "-1")) == 3)
    wexit = tl.first(lambda e: e[2] == worker and e[3] == "sched_process_exit", cmd_exit)
    end = tl.first(lambda e: e[2] == client and e[3] == "sched_process_exit", cmd_exit)
    return {
        "setpriv": setpriv, "exec": exec_, "connect": connect, "sent": sent, "received": received,
        "fork": fork, "worker_exec": wexec, "worker_main": main, "lease": lease, "runtime": proxy,
        "started": started, **init_markers(tl, cmd), "command": cmd, "command_exit": cmd_exit, "finished": finished,
        "worker_exit": wexit, "end": end,
    }


SERVED_PHASES = [
    ("setpriv (the caller becomes the test user; not tollgate)", "setpriv", "exec"),
    ("client: process start, argument parsing", "exec", "connect"),
    ("client → service: connect, launch frame with 3 descriptors, read by the service", "connect", "received"),
    ("service: parse, authorise, team policy, socketpair, fork", "received", "fork"),
    ("worker: fork → exec of `tollgate __execution`", "fork", "worker_exec"),
    ("worker: process start (exec → its `main`)", "worker_exec", "worker_main"),
    ("worker: WorkerStart read, options, team policy load, secrets, gc", "worker_main", "lease"),
    ("worker: uid lease, Landlock plan, command lookup, shares, outputs", "lease", "runtime"),
    ("worker: async runtime, execution id, `started` sent", "runtime", "started"),
    ("worker: host side of the walls (cgroups, eBPF attach, netns + nftables + proxy) → init forked", "started", "init"),
    ("init: namespaces, mounts, pivot_root (the box)", "init", "v1_join"),
    ("init: joins the cgroup v1 hierarchies (writes `0` to their cgroup.procs)", "v1_join", "box_built"),
    ("command process: fork, capabilities, Landlock, seccomp, uid switch, execve", "box_built", "command"),
    ("the command (`/bin/true`)", "command", "command_exit"),
    ("worker: teardown → `finished` sent", "command_exit", "finished"),
    ("worker exit, service → client `Exited`, client exit", "finished", "end"),
]

LOCAL_PHASES = [
    ("process start, policy load, secrets, gc", "exec", "lease"),
    ("uid lease, Landlock plan, command lookup, shares, outputs", "lease", "runtime"),
    ("async runtime, execution id, host side of the walls → init forked", "runtime", "init"),
    ("init: namespaces, mounts, pivot_root (the box)", "init", "v1_join"),
    ("init: joins the cgroup v1 hierarchies (writes `0` to their cgroup.procs)", "v1_join", "box_built"),
    ("command process: fork, capabilities, Landlock, seccomp, uid switch, execve", "box_built", "command"),
    ("the command (`/bin/true`)", "command", "command_exit"),
    ("teardown, exit", "command_exit", "end"),
]


def breakdown(perf_text, launches_tsv, service):
    """Median of each phase over the launches listed in LAUNCHES-TSV (`served PID` or `local
    PID` per line: the pid of the caller's `setpriv`, or of the local `tollgate run`), as two
    Markdown tables. Each launch's window runs from its pid's first event to its exit (and
    half a second more, for the worker's exit); the launches ran one after another."""
    evs = events(perf_text)
    service = int(service)
    rows = {"served": [], "local": []}
    for line in open(launches_tsv):
        kind, pid = line.split()
        pid = int(pid)
        own = [e[0] for e in evs if e[2] == pid]
        if not own:
            continue
        start, end = own[0], own[-1] + 0.5
        if kind == "served":
            rows[kind].append(markers_served(evs, pid, service, start, end))
        else:
            rows[kind].append(markers_local(evs, pid, start, end))
    for kind, phases, first, title in [
        ("served", SERVED_PHASES, "setpriv", "through the service (`--connect`, as the test user)"),
        ("local", LOCAL_PHASES, "exec", "local (`tollgate run --policy TEAM.yaml`, as root)"),
    ]:
        complete = [m for m in rows[kind] if all(v is not None for v in m.values())]
        print(f"\n{title}: {len(complete)} of {len(rows[kind])} launches with every marker\n")
        if not complete:
            missing = sorted({k for m in rows[kind] for k, v in m.items() if v is None})
            print(f"(markers not found: {', '.join(missing)})")
            continue
        print("| phase | median | share |")
        print("|---|---|---|")
        total = statistics.median([(m["end"] - m[first]) * 1e3 for m in complete])
        for label, a, b in phases:
            d = statistics.median([(m[b] - m[a]) * 1e3 for m in complete])
            print(f"| {label} | {d:.2f} ms | {d / total * 100:.0f} % |")
        print(f"| total (median of the launches' totals) | {total:.2f} ms | |")


if __name__ == "__main__":
    commands = {
        "stats": stats, "exit-codes": exit_codes, "tree": tree, "row": row, "supervisor": supervisor, "wait-commands": wait_commands, "peak": peak,
        "waiting": waiting, "migration": migration, "leftovers": leftovers, "breakdown": breakdown,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: {sys.argv[0]} {'|'.join(commands)} ARGS...")
    commands[sys.argv[1]](*sys.argv[2:])
