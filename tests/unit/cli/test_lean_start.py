"""What `dockyard --version`, `ps`, `agents` and `stats --no-stream` load: a structural check of the lean start
(issue 11), not a timing one. The commands run as users run them, in a fresh interpreter
against a real nats-server; the modules each one imported are read back from it."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

# What start-up must not pay for: the event loop (and the ssl, logging, subprocess it
# loads), nats-py and its aiohttp, rich (progress bars), cryptography (TLS certificates).
HEAVY = ("asyncio", "aiohttp", "nats", "rich", "cryptography", "ssl", "logging", "subprocess",
         "concurrent", "importlib.metadata", "typing_extensions", "inspect", "hashlib",
         "shutil")

_RUN = ("import sys\n"
        "from services.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "sys.stdout.flush()\n"
        "sys.stderr.write('\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n')\n"
        "sys.exit(rc)\n")


def cli(tmp_path: Path, nats_url: str, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {**os.environ, "DOCKYARD_NATS_URL": nats_url, "DOCKYARD_DATA_DIR": str(tmp_path / "data"),
           "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("DOCKYARD_CONTEXT", None)
    p = subprocess.run([sys.executable, "-c", _RUN, *args], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    head, _, mods = p.stderr.rpartition("\nMODULES ")
    p.stderr = head
    return p, set(mods.split())


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


# The command, and what it says here (a nats-server alone: no agent, no registry-gateway).
CASES = [(["ps"], ""), (["ps", "-a", "--format", "{{.ID}}"], ""), (["agents"], ""), (["--version"], ""),
         (["inspect", "nothing-here"], "no such container: nothing-here"),
         (["images"], "no service answers on dockyard.registry.images"),
         (["stats", "--no-stream"], ""), (["stats", "--no-stream", "nothing-here"], "no such container: nothing-here")]


@pytest.mark.parametrize("args,error", CASES)
def test_the_everyday_listings_load_no_event_loop_and_no_heavy_library(tmp_path, nats_url, args, error):
    p, modules = cli(tmp_path, nats_url, *args)
    if error:  # the same lean path up to the reply that says so
        assert p.returncode != 0 and error in p.stderr, p.stderr
    else:
        assert p.returncode == 0, p.stderr
    assert modules, "the module list did not come back"
    assert heavy(modules) == []
    if args != ["--version"]:
        assert "shared.bus_blocking" in modules  # it did talk to the bus, without a loop
    else:
        assert "argparse" not in modules and "msgspec" not in modules


def test_ps_output_is_the_same_on_an_event_loop(tmp_path, nats_url):
    """`ps` is a docker table whichever client carries it; `run`'s path is the loop's."""
    p, _ = cli(tmp_path, nats_url, "ps")
    assert p.stdout.split("\n")[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS",
                                               "PORTS", "NAMES", "HOST"]
    p, modules = cli(tmp_path, nats_url, "logs", "nothing-here")
    assert p.returncode == 1 and "no such container: nothing-here" in p.stderr
    assert "asyncio" in modules  # the check above can see a loop when there is one


def test_version_is_the_installed_distribution_s(tmp_path, nats_url):
    p, _ = cli(tmp_path, nats_url, "--version")
    assert p.stdout == f"dockyard version {importlib.metadata.version('dockyard')}\n"
    p2, _ = cli(tmp_path, nats_url, "--nats", nats_url, "-v")
    assert p2.stdout == p.stdout
