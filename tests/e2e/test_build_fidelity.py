"""Docker/BuildKit semantics the builder must match, each checked in the built layer tars."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.e2e.conftest import skopeo
from tests.e2e.test_build import _layers, base, build_json, make_context  # noqa: F401 (base: a fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.root]







def _members(stack, tmp: Path, tag: str) -> list[dict[str, tarfile.TarInfo]]:
    """Each layer's tar members by name, from the pushed image."""
    out = tmp / "oci"
    skopeo("copy", "--src-tls-verify=false", "--src-creds", stack.admin_creds,
           f"docker://{stack.registry_addr}/library/{tag}", f"oci:{out}:x")
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    layers = []
    for d in manifest["layers"]:
        data = gzip.decompress((out / "blobs/sha256" / d["digest"][7:]).read_bytes())
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            layers.append({m.name.rstrip("/"): m for m in tf.getmembers()})
    return layers


def test_chown_without_group(stack, base, tmp_path):
    """A uid alone is also the gid; a name alone takes its passwd group (BuildKit's file ops)."""
    ctx = make_context(tmp_path, "FROM busybox:latest\n"
                         "RUN echo 'app:x:1002:1500::/:/bin/sh' >> /etc/passwd && echo 'staff:x:1600:' >> /etc/group\n"
                         "COPY --chown=1001 f /opt/\n"
                         "COPY --chown=app f /n/\n"
                         "COPY --chown=app:staff f /s/\n"
                         "COPY --chown=7:8 f /g/\n", {"f": "x\n"})
    build_json(stack, ctx, "-t", "dybf-chown:1")
    layers = _members(stack, tmp_path, "dybf-chown:1")
    owners = {name: (layers[i][name].uid, layers[i][name].gid)
              for i, name in ((-4, "opt/f"), (-3, "n/f"), (-2, "s/f"), (-1, "g/f"))}
    assert owners == {"opt/f": (1001, 1001), "n/f": (1002, 1500), "s/f": (1002, 1600), "g/f": (7, 8)}


def test_same_layer_twice_then_run(stack, base, tmp_path):
    """Two COPYs that make the same layer, then a RUN on top: the overlay holds it twice."""
    ctx = make_context(tmp_path, "FROM busybox:latest\nRUN mkdir /existing\n"
                         "COPY one.txt /existing/\nCOPY one.txt /existing\n"
                         "RUN cat /existing/one.txt > /seen\n", {"one.txt": "one\n"})
    out = build_json(stack, ctx, "-t", "dybf-twice:1")
    copies = [s["layer"] for s in out["steps"] if s["instruction"].startswith("COPY")]
    assert len(copies) == 2 and copies[0] == copies[1]
    config, layers = _layers(stack, tmp_path, "dybf-twice:1")
    assert len(set(config["rootfs"]["diff_ids"][-3:-1])) == 1
    assert layers[-1]["seen"] == b"one\n"


def test_ignored_dockerfile_and_dockerignore_are_not_copied(stack, base, tmp_path):
    ctx = make_context(tmp_path, "FROM busybox:latest\nCOPY . /src\n",
               {".dockerignore": "*\n!app.txt\n", "app.txt": "app\n", "other.txt": "no\n"})
    build_json(stack, ctx, "-t", "dybf-ignore:1")
    _, layers = _layers(stack, tmp_path, "dybf-ignore:1")
    assert sorted(n for n in layers[-1] if n.startswith("src/")) == ["src/app.txt"]
    # Not ignored: copied as docker does.
    (ctx / ".dockerignore").write_text("other.txt\n")
    build_json(stack, ctx, "-t", "dybf-ignore:2")
    (tmp_path / "2").mkdir()
    _, layers = _layers(stack, tmp_path / "2", "dybf-ignore:2")
    assert sorted(n for n in layers[-1] if n.startswith("src/")) == ["src/.dockerignore", "src/Dockerfile",
                                                                    "src/app.txt"]


def test_destination_symlinks_are_followed_inside_the_image(stack, base, tmp_path):
    ctx = make_context(tmp_path, "FROM busybox:latest\n"
                         "RUN mkdir -p /opt/real /opt/wd && ln -s /opt/real /link && ln -s ../../opt/wd /rel "
                         "&& ln -s /etc /host-etc\n"
                         "COPY tool.sh /link/bin/\n"
                         "WORKDIR /rel/sub\n"
                         "COPY tool.sh .\n"
                         "COPY tool.sh /host-etc/dybf-tool\n", {"tool.sh": "#!/bin/sh\n"})
    build_json(stack, ctx, "-t", "dybf-link:1")
    _, layers = _layers(stack, tmp_path, "dybf-link:1")
    assert "opt/real/bin/tool.sh" in layers[-4] and not any(n.startswith("link/") for n in layers[-4])
    assert "opt/wd/sub" in layers[-3]  # WORKDIR made the dir through the relative link
    assert "opt/wd/sub/tool.sh" in layers[-2]
    assert "etc/dybf-tool" in layers[-1]  # the image's /etc, never the host's
    assert not Path("/etc/dybf-tool").exists()


def test_wildcard_matching_nothing_copies_nothing(stack, base, tmp_path):
    ctx = make_context(tmp_path, "FROM busybox:latest\nCOPY notes.tm[p] ./www/\nCOPY keep.txt ./www/\n",
               {".dockerignore": "notes.tmp\n", "notes.tmp": "x", "keep.txt": "k\n"})
    out = build_json(stack, ctx, "-t", "dybf-glob:1")
    assert out["steps"][0]["layer"] is None  # nothing copied: an empty layer
    _, layers = _layers(stack, tmp_path, "dybf-glob:1")
    assert "www/keep.txt" in layers[-1] and not any("notes" in n for layer in layers for n in layer)
    # A source without wildcards must still exist.
    (ctx / "Dockerfile").write_text("FROM busybox:latest\nCOPY notes.tmp ./www/\n")
    p = stack.cli("build", "-t", "dybf-glob:2", str(ctx), check=False)
    assert p.returncode != 0 and "notes.tmp" in p.stderr and "not found" in p.stderr


def test_copy_exclude_patterns(stack, base, tmp_path):
    ctx = make_context(tmp_path, "FROM busybox:latest\nCOPY --exclude=*.md --exclude=tmp . /app/\n",
               {"a.txt": "a", "README.md": "r", "docs/b.md": "b", "docs/c.txt": "c", "tmp/x": "x"})
    build_json(stack, ctx, "-t", "dybf-exclude:1")
    _, layers = _layers(stack, tmp_path, "dybf-exclude:1")
    names = set(layers[-1])
    assert {"app/a.txt", "app/docs/c.txt", "app/docs/b.md"} <= names  # `*.md` matches at the top only
    assert "app/README.md" not in names and not any(n.startswith("app/tmp") for n in names)
