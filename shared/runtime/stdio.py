"""How a container's stdio is wired when the caller keeps it (interactive containers).

By default the shim holds a container's stdout/stderr and writes them to the log. An
interactive container's stdio belongs to the caller instead: either three pipe ends
(`fds`: the container's stdin, stdout, stderr) that the shim hands to the runtime and
closes once the container runs, or a console socket (`console_socket`) on which the
runtime sends the master of the pty it made for a `terminal: true` process.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StdioSpec:
    fds: tuple[int, int, int] | None = None
    console_socket: str = ""

    def __post_init__(self) -> None:
        if (self.fds is None) == (not self.console_socket):
            raise ValueError("a StdioSpec is either three fds or a console socket")

    def shim_options(self) -> list[str]:
        """The shim's leading options (shim.py `_options`)."""
        if self.fds is not None:
            return ["--stdio=" + ",".join(map(str, self.fds))]
        return ["--console=" + self.console_socket]

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return self.fds or ()
