"""`dockyard run` against a whole `dockyard up` stack: the agent pulls from the stack's own
registry (token auth over the bus) an image pushed there by skopeo, and runs it."""

from __future__ import annotations

import os

import pytest

from tests.support.images import busybox_layout, skopeo_env
from tests.e2e.conftest import skopeo

pytestmark = [pytest.mark.e2e, pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root and an OCI runtime")]


def test_run_an_image_pushed_to_the_stack(stack, tmp_path):
    layout = tmp_path / "layout"
    busybox_layout(layout, tmp_path / "work")
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", stack.admin_creds, f"oci:{layout}:latest",
           f"docker://{stack.registry_addr}/dyag/busybox:1", env=skopeo_env(tmp_path / "home"))
    p = stack.cli("run", "--rm", "--network", "none", "dyag/busybox:1", "sh", "-c", "echo hi; exit 4",
                  check=False)
    assert (p.returncode, p.stdout) == (4, "hi\n"), p.stderr + stack.log("runtime-agent")
    # the fully qualified name is the same image: no second pull
    p = stack.cli("run", "--rm", "--network", "none", f"{stack.registry_addr}/dyag/busybox:1", "true")
    assert "pulling" not in p.stderr
    agents = stack.cli("agents").stdout
    assert "runtime-agent" not in agents.splitlines()[0] and len(agents.splitlines()) == 2
    # what that agent now holds, by its id, as the garbage-collector will see it
    import json
    agent_id = json.loads(stack.cli("agents", "--json").stdout)[0]["agent_id"]
    held = json.loads(stack.cli("images", "--host", agent_id, "--json").stdout)
    assert any(f"{stack.registry_addr}/dyag/busybox:1" in r["references"] for r in held), held
    table = stack.cli("images", "--host", agent_id).stdout
    assert table.splitlines()[0].split() == ["REFERENCE", "IMAGE", "ID", "CREATED", "SIZE"]
    assert "dyag/busybox:1" in table
    missing = stack.cli("images", "--host", "no-such-agent", check=False)
    assert missing.returncode != 0 and "no-such-agent" in missing.stderr
