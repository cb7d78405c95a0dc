"""bench/run.py's start-up cases (issue 11): the process time of the lightest commands.

`python -c pass` is the floor every dockyard command stands on (the interpreter's own
start); `dockyard --version` is that plus the CLI's entry point, `dockyard ps` a bus
connect, the fleet's heartbeats and one scatter-gather on top. podman's `--version` and
`ps` are measured beside them in the same rounds. Wall time of the whole process, as a
user's shell sees it; rounds alternate which tool goes first.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

AIM_OVER_PYTHON = 0.040  # issue 11: `dockyard ps` within 40 ms of `python -c pass`


def _wall(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr[-500:]!r}")
    return took


def run(tools: list, rounds: int) -> float:
    """Print the table (ms, medians) and the ratios to podman; the worse of the two ratios."""
    dockyard, podman = tools
    cases = {
        "python -c pass": lambda: _wall([sys.executable, "-c", "pass"], dockyard.env),
        "dockyard --version": lambda: _wall([*dockyard.argv, "--version"], dockyard.env),
        "dockyard ps": lambda: _wall([*dockyard.argv, "ps"], dockyard.env),
        "podman --version": lambda: _wall(["podman", "--version"], podman.env),
        "podman ps": lambda: _wall(["podman", "ps"], podman.env),
    }
    for fn in cases.values():  # warm-up: the page cache, podman's storage
        fn()
    times: dict[str, list[float]] = {c: [] for c in cases}
    names = list(cases)
    for r in range(rounds):
        for c in names if r % 2 == 0 else names[::-1]:
            times[c].append(cases[c]())
    med = {c: statistics.median(v) for c, v in times.items()}
    print(f"\nstart-up, {rounds} rounds, medians in ms (process wall time)")
    for c in names:
        print(f"{c:<20}{med[c] * 1000:>8.1f}   (range {min(times[c]) * 1000:.1f}-{max(times[c]) * 1000:.1f})")
    over = med["dockyard ps"] - med["python -c pass"]
    print(f"dockyard ps over python -c pass: {over * 1000:.1f} ms (aim <= {AIM_OVER_PYTHON * 1000:.0f} ms)")
    v = med["dockyard --version"] / med["podman --version"]
    ps = med["dockyard ps"] / med["podman ps"]
    print(f"ratios to podman: --version {v:.2f}, ps {ps:.2f} (target <= 0.5)")
    return max(v, ps)
