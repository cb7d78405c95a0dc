"""Restart policies (`--restart no|on-failure[:N]|always|unless-stopped`): whether and when."""

from __future__ import annotations

from shared.messages.agent import Container

MAX_BACKOFF = 10.0


def should_restart(c: Container) -> bool:
    """Whether an exited container's policy starts it again (never after a `stop`)."""
    p = c.config.restart
    if c.state.manual_stop or p.name == "no":
        return False
    if p.name == "on-failure":
        return (c.state.exit_code or 0) != 0 and (p.maximum_retry_count == 0
                                                 or c.state.restart_count < p.maximum_retry_count)
    return True  # always, unless-stopped


def backoff(c: Container) -> float:
    """Seconds before the next restart: doubling from 0.1 s, at most MAX_BACKOFF."""
    return min(0.1 * 2 ** c.state.restart_count, MAX_BACKOFF)
