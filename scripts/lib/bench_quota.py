"""The tables of scripts/bench-quota.sh, and the check that each of its cells measured what
it is named after.

A benchmark cell whose quotas refused requests, or whose Redis path was answered by the
node, would measure something else than its label says, so `cell` refuses it (exit 1, with
what was seen) rather than let it into the table. `table` reads the rounds' results and
prints the Markdown tables of docs/benchmarks.md ("Team quotas"): each difference and
ratio against the no-quota cell is taken within one round, then the median over the rounds
is given with their range.

    bench_quota.py cell PATH CONNS REDIS-TICKS SWITCHES WRK-OUTPUT SUMMARY-JSON REDIS-URL
    bench_quota.py table WORK ROUNDS
    bench_quota.py commands WORK ROUNDS COMMANDSTATS
"""

import csv
import json
import os
import re
import statistics
import sys

TICK = os.sysconf("SC_CLK_TCK")
REDIS_PATHS = ("redis", "redis-rpm")
LABELS = {
    "none": "no quota",
    "node": "node quota",
    "redis": "Redis quota",
    "redis-rpm": "Redis, requests_per_minute only",
}
# The goal for a Redis quota, per request.
GOAL_P50_US = 300
GOAL_CPU_US = 20


def fail(path, conns, message):
    print(f"bench-quota.sh: the {path} cell at {conns} connections {message}", file=sys.stderr)
    sys.exit(1)


def cell(path, conns, redis_ticks, switches, wrk_output, summary_file, redis_url):
    """Checks one cell and prints its line of extras (tab-separated)."""
    wrk = open(wrk_output).read()
    requests = int(re.search(r"(\d+) requests in", wrk).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
    if non_2xx:
        fail(path, conns, f"had {non_2xx.group(1)} answers other than 200 (a refusal?)")
    summary = json.load(open(summary_file))
    quotas = summary.get("quotas")
    if path == "none":
        if quotas is not None:
            fail(path, conns, "has a quotas report in its summary: the policy has none")
        print("\t".join([path, conns, redis_ticks, switches, str(requests), "", "", "", "", ""]))
        return
    if quotas is None:
        fail(path, conns, "has no quotas report in its summary: were the quotas in force?")
    refused = sum(quotas["refused"].values())
    if refused:
        fail(path, conns, f"refused {refused} requests ({quotas['refused']}): limits too low?")
    if quotas["admitted"] < requests:
        fail(path, conns, f"admitted {quotas['admitted']} attempts for wrk's {requests} requests")
    if path in REDIS_PATHS:
        if not quotas["fleet_wide"] or not quotas["store"].startswith(redis_url):
            fail(path, conns, f"was not answered by {redis_url}: store {quotas['store']}")
        if quotas["errors"] or quotas["local_fallback_checks"]:
            fail(path, conns, f"had {quotas['errors']} store errors, "
                 f"{quotas['local_fallback_checks']} local fallback checks")
    elif quotas["fleet_wide"]:
        fail(path, conns, f"was fleet-wide (store {quotas['store']}): no Redis was configured")
    print("\t".join([path, conns, redis_ticks, switches, str(requests), str(quotas["admitted"]),
                     str(quotas["round_trips"]), str(quotas["errors"]),
                     str(quotas["latency_us_total"]), quotas["store"]]))


def micros(text):
    """wrk's latency (`174.00us`, `2.71ms`, `1.02s`) in µs."""
    for unit, scale in (("us", 1), ("ms", 1e3), ("s", 1e6)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    return float("nan")


def shown(us):
    return f"{us:.0f} µs" if abs(us) < 1000 else f"{us / 1000:.2f} ms"


def signed(us):
    return f"{us:+.0f} µs" if abs(us) < 1000 else f"{us / 1000:+.2f} ms"


def spread(values, fmt):
    """The median of VALUES, with their range when there are several."""
    text = fmt(statistics.median(values))
    if len(values) > 1:
        text += f" ({fmt(min(values))} to {fmt(max(values))})"
    return text


def load(work, rounds):
    """cells[(conns, path)][round] = the cell's figures; also the cells' order and the
    rounds' Redis round trips (p50, µs)."""
    cells, order, rtts = {}, [], []
    for r in range(1, rounds + 1):
        for line in open(f"{work}/results-{r}.tsv"):
            _, conns, path, rps, p50, p99, cpu, errors = line.rstrip("\n").split("\t")
            key = (conns, path)
            if key not in cells:
                cells[key] = {}
                order.append(key)
            cells[key][r] = {"rps": float(rps), "p50": micros(p50), "p99": micros(p99),
                             "cpu": float(cpu), "errors": errors}
        for line in open(f"{work}/extras-{r}.tsv"):
            path, conns, redis_ticks, switches, requests, admitted, trips, errors, latency, \
                store = line.rstrip("\n").split("\t")
            figures = cells[(conns, path)][r]
            figures["switches"] = int(switches) / int(requests)
            figures["requests"] = int(requests)
            figures["redis_cpu"] = int(redis_ticks) * 1e6 / TICK / int(requests)
            if trips:
                figures["trips"] = int(trips) / int(admitted)
                figures["store_us"] = int(latency) / int(trips) if int(trips) else None
        with open(f"{work}/rtt-{r}.csv") as f:
            rows = list(csv.DictReader(f))
        rtts.append(float(rows[0]["p50_latency_ms"]) * 1000)
    return cells, order, rtts


def table(work, rounds):
    cells, order, rtts = load(work, int(rounds))

    def against_none(key, field, how):
        base = cells.get((key[0], "none"), {})
        values = [how(run[field], base[r][field]) for r, run in cells[key].items() if r in base]
        return values

    print()
    print("| conns | path | req/s | p50 | p99 | proxy CPU/req | p50 − no quota "
          "| CPU/req − no quota | req/s vs no quota | store round trips/attempt "
          "| store latency/round trip | Redis CPU/req | context switches/req | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in order:
        conns, path = key
        runs = list(cells[key].values())
        med = lambda field: statistics.median(run[field] for run in runs)
        diffs = ["", "", ""]
        if path != "none":
            diffs = [spread(against_none(key, "p50", lambda a, b: a - b), signed),
                     spread(against_none(key, "cpu", lambda a, b: a - b), lambda v: f"{v:+.1f} µs"),
                     spread(against_none(key, "rps", lambda a, b: a / b), lambda v: f"{v:.2f}x")]
        trips = [run["trips"] for run in runs if "trips" in run]
        store = [run["store_us"] for run in runs if run.get("store_us") is not None]
        columns = [conns, LABELS.get(path, path), f"{med('rps'):.0f}", shown(med("p50")),
                   shown(med("p99")), f"{med('cpu'):.0f} µs", *diffs,
                   f"{statistics.median(trips):.2f}" if trips else "",
                   shown(statistics.median(store)) if store else "",
                   f"{med('redis_cpu'):.1f} µs" if path in REDIS_PATHS else "",
                   f"{med('switches'):.1f}",
                   "; ".join(sorted({run["errors"] for run in runs if run["errors"]}))]
        print("| " + " | ".join(columns) + " |")

    print()
    print(f"One Redis round trip on loopback (redis-benchmark, PING, 1 connection, p50 per "
          f"round): {', '.join(f'{v:.0f} µs' for v in rtts)}.")
    rtt = statistics.median(rtts)
    print()
    print("| goal (Redis quota, per request) | conns | measured (median of rounds, range) | met |")
    print("|---|---|---|---|")
    for key in order:
        conns, path = key
        if path != "redis" or (conns, "none") not in cells:
            continue
        p50 = against_none(key, "p50", lambda a, b: a - b)
        cpu = against_none(key, "cpu", lambda a, b: a - b)
        bound = min(GOAL_P50_US, rtt)
        print(f"| p50 added ≤ one loopback round trip ({rtt:.0f} µs) and < {GOAL_P50_US} µs "
              f"| {conns} | {spread(p50, signed)} | {'yes' if statistics.median(p50) <= bound else 'no'} |")
        print(f"| proxy CPU added ≤ {GOAL_CPU_US} µs | {conns} | "
              f"{spread(cpu, lambda v: f'{v:+.1f} µs')} | "
              f"{'yes' if statistics.median(cpu) <= GOAL_CPU_US else 'no'} |")


def commands(work, rounds, commandstats):
    """The Redis commands of the run (`INFO commandstats`): calls, and Redis's own time per
    call; per request of the Redis cells' measured windows (the warm-ups add about a tenth)."""
    cells, _, _ = load(work, int(rounds))
    requests = 0
    for (_, path), runs in cells.items():
        if path in REDIS_PATHS:
            requests += sum(run["requests"] for run in runs.values())
    print()
    print("| Redis command | calls | per measured request | Redis time per call |")
    print("|---|---|---|---|")
    for line in open(commandstats):
        match = re.match(r"cmdstat_(\w+):calls=(\d+),usec=\d+,usec_per_call=([\d.]+)", line)
        if match:
            name, calls, per_call = match.group(1), int(match.group(2)), float(match.group(3))
            per_request = f"{calls / requests:.2f}" if requests else ""
            print(f"| {name} | {calls} | {per_request} | {per_call:.1f} µs |")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    {"cell": cell, "table": table, "commands": commands}[command](*args)
