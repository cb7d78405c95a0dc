"""docker's health rules on probe results (health.judge)."""

from __future__ import annotations

from services.runtime_agent.containers.health import KEPT_PROBES, argv, judge
from shared.messages.agent import ContainerState
from shared.messages.runflags import Health, HealthProbe

CHECK = Health(test=["CMD-SHELL", "test -f /ok"], retries=2)


def _probe(code: int) -> HealthProbe:
    return HealthProbe(start="s", end="e", exit_code=code, output="")


def test_retries_failures_in_a_row_make_it_unhealthy_and_one_success_heals():
    st = ContainerState(status="running", health="starting")
    st = judge(st, _probe(1), CHECK, in_start_period=False)
    assert (st.health, st.failing_streak) == ("starting", 1)
    st = judge(st, _probe(1), CHECK, in_start_period=False)
    assert (st.health, st.failing_streak) == ("unhealthy", 2)
    st = judge(st, _probe(0), CHECK, in_start_period=False)
    assert (st.health, st.failing_streak) == ("healthy", 0)


def test_failures_in_the_start_period_do_not_count_and_the_log_is_bounded():
    st = ContainerState(status="running", health="starting")
    for _ in range(10):
        st = judge(st, _probe(1), CHECK, in_start_period=True)
    assert (st.health, st.failing_streak, len(st.health_log)) == ("starting", 0, KEPT_PROBES)
    assert judge(st, _probe(0), CHECK, in_start_period=True).health == "healthy"


def test_cmd_and_cmd_shell():
    assert argv(CHECK) == ["/bin/sh", "-c", "test -f /ok"]
    assert argv(Health(test=["CMD", "/bin/true", "x"])) == ["/bin/true", "x"]
