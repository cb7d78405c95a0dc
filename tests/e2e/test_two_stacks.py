"""Two stacks side by side on one machine: each CLI reaches its own stack, through its data
dir or a context, and nothing one of them does is seen by the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.conftest import REPO_ROOT, skopeo, start_stack, stop_stack
from tests.support.images import busybox_layout, skopeo_env

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]

SERVICES = ["layer-store", "registry-gateway", "runtime-agent"]


def test_two_stacks_never_reach_each_other(tmp_path):
    a = start_stack(tmp_path / "a", only=SERVICES)
    b = start_stack(tmp_path / "b", only=SERVICES)
    cid = ""
    try:
        assert a.nats_url != b.nats_url and a.registry_addr != b.registry_addr

        layout = tmp_path / "layout"
        busybox_layout(layout, tmp_path / "work")
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", a.admin_creds, f"oci:{layout}:latest",
               f"docker://{a.registry_addr}/dyts/only-a:1", env=skopeo_env(tmp_path / "home"))
        assert "dyts/only-a" in a.cli("images").stdout
        assert "dyts/only-a" not in b.cli("images").stdout

        # an image copied in by b's CLI lands in b's registry only
        b.cli("login", a.registry_addr, "-u", "admin", "--password-stdin", input=a.admin_password)
        b.cli("tag", f"{a.registry_addr}/dyts/only-a:1", "dyts/copied-to-b:1")
        assert "dyts/copied-to-b" in b.cli("images").stdout
        assert "dyts/copied-to-b" not in a.cli("images").stdout

        cid = a.cli("run", "-d", "--network", "none", "dyts/only-a:1", "sleep", "300").stdout.strip()
        assert cid[:12] in a.cli("ps", "-q").stdout
        assert b.cli("ps", "-a", "-q").stdout == ""
        agent_a = json.loads(a.cli("agents", "--json").stdout)
        agent_b = json.loads(b.cli("agents", "--json").stdout)
        assert len(agent_a) == len(agent_b) == 1 and agent_a[0]["containers"] != agent_b[0]["containers"]

        # contexts name the two stacks for one user; no data dir or NATS URL in the environment
        user = {k: v for k, v in a.env.items() if k not in ("DOCKYARD_DATA_DIR", "DOCKYARD_NATS_URL")}
        user["XDG_CONFIG_HOME"] = str(tmp_path / "user-config")

        def dockyard(*args: str, **env: str) -> subprocess.CompletedProcess:
            p = subprocess.run([sys.executable, "-m", "services.cli.main", *args], env={**user, **env},
                               cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, f"dockyard {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
            return p

        dockyard("context", "create", "one", "--data-dir", str(a.data_dir))
        dockyard("context", "create", "two", "--data-dir", str(b.data_dir), "--description", "second")
        listed = {c["name"]: c for c in json.loads(dockyard("--json", "context", "ls").stdout)}
        assert (listed["one"]["nats_url"], listed["one"]["registry"]) == (a.nats_url, a.registry_addr)
        assert (listed["two"]["nats_url"], listed["two"]["registry"]) == (b.nats_url, b.registry_addr)
        assert listed["one"]["state"] == listed["two"]["state"] == "running"

        dockyard("context", "use", "two")
        assert dockyard("context", "show").stdout.strip() == "two"
        assert "dyts/copied-to-b" in dockyard("images").stdout
        assert dockyard("ps", "-a", "-q").stdout == ""
        assert "dyts/only-a" in dockyard("images", DOCKYARD_CONTEXT="one").stdout
        assert cid[:12] in dockyard("--context", "one", "ps", "-q").stdout
        assert "dyts/only-a" in dockyard("--data-dir", str(a.data_dir), "images").stdout

        # with one stack gone, its CLI fails instead of finding the other
        a.cli("rm", "-f", cid)
        cid = ""
        assert stop_stack(a) == 0
        gone = a.cli("images", check=False)
        assert gone.returncode != 0 and "dyts/copied-to-b" not in gone.stdout
        assert json.loads(dockyard("--json", "context", "ls").stdout)[1]["state"] == "stopped"
        assert "dyts/copied-to-b" in dockyard("images").stdout
    finally:
        if cid:
            a.cli("rm", "-f", cid, check=False)
        for s in (a, b):
            assert stop_stack(s) == 0, (s.data_dir / "up.log").read_text(errors="replace")
