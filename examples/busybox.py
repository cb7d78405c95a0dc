"""Images made from what Debian ships, with no registry to pull from: a busybox-static
rootfs, its tarball (for `dockyard import`) and an OCI image layout (for skopeo).

    python examples/busybox.py rootfs-tar OUT.tar
    python examples/busybox.py oci-layout DIR [TAG]
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "echo", "cat", "ls", "sleep", "true", "false", "httpd", "wget", "head", "tail",
           "dd", "env", "id", "mkdir", "rm", "touch", "ps", "kill", "date", "seq", "printf", "grep")


def busybox_rootfs(root: Path) -> Path:
    """A minimal rootfs: busybox-static, applet links, /etc/passwd and /etc/group."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for a in APPLETS:
        link = root / "bin" / a
        if not link.exists():
            link.symlink_to("busybox")
    for d in ("etc", "tmp", "proc", "sys", "dev", "root", "var/www"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return root


def tar_dir(root: Path) -> bytes:
    """An uncompressed, reproducible tar of `root`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(root.rglob("*")):
            info = tf.gettarinfo(str(path), arcname=str(path.relative_to(root)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with open(path, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_blob(layout: Path, data: bytes) -> dict:
    d = sha256(data)
    p = layout / "blobs" / "sha256" / d.split(":")[1]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return {"digest": d, "size": len(data)}


def oci_layout(layout: Path, layers_tar: list[bytes], *, tag: str = "latest",
               cmd: list[str] | None = None, env: list[str] | None = None) -> str:
    """An OCI image layout (`oci:LAYOUT:TAG` for skopeo); returns the manifest digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers, diff_ids = [], []
    for raw in layers_tar:
        gz = gzip.compress(raw, compresslevel=1, mtime=0)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **write_blob(layout, gz)})
        diff_ids.append(sha256(raw))
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Cmd": cmd or ["/bin/sh"], "Env": env or ["PATH=/bin"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cfg = write_blob(layout, json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cfg}, "layers": layers}
    mbytes = json.dumps(manifest).encode()
    m = write_blob(layout, mbytes)
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"schemaVersion": 2, "manifests": []}
    index["manifests"] = [x for x in index["manifests"]
                          if x.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
    index["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
                               "annotations": {"org.opencontainers.image.ref.name": tag}})
    index_path.write_text(json.dumps(index))
    return m["digest"]


def busybox_layout(layout: Path, work: Path, tag: str = "latest") -> str:
    return oci_layout(layout, [tar_dir(busybox_rootfs(work / "rootfs"))], tag=tag)


def _main(argv: list[str]) -> int:
    import sys
    import tempfile
    if len(argv) >= 2 and argv[0] == "rootfs-tar":
        with tempfile.TemporaryDirectory() as t:
            Path(argv[1]).write_bytes(tar_dir(busybox_rootfs(Path(t) / "rootfs")))
        return 0
    if len(argv) >= 2 and argv[0] == "oci-layout":
        with tempfile.TemporaryDirectory() as t:
            print(busybox_layout(Path(argv[1]), Path(t), argv[2] if len(argv) > 2 else "latest"))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


def skopeo_env(home: Path) -> dict[str, str]:
    """An environment in which skopeo keeps its blob-info cache and auth under `home`."""
    env = dict(os.environ)
    env["HOME"] = str(home)
    env["XDG_RUNTIME_DIR"] = str(home / "run")
    (home / "run").mkdir(parents=True, exist_ok=True)
    return env


if __name__ == "__main__":
    import sys
    sys.exit(_main(sys.argv[1:]))
