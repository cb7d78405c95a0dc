"""Image references (`[registry/]path[:tag][@digest]`) with Docker's normalisation rules.

An unqualified name (`busybox`, `kuard-amd64:1`) has no registry: dockyard keeps
such images in the stack's own registry, under `library/` for one-component names,
as docker does for Docker Hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from shared.errors import InvalidArgument
from shared.oci.digest import Digest

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
# The spec's tag grammar, ASCII only (`\w` would take any letter) and whole (`$` would take a final newline).
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DOMAIN_RE = re.compile(r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?$|^\[[0-9a-fA-F:.]+\](?::[0-9]+)?$")
MAX_NAME_LENGTH = 255
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
DOCKER_HUB = "docker.io"


def parse_repository(name: str) -> str:
    """A validated repository path (as in `/v2/<name>/...`); NAME_INVALID otherwise."""
    if not name or len(name) > MAX_NAME_LENGTH or not _PATH_RE.match(name):
        raise InvalidArgument(f"invalid repository name {name!r}", detail_code="NAME_INVALID")
    return name


def parse_tag(tag: str) -> str:
    if not _TAG_RE.fullmatch(tag or ""):
        raise InvalidArgument(f"invalid tag {tag!r}", detail_code="TAG_INVALID")
    return tag


def is_domain(component: str) -> bool:
    """Docker's rule: the first component names a registry if it looks like a host."""
    return ("." in component or ":" in component or component == "localhost"
            or component != component.lower()) and bool(_DOMAIN_RE.match(component))


@dataclass(frozen=True)
class Reference:
    domain: str | None  # None: the stack's own registry
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        if not text or text != text.strip():
            raise InvalidArgument(f"invalid reference {text!r}")
        rest, digest = text, None
        if "@" in rest:
            rest, d = rest.split("@", 1)
            digest = Digest(d)
        tag = None
        slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > slash:
            rest, tag = rest[:colon], parse_tag(rest[colon + 1:])
        domain = None
        first, _, remainder = rest.partition("/")
        if remainder and is_domain(first):
            domain, rest = first, remainder
        if domain in (DOCKER_HUB, "index.docker.io", "registry-1.docker.io"):
            domain = DOCKER_HUB
        if (domain is None or domain == DOCKER_HUB) and "/" not in rest:
            rest = f"{DEFAULT_NAMESPACE}/{rest}"
        if not _PATH_RE.match(rest) or len(rest) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"invalid reference {text!r}: repository name must be lowercase "
                                  f"[a-z0-9] components separated by / . _ -", detail_code="NAME_INVALID")
        return cls(domain=domain, path=rest, tag=tag, digest=digest)

    @property
    def repository(self) -> str:
        """Registry-qualified repository name, as users write it."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def reference(self) -> str:
        """What to fetch from the registry: the digest if pinned, else the tag."""
        return str(self.digest) if self.digest else (self.tag or DEFAULT_TAG)

    def with_tag(self, tag: str) -> "Reference":
        return replace(self, tag=parse_tag(tag), digest=None)

    def with_digest(self, digest: Digest) -> "Reference":
        return replace(self, digest=Digest(digest))

    def with_domain(self, domain: str | None) -> "Reference":
        return replace(self, domain=domain)

    def familiar(self) -> str:
        """The short form docker shows (`busybox:latest` rather than `library/busybox:latest`)."""
        path = self.path
        if self.domain is None and path.startswith(DEFAULT_NAMESPACE + "/"):
            path = path[len(DEFAULT_NAMESPACE) + 1:]
        name = f"{self.domain}/{path}" if self.domain else path
        return name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        s = self.repository
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s
