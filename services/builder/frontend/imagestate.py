"""The image config as a build changes it, and its OCI JSON form.

Docker-only fields that the OCI config has no slot for (Healthcheck, OnBuild,
Shell) are kept under their Docker names inside `config`, as BuildKit does, so
docker, podman and skopeo all read them back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any


DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ImageState:
    env: dict[str, str] = field(default_factory=dict)  # insertion-ordered, like docker's Env list
    user: str = ""
    workdir: str = ""
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    exposed_ports: dict[str, dict] = field(default_factory=dict)
    volumes: dict[str, dict] = field(default_factory=dict)
    stop_signal: str = ""
    healthcheck: dict[str, Any] | None = None
    onbuild: list[str] = field(default_factory=list)
    shell: list[str] | None = None
    author: str = ""
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    def clone(self) -> "ImageState":
        return copy.deepcopy(self)

    @property
    def shell_argv(self) -> list[str]:
        return list(self.shell) if self.shell else list(DEFAULT_SHELL)

    def env_list(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.env.items()]

    @classmethod
    def scratch(cls, os_: str = "linux", arch: str = "amd64") -> "ImageState":
        # BuildKit gives every stage a PATH when its base sets none.
        return cls(env={"PATH": DEFAULT_PATH}, os=os_, architecture=arch)

    @classmethod
    def from_oci(cls, doc: dict[str, Any]) -> "ImageState":
        """The state of a base image, from its config JSON."""
        c = doc.get("config") or {}
        env: dict[str, str] = {}
        for item in c.get("Env") or []:
            k, _, v = item.partition("=")
            env[k] = v
        if "PATH" not in env:
            env = {"PATH": DEFAULT_PATH, **env}
        return cls(
            env=env,
            user=c.get("User") or "",
            workdir=c.get("WorkingDir") or "",
            entrypoint=c.get("Entrypoint"),
            cmd=c.get("Cmd"),
            labels=dict(c.get("Labels") or {}),
            exposed_ports=dict(c.get("ExposedPorts") or {}),
            volumes=dict(c.get("Volumes") or {}),
            stop_signal=c.get("StopSignal") or "",
            healthcheck=c.get("Healthcheck"),
            # The base's ONBUILD triggers: dispatch runs them right after FROM and
            # clears them, so the child's config never inherits them.
            onbuild=list(c.get("OnBuild") or []),
            shell=c.get("Shell"),
            author=doc.get("author") or "",
            os=doc.get("os") or "linux",
            architecture=doc.get("architecture") or "amd64",
            variant=doc.get("variant") or "",
        )

    def to_oci_config(self) -> dict[str, Any]:
        """The `config` object of an OCI image config (empty fields omitted)."""
        c: dict[str, Any] = {}
        if self.user:
            c["User"] = self.user
        if self.exposed_ports:
            c["ExposedPorts"] = dict(sorted(self.exposed_ports.items()))
        if self.env:
            c["Env"] = self.env_list()
        if self.entrypoint is not None:
            c["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            c["Cmd"] = self.cmd
        if self.volumes:
            c["Volumes"] = dict(sorted(self.volumes.items()))
        if self.workdir:
            c["WorkingDir"] = self.workdir
        if self.labels:
            c["Labels"] = dict(sorted(self.labels.items()))
        if self.stop_signal:
            c["StopSignal"] = self.stop_signal
        if self.healthcheck is not None:
            c["Healthcheck"] = self.healthcheck
        if self.onbuild:
            c["OnBuild"] = self.onbuild
        if self.shell:
            c["Shell"] = self.shell
        return c
