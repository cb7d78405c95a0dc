"""The agent's resolution of the issue-11 flags against an image config (runflags.py)."""

from __future__ import annotations

import pytest

from services.runtime_agent.containers.runflags import (check_privilege, exposed_publish, privilege_needed,
                                                         resolve, stop_with)
from shared.errors import InvalidArgument, PermissionDenied
from shared.messages.agent import NEEDS_PRIVILEGE
from shared.messages.runflags import Health, HostEntry, RunFlags
from shared.oci.manifest import ContainerConfig, HealthConfig

IMAGE = ContainerConfig(stop_signal="SIGQUIT", exposed_ports={"80/tcp": {}, "53/udp": {}},
                        healthcheck=HealthConfig(test=["CMD", "true"], interval=5_000_000_000, retries=4))


def test_the_images_stopsignal_and_healthcheck_apply_under_the_flags():
    r = resolve(RunFlags(), IMAGE)
    assert r.stop_signal == "SIGQUIT"
    assert r.health == Health(test=["CMD", "true"], interval=5.0, retries=4)
    r = resolve(RunFlags(stop_signal="USR1", health=Health(interval=1.0)), IMAGE)
    assert r.stop_signal == "USR1" and r.health == Health(test=["CMD", "true"], interval=1.0, retries=4)
    assert resolve(RunFlags(health=Health(test=["NONE"])), IMAGE).health is None
    assert resolve(RunFlags(), ContainerConfig()).stop_signal == "SIGTERM"
    assert stop_with(r, None) == (10.0, 10) and stop_with(r, 2.0) == (2.0, 10)
    assert stop_with(resolve(RunFlags(stop_timeout=3), IMAGE), None) == (3.0, 3)


def test_publish_all_takes_every_exposed_port():
    assert exposed_publish(IMAGE) == ["0:53/udp", "0:80/tcp"]
    assert exposed_publish(ContainerConfig()) == []


@pytest.mark.parametrize("flags, message", [
    (RunFlags(stop_signal="SIGNOPE"), "invalid signal"), (RunFlags(cap_add=["FLY"]), "unknown capability"),
    (RunFlags(dns=["resolver"]), "--dns"), (RunFlags(add_hosts=[HostEntry(name="a b", ip="10.0.0.1")]), "add-host"),
    (RunFlags(health=Health(test=["SHELL", "x"])), "health check"), (RunFlags(cpus=10_000), "CPUs"),
])
def test_bad_values_from_the_bus_are_refused(flags, message):
    with pytest.raises(InvalidArgument, match=message):
        resolve(flags, ContainerConfig())


def test_what_gives_the_host_away_needs_the_admin_verb():
    assert privilege_needed(RunFlags(cap_add=["NET_ADMIN", "chown"])) == ""
    assert privilege_needed(RunFlags(cap_add=["sys_admin"])) == "--cap-add CAP_SYS_ADMIN"
    assert privilege_needed(RunFlags(privileged=True)) == "--privileged"
    with pytest.raises(PermissionDenied) as ei:
        check_privilege(RunFlags(seccomp_profile="{}"), allowed=False)
    assert ei.value.detail_code == NEEDS_PRIVILEGE
    check_privilege(RunFlags(privileged=True), allowed=True)
