"""Restart policies as docker applies them: whether an exited container starts again, and when."""

from __future__ import annotations

import pytest

from services.runtime_agent.containers.config import parse_restart
from services.runtime_agent.containers.restart import MAX_BACKOFF, backoff, should_restart
from services.runtime_agent.containers.signals import parse_signal
from shared.errors import InvalidArgument
from shared.messages.agent import Container, ContainerConfig, ContainerState


def exited(policy: str, code: int, *, restarts: int = 0, stopped: bool = False) -> Container:
    return Container(id="c" * 64, name="c", host="h", created="", config=ContainerConfig(
        image="busybox", restart=parse_restart(policy)), state=ContainerState(
        status="exited", exit_code=code, restart_count=restarts, manual_stop=stopped))


@pytest.mark.parametrize("policy,code,restarts,stopped,again", [
    ("no", 1, 0, False, False),
    ("on-failure", 0, 0, False, False),
    ("on-failure", 1, 5, False, True),  # no count: no limit
    ("on-failure:2", 1, 1, False, True),
    ("on-failure:2", 1, 2, False, False),
    ("always", 0, 9, False, True),
    ("always", 0, 0, True, False),  # a `stop` is never undone
    ("unless-stopped", 137, 0, False, True),
    ("unless-stopped", 137, 0, True, False),
])
def test_should_restart(policy, code, restarts, stopped, again):
    assert should_restart(exited(policy, code, restarts=restarts, stopped=stopped)) is again


def test_backoff_doubles_up_to_its_bound():
    assert [backoff(exited("always", 1, restarts=n)) for n in range(3)] == [0.1, 0.2, 0.4]
    assert backoff(exited("always", 1, restarts=50)) == MAX_BACKOFF


def test_signals_by_name_or_number():
    assert parse_signal("KILL") == parse_signal("sigkill") == parse_signal("9") == 9
    for bad in ("SIGNOPE", "0", "65"):
        with pytest.raises(InvalidArgument, match="invalid signal"):
            parse_signal(bad)
