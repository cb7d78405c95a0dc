"""What authentication costs a CLI command: bus_lite connects, and the import of the signing code.

    .venv/bin/python bench/bus_connect.py [--rounds 300]

Starts three nats-servers (JetStream off: connects only) on loopback ports it lets the
kernel pick: no auth, operator mode with a user JWT (what dockyard uses), and a bcrypt
password user at cost 4 and at cost 11. Prints the median connect+PING of bus_lite for
each, then the import time of the nonce-signing path in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bcrypt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared import bus_lite, credentials, permissions  # noqa: E402
from shared.natsserver import find_binary  # noqa: E402


def start(conf: Path, log: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([find_binary(), "-a", "127.0.0.1", "-p", "-1", "-c", str(conf), "-l", str(log)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            if "Listening for client connections on" in line:
                return proc, int(line.rsplit(":", 1)[1])
        time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"nats-server did not start: {log.read_text()}")


async def median_connect(url: str, rounds: int, creds: str = "") -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        c = await bus_lite.connect(url, creds=creds)
        times.append(time.perf_counter() - t)
        await c.nc.close()
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300)
    rounds = ap.parse_args().rounds
    tmp = Path(tempfile.mkdtemp(prefix="dybench-auth-"))
    authority = credentials.Authority(credentials.credentials_dir(tmp))
    creds = tmp / "admin.creds"
    creds.write_text(authority.issue(permissions.person("admin"), permissions.role("admin", "admin")))
    confs = {"none": "", "jwt": authority.server_config()}
    for cost in (4, 11):
        h = bcrypt.hashpw(b"p" * 43, bcrypt.gensalt(cost)).decode()
        confs[f"bcrypt-{cost}"] = f'authorization {{ users: [{{user: u, password: "{h}"}}] }}\n'
    procs = []
    try:
        urls = {}
        for name, text in confs.items():
            (tmp / f"{name}.conf").write_text(text)
            proc, port = start(tmp / f"{name}.conf", tmp / f"{name}.log")
            procs.append(proc)
            urls[name] = f"nats://127.0.0.1:{port}" if not name.startswith("bcrypt") \
                else f"nats://u:{'p' * 43}@127.0.0.1:{port}"
        for name, url in urls.items():
            ms = asyncio.run(median_connect(url, rounds, str(creds) if name == "jwt" else ""))
            print(f"connect+PING  {name:10s} median {ms:6.2f} ms")
        # what a CLI process has imported already when it connects, then the signing code
        code = ("import asyncio, msgspec, typing, enum, base64, os; import shared.bus_lite, shared.credentials; "
                "import time; t = time.perf_counter(); import nkeys; print((time.perf_counter() - t) * 1000)")
        imports = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                        cwd=Path(__file__).resolve().parents[1]).stdout) for _ in range(9)]
        print(f"import of the nonce-signing code in a CLI process: median {statistics.median(imports):6.2f} ms")
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
