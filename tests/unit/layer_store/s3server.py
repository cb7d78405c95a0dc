"""A real S3 server for the tests: SeaweedFS's `weed server -s3` in its own process on 127.0.0.1.

It is given one identity (a random access key and secret) in its S3 config, so every
request must carry a valid SigV4 signature of that key; anonymous or wrongly signed
requests are refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NamedTuple

from services.layer_store.storage.s3_client import S3Client, S3Config

# master, volume, filer and s3 each listen on an HTTP and a gRPC port.
_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
          "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")
_START_TRIES = 4


class S3Server(NamedTuple):
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def config(self, bucket: str) -> S3Config:
        return S3Config(self.endpoint, bucket, self.access_key, self.secret_key, self.region)


class WeedProcess(NamedTuple):
    proc: subprocess.Popen
    ports: dict[str, int]
    server: S3Server


def _below_ephemeral_range() -> tuple[int, int]:
    """Ports the kernel never hands to a bind(0): other suites' servers cannot take them."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return 20000, max(20000 + len(_PORTS) * 10, low - 1)


def _port_is_free(port: int, ip: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def _pick_ports(ip: str = "127.0.0.1") -> dict[str, int]:
    # A child's ports cannot be bound as 0 and read back, so they are drawn at random
    # outside the ephemeral range and checked free; a port taken between the check and
    # weed's own bind makes weed exit, and `start_weed` retries with fresh ports. SystemRandom:
    # pytest-randomly seeds `random` alike in every xdist worker, they would draw the same ports.
    lo, hi = _below_ephemeral_range()
    while True:
        ports = random.SystemRandom().sample(range(lo, hi), len(_PORTS))
        if all(_port_is_free(p, ip) for p in ports):
            return dict(zip(_PORTS, ports))


def _unix_sockets(ports: dict[str, int]) -> list[Path]:
    """The sockets weed leaves in /tmp, named by its gRPC ports (no flag moves them)."""
    return [Path(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{ports[name]}.sock")
            for name in _PORTS if name.endswith(".grpc")]


def _wait_s3(endpoint: str, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """True once S3 answers (an unsigned request is refused: 403); False if weed exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            urllib.request.urlopen(endpoint + "/", timeout=1).close()
            raise RuntimeError("weed's S3 answered an anonymous request: no identity configured")
        except urllib.error.HTTPError as e:
            if e.code == 403:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"weed's S3 at {endpoint} did not answer within {timeout:g}s")


def start_weed(workdir: Path, ip: str = "127.0.0.1") -> WeedProcess:
    """weed listening on `ip` (another address than loopback: one on a bridge the test made)."""
    exe = shutil.which("weed", path=str(Path(sys.executable).parent)) or "weed"
    access_key = "DY" + secrets.token_hex(9).upper()
    secret_key = secrets.token_urlsafe(30)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "dockyard-tests", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    for attempt in range(_START_TRIES):
        ports = _pick_ports(ip)
        data = workdir / f"data{attempt}"
        data.mkdir()
        args = [exe, "server", f"-dir={data}", f"-ip={ip}", f"-ip.bind={ip}", "-s3",
                f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", "-volume.max=100", "-master.volumeSizeLimitMB=64",
                f"-filer.localSocket={workdir}/filer{attempt}.sock",
                f"-s3.localSocket={workdir}/s3-{attempt}.sock",
                *(f"-{name}={port}" for name, port in ports.items())]
        with open(workdir / f"weed{attempt}.log", "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                    start_new_session=True)
        endpoint = f"http://{ip}:{ports['s3.port']}"
        weed = WeedProcess(proc, ports, S3Server(endpoint, access_key, secret_key))
        try:
            if _wait_s3(endpoint, proc):
                return weed
        except BaseException:
            stop_weed(weed)
            raise
        stop_weed(weed)  # exited early: most likely a port was taken meanwhile
    raise RuntimeError(f"weed did not start in {_START_TRIES} tries; see {workdir}/weed*.log")


def stop_weed(weed: WeedProcess) -> None:
    # SIGKILL at once: weed's graceful stop takes ~25 s (SIGTERM or SIGINT alike), and
    # nothing it stored outlives the test
    if weed.proc.poll() is None:
        os.killpg(weed.proc.pid, signal.SIGKILL)
        weed.proc.wait()
    for sock in _unix_sockets(weed.ports):
        sock.unlink(missing_ok=True)


def make_bucket(server: S3Server, bucket: str) -> None:
    """Create `bucket` on the server (from outside any event loop)."""
    async def create() -> None:
        client = S3Client(server.config(bucket))
        try:
            await client.create_bucket()
        finally:
            await client.close()
    asyncio.run(create())
