"""The cells and the table of scripts/bench-h2.sh: h2load's figures, the check that each cell
measured what it is named after, and the Markdown table of docs/benchmarks.md ("HTTP/2
through interception").

A cell is one h2load run (one `tollgate run` for the tollgate cells). `cell` reads its
h2load output, its per-request log (`--log-file`: start, status, µs until the response
ended, one line per request of the measured window) and, for a tollgate cell, the
execution's audit log, and prints one JSON line. A cell that did not measure what its label
says gets an `error` instead of figures, shown in the table: h2load negotiated another
protocol than asked (an HTTP/2 cell against a build that offers only HTTP/1.1 would
otherwise measure HTTP/1.1), requests failed, or the audit disagrees (a record not
transparent, not `complete` with 200, or speaking another protocol than the cell's; the
upstream protocol the records give is the cell's `upstream` column, and a port whose nginx
offers only HTTP/1.1 must not show `h2`).

`table` prints the rounds' medians. Each ratio is taken within one round (against the
direct cell of the same client protocol and shape, and against the all-HTTP/1.1 tollgate
cell of the same shape), then the median over the rounds is given with their range.

`profile` sums a `perf report` (self time by object and symbol, on stdin) by crate, or by
kind of kernel or libc work.

    bench_h2.py cell ROUND CONNS STREAMS CLIENT PATH PORT TICKS DIR [AUDIT SWITCHES]
    bench_h2.py table RESULTS-JSONL ROUNDS
    bench_h2.py profile <PERF-REPORT
"""

import json
import os
import re
import statistics
import sys
from collections import Counter

TICK = os.sysconf("SC_CLK_TCK")
# The nginx ports of bench-h2.sh: 443 offers h2 and http/1.1 by ALPN, 8443 http/1.1 only.
H1_ONLY_PORT = "8443"
# A stream h2load leaves open when it tears its HTTP/2 connection down at the end of a run
# is sometimes recorded as a 400 `invalid_request` with this message rather than
# `cancelled` (b673a6a..16cc445): counted with the cut requests, and reported under the
# table, not a failure of the cell.
TEARDOWN_MESSAGE = "the request body could not be read"


def h2load_figures(text):
    """Requests/s, requests done and succeeded, the failures, and the negotiated protocol
    from h2load's output."""
    rps = re.search(r"^finished in \S+, ([\d.]+) req/s", text, re.M)
    counts = re.search(r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                       r"(\d+) failed, (\d+) errored, (\d+) timeout", text, re.M)
    protocol = re.search(r"^Application protocol: (\S+)", text, re.M)
    if not rps or not counts:
        return None
    started, done, succeeded, failed, errored, timeout = (int(x) for x in counts.groups()[1:])
    return {
        "rps": float(rps.group(1)),
        "started": started,
        "done": done,
        "succeeded": succeeded,
        "failures": failed + errored + timeout,
        "protocol": protocol.group(1) if protocol else None,
    }


def percentile(sorted_values, fraction):
    """The nearest-rank percentile of an already sorted list."""
    rank = max(1, round(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latencies(log_file):
    """p50 and p99 in µs of the requests in h2load's --log-file that got a 2xx."""
    times = []
    for line in open(log_file):
        fields = line.split("\t")
        if len(fields) == 3 and fields[1].startswith("2"):
            times.append(int(fields[2]))
    times.sort()
    if not times:
        return None, None
    return percentile(times, 0.5), percentile(times, 0.99)


def audit_check(audit_file, client, in_flight):
    """What the execution's http records say: the upstream protocol they name, how many
    were refused at teardown (TEARDOWN_MESSAGE), and a sentence when one of them
    contradicts the cell (None when all agree). IN_FLIGHT is how many requests h2load
    keeps open at once (connections × streams)."""
    seen, upstream = Counter(), Counter()
    for line in open(audit_file):
        record = json.loads(line)
        if record.get("type") != "http":
            continue
        outcome = record.get("outcome")
        if outcome == "refused" and (record.get("message") or "").startswith(TEARDOWN_MESSAGE):
            outcome = "refused at teardown"
        seen[(record.get("transparent") is True, outcome, record.get("status"),
              record.get("protocol"))] += record.get("count", 1)
        if record.get("outcome") == "complete":
            upstream[record.get("upstream_protocol")] += record.get("count", 1)
    cut = teardown = 0
    for (transparent, outcome, status, protocol), n in seen.items():
        if not transparent:
            return None, None, f"{n} records did not come through transparent egress"
        if outcome in ("cancelled", "client_closed", "refused at teardown"):
            cut += n
            teardown += n if outcome == "refused at teardown" else 0
        elif outcome != "complete" or status != 200:
            return None, None, f"{n} records ended {outcome} with status {status}"
        # A build before #14 writes no `protocol`: absent passes for HTTP/1.1 only.
        if protocol != client and not (protocol is None and client == "http/1.1"):
            return None, None, f"{n} records say the sandbox spoke {protocol}, not {client}"
    # h2load ends each of its two runs (warm-up, measured) with its requests in flight: it
    # resets their streams or closes the connection, and tollgate records them `cancelled`
    # (before the response began) or `client_closed` (during it); see TEARDOWN_MESSAGE.
    if cut > 2 * in_flight:
        return None, None, (f"{cut} records cut by the client, more than h2load's "
                            f"2 × {in_flight} in flight")
    if not upstream:
        return None, None, "no http records in the audit log"
    if len(upstream) > 1:
        return None, None, f"the records name several upstream protocols: {dict(upstream)}"
    (name,) = upstream
    return name or "?", teardown, None


def cell(round_, conns, streams, client, path, port, ticks, out, audit=None, switches=None):
    """Checks one cell and prints its JSON line."""
    line = {"round": int(round_), "conns": int(conns), "streams": int(streams),
            "client": client, "path": path, "port": port}
    figures = h2load_figures(open(f"{out}/h2load.out").read())
    if figures is None:
        line["error"] = "no h2load figures (see its output)"
    elif figures["protocol"] != client:
        line["error"] = f"h2load negotiated {figures['protocol'] or 'nothing'}, not {client}"
    elif figures["succeeded"] == 0:
        line["error"] = (f"no request succeeded (h2load: {figures['started']} started, "
                         f"{figures['done']} done)")
    elif figures["failures"]:
        line["error"] = f"{figures['failures']} of {figures['done']} requests failed"
    if "error" not in line and audit:
        line["upstream"], line["teardown"], error = audit_check(audit, client,
                                                                int(conns) * int(streams))
        if error:
            line["error"] = error
        elif port == H1_ONLY_PORT and line["upstream"] == "h2":
            line["error"] = "h2 upstream on the port whose nginx offers only http/1.1"
    if "error" not in line:
        p50, p99 = latencies(f"{out}/requests.log")
        line.update(rps=figures["rps"], requests=figures["succeeded"], p50_us=p50, p99_us=p99)
        if ticks != "-":
            line["cpu_us"] = int(ticks) * 1e6 / TICK / figures["succeeded"]
        if switches is not None:
            line["switches"] = int(switches) / figures["succeeded"]
    print(json.dumps(line))


def shown(us):
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def spread(values):
    """The median of ratios, with their range when there are several."""
    text = f"{statistics.median(values):.2f}x"
    if len(values) > 1:
        text += f" ({min(values):.2f}–{max(values):.2f})"
    return text


def row_key(line):
    return (line["conns"], line["streams"], line["client"], line["path"], line["port"])


def table(results, rounds):
    lines = [json.loads(line) for line in open(results) if line.strip()]
    cells, order = {}, []
    for line in lines:
        key = row_key(line)
        if key not in cells:
            cells[key] = {}
            order.append(key)
        cells[key][line["round"]] = line
    # The rows of one shape together, direct first, then tollgate by client and upstream.
    rank = {("direct", "h2"): 0, ("direct", "http/1.1"): 1}
    order.sort(key=lambda k: (k[0] * 100 + k[1], rank.get((k[3], k[2]), 2), k[2] != "h2",
                              k[4] == H1_ONLY_PORT))

    def ratios(key, base, field):
        if base not in cells:
            return ""
        values = [cells[key][r][field] / cells[base][r][field]
                  for r in cells[key] if r in cells[base]
                  and cells[key][r].get(field) and cells[base][r].get(field)]
        return spread(values) if values else ""

    print("| conns × streams | sandbox ↔ tollgate | tollgate ↔ upstream | req/s | p50 | p99 "
          "| proxy CPU/req | switches/req | req/s vs direct | p50 vs direct "
          "| req/s vs all-HTTP/1.1 | p50 vs all-HTTP/1.1 | CPU vs all-HTTP/1.1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key in order:
        conns, streams, client, path, port = key
        runs = [line for line in cells[key].values() if "error" not in line]
        failures = [line["error"] for line in cells[key].values() if "error" in line]
        failed = sorted(set(failures))
        shape = f"{conns} × {streams}"
        if path == "direct":
            upstream = "(direct to nginx)"
        else:
            upstreams = sorted({line["upstream"] for line in runs}) or ["?"]
            upstream = ", ".join(upstreams)
            upstream += " (nginx: http/1.1 only)" if port == H1_ONLY_PORT else ""
        label = client if path == "direct" else f"{client} (tollgate)"
        if not runs:
            print(f"| {shape} | {label} | {upstream} | failed: {'; '.join(failed)} "
                  "| | | | | | | | | |")
            continue
        med = lambda field: statistics.median(line[field] for line in runs)
        cpu = f"{med('cpu_us'):.0f} µs" if path != "direct" else "–"
        switches = f"{med('switches'):.1f}" if path != "direct" else "–"
        vs_direct = ["", ""]
        vs_h1 = ["", "", ""]
        if path != "direct":
            direct = (conns, streams, client, "direct", "443")
            vs_direct = [ratios(key, direct, "rps"), ratios(key, direct, "p50_us")]
            h1 = (conns, streams, "http/1.1", "tollgate", H1_ONLY_PORT)
            if key != h1:
                vs_h1 = [ratios(key, h1, "rps"), ratios(key, h1, "p50_us"),
                         ratios(key, h1, "cpu_us")]
        note = f" (failed in {len(failures)} rounds: {'; '.join(failed)})" if failed else ""
        print(f"| {shape} | {label} | {upstream} | {med('rps'):.0f}{note} | "
              f"{shown(med('p50_us'))} | {shown(med('p99_us'))} | {cpu} | {switches} | "
              + " | ".join(vs_direct + vs_h1) + " |")
    teardown = [line for line in lines if line.get("teardown")]
    if teardown:
        print()
        print(f"{sum(line['teardown'] for line in teardown)} records in {len(teardown)} of "
              f"{len(lines)} cells were refused 400 `invalid_request` (\"{TEARDOWN_MESSAGE}: "
              "…\") as h2load tore its connections down at the end of a run, where a cut "
              "request is `cancelled`.")


# `perf report --no-children --sort dso,symbol -g none --stdio` lines: percent, object, [k]
# or [.], symbol.
PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$")
# Kernel symbols a timer-sampled profile (a VM without a PMU) charges to switching threads
# in and out: the sample lands where interrupts are turned back on.
SCHEDULING = ("finish_task_switch", "_raw_spin_unlock", "schedule", "__schedule", "futex")


def component(dso, symbol):
    """Which crate (or kind of kernel or libc work) a sampled symbol belongs to."""
    if dso == "[kernel.kallsyms]":
        if symbol.startswith(SCHEDULING):
            return "kernel: switching threads (wake-ups, futex)"
        if any(word in symbol for word in ("tcp", "skb", "ip_", "sock", "veth", "nf_", "net")):
            return "kernel: network"
        return "kernel: other"
    if dso.startswith("libc"):
        if any(word in symbol for word in ("malloc", "free", "alloc", "chunk", "consolidate")):
            return "libc: malloc/free"
        if symbol.startswith(("__mem", "memcpy", "memmove", "memset")):
            return "libc: memcpy/memmove/memcmp"
        return "libc: other"
    # Rust symbols: `<regorus::value::Value as …>::cmp`, `h2::proto::…`, `tollgate::proxy::…`.
    name = symbol.lstrip("<&*").removeprefix("mut ").removeprefix("dyn ")
    crate = re.match(r"([a-z_][a-z0-9_]*)::", name)
    if crate:
        return "core/alloc/std" if crate.group(1) in ("core", "alloc", "std") else crate.group(1)
    return f"{dso}: other"


def profile(text):
    """Self time by component from a perf report on stdin, heaviest first (≥ 0.5 %)."""
    shares = Counter()
    for line in text.splitlines():
        match = PERF_LINE.match(line)
        if match:
            percent, dso, _, symbol = match.groups()
            shares[component(dso, symbol)] += float(percent)
    for name, percent in shares.most_common():
        if percent >= 0.5:
            print(f"  {percent:5.1f} %  {name}")


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "cell":
        cell(*args)
    elif command == "table":
        table(args[0], int(args[1]))
    elif command == "profile":
        profile(sys.stdin.read())
    else:
        sys.exit(f"bench_h2.py: unknown command {command} (cell, table or profile)")
