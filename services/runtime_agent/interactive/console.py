"""The console socket: the OCI runtime connects once and sends the master of the pty it made."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile

from shared.errors import Unavailable


class ConsoleSocket:
    def __init__(self) -> None:
        # A directory of its own under /tmp: a socket path has 108 bytes at most.
        self.dir = tempfile.mkdtemp(prefix="dycon-")
        self.path = os.path.join(self.dir, "s")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.sock.setblocking(False)

    async def master(self, timeout: float = 30.0) -> int:
        """The pty master's fd (close-on-exec), once the runtime has sent it."""
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await asyncio.wait_for(loop.sock_accept(self.sock), timeout)
        except TimeoutError as e:
            raise Unavailable("the runtime did not send the container's terminal") from e
        with conn:
            conn.settimeout(timeout)
            _, fds, _, _ = await asyncio.to_thread(socket.recv_fds, conn, 4096, 1, socket.MSG_CMSG_CLOEXEC)
        if not fds:
            raise Unavailable("the runtime sent no terminal on the console socket")
        for extra in fds[1:]:
            os.close(extra)
        return fds[0]

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
