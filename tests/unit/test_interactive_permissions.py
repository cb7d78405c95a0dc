"""The interactive subjects (attach, exec, stdin): the operator role's, and bound to their agent."""

from __future__ import annotations

from shared import permissions, subjects

VERBS = (subjects.AGENT_ATTACH, subjects.AGENT_EXEC, subjects.AGENT_STDIN)


def _may_publish(p: permissions.Permissions, subject: str) -> bool:
    return any(permissions.matches(pat, subject) for pat in p.publish)


def test_attach_exec_and_stdin_need_the_operator_role():
    for verb in VERBS:
        subject = subjects.agent("host-1", verb)
        assert permissions.required_role(subject) == "operator", verb
        assert not _may_publish(permissions.role("ann", "reader"), subject)
        assert _may_publish(permissions.role("ann", "operator"), subject)


def test_only_the_owning_agent_serves_them():
    mine = permissions.service(subjects.RUNTIME_AGENT, agent_id="host-1")
    for verb in VERBS:
        assert any(permissions.matches(p, subjects.agent("host-1", verb)) for p in mine.subscribe)
        assert not any(permissions.matches(p, subjects.agent("host-2", verb)) for p in mine.subscribe)
