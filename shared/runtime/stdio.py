"""How a container's stdio is wired when the caller keeps it (interactive containers).

By default the shim holds a container's stdout/stderr and writes them to the log. An
interactive container's stdio belongs to the caller instead: either three pipe ends
(`fds`: the container's stdin, stdout, stderr) that the shim hands to the runtime and
closes once the container runs, or a console socket (`console_socket`) on which the
runtime sends the master of the pty it made for a `terminal: true` process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class StdioSpec:
    """`fds` (the container's pipe ends) and `hold` (the caller's, which the shim keeps open
    so that they outlive the caller), or `console_socket`: a path where the shim listens for
    the runtime's pty master and keeps it. Either way `ShimRecord.held` lists the shim's fd
    numbers of what it keeps, for the caller to take copies of (`take_held`)."""

    fds: tuple[int, int, int] | None = None
    hold: tuple[int, ...] = ()
    console_socket: str = ""
    ack: int = -1  # the read end of a pipe: once the caller closes the other, the shim may exit

    def __post_init__(self) -> None:
        if (self.fds is None) == (not self.console_socket):
            raise ValueError("a StdioSpec is either three fds or a console socket")

    def shim_options(self) -> list[str]:
        """The shim's leading options (shim.py `_options`)."""
        ack = [f"--ack={self.ack}"] if self.ack >= 0 else []
        if self.fds is not None:
            return ["--stdio=" + ",".join(map(str, self.fds)),
                    *(["--hold=" + ",".join(map(str, self.hold))] if self.hold else []), *ack]
        return ["--console=" + self.console_socket, *ack]

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (*(self.fds or ()), *self.hold, *((self.ack,) if self.ack >= 0 else ()))


_SYS_PIDFD_GETFD = 438  # x86_64 and aarch64 alike (asm-generic)


def take_held(shim_pid: int, shim_start: int, held: tuple[int, ...]) -> list[int]:
    """Copies (close-on-exec) of the fds a running shim holds; [] if it is gone."""
    import ctypes

    from shared.runtime import records
    pidfd = records.open_pidfd(shim_pid, shim_start)
    if pidfd is None:
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    out: list[int] = []
    try:
        for fd in held:
            got = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
            if got < 0:
                for f in out:
                    os.close(f)
                err = ctypes.get_errno()
                raise OSError(err, f"pidfd_getfd of the shim's fd {fd}: {os.strerror(err)}")
            out.append(got)
    finally:
        os.close(pidfd)
    return out
