"""bench/run.py's start-up cases (issue 11): the process time of the lightest commands.

`python -c pass` is the floor every dockyard command stands on (the interpreter's own
start); `dockyard --version` is that plus the CLI's entry point, `dockyard ps` a bus
connect, the fleet's heartbeats and one scatter-gather on top. podman's `--version` and
`ps` are measured beside them in the same rounds. Wall time of the whole process, as a
user's shell sees it, and its CPU time (user + system, children included: what a loaded
machine distorts least); rounds alternate which tool goes first.
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time

AIM_OVER_PYTHON = 0.040  # issue 11: `dockyard ps` within 40 ms of `python -c pass`


def _timed(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall, cpu) seconds of one run of `argv`."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr[-500:]!r}")
    return took, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def run(tools: list, rounds: int) -> float:
    """Print the table (ms, medians) and the ratios to podman; the worse of the two ratios."""
    dockyard, podman = tools
    cases = {
        "python -c pass": lambda: _timed([sys.executable, "-c", "pass"], dockyard.env),
        "dockyard --version": lambda: _timed([*dockyard.argv, "--version"], dockyard.env),
        "dockyard ps": lambda: _timed([*dockyard.argv, "ps"], dockyard.env),
        "podman --version": lambda: _timed(["podman", "--version"], podman.env),
        "podman ps": lambda: _timed(["podman", "ps"], podman.env),
    }
    for fn in cases.values():  # warm-up: the page cache, podman's storage
        fn()
    times: dict[str, list[tuple[float, float]]] = {c: [] for c in cases}
    names = list(cases)
    for r in range(rounds):
        for c in names if r % 2 == 0 else names[::-1]:
            times[c].append(cases[c]())
    wall = {c: statistics.median(w for w, _ in v) for c, v in times.items()}
    cpu = {c: statistics.median(u for _, u in v) for c, v in times.items()}
    print(f"\nstart-up, {rounds} rounds, medians in ms: process wall time (range), CPU time")
    for c in names:
        ws = [w for w, _ in times[c]]
        print(f"{c:<20}{wall[c] * 1000:>8.1f}   ({min(ws) * 1000:.1f}-{max(ws) * 1000:.1f})"
              f"{cpu[c] * 1000:>10.1f}")
    for label, m in (("wall", wall), ("cpu", cpu)):
        over = m["dockyard ps"] - m["python -c pass"]
        print(f"{label}: dockyard ps over python -c pass {over * 1000:.1f} ms (aim <= {AIM_OVER_PYTHON * 1000:.0f}); "
              f"ratios to podman: --version {m['dockyard --version'] / m['podman --version']:.2f}, "
              f"ps {m['dockyard ps'] / m['podman ps']:.2f} (target <= 0.5)")
    return max(wall["dockyard --version"] / wall["podman --version"], wall["dockyard ps"] / wall["podman ps"])
