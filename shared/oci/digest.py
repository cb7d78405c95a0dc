"""Content digests (`algorithm:hex`), parsed once and hashed incrementally."""

from __future__ import annotations

import re

from shared.errors import InvalidArgument

_HEX_LEN = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


class Digest(str):
    """A validated digest; being a `str` it keys dicts and joins paths as is."""

    __slots__ = ()

    def __new__(cls, value: str) -> "Digest":
        if isinstance(value, Digest):
            return value
        m = _DIGEST_RE.match(value or "")
        if not m:
            raise InvalidArgument(f"invalid digest {value!r}", detail_code="DIGEST_INVALID")
        alg, hexpart = m.groups()
        if alg not in _HEX_LEN:
            raise InvalidArgument(f"unsupported digest algorithm {alg!r}", detail_code="DIGEST_INVALID")
        if len(hexpart) != _HEX_LEN[alg] or not re.fullmatch(r"[0-9a-f]+", hexpart):
            raise InvalidArgument(f"invalid {alg} digest {value!r}", detail_code="DIGEST_INVALID")
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        return self.split(":", 1)[0]

    @property
    def hex(self) -> str:  # type: ignore[override]
        return self.split(":", 1)[1]

    @property
    def short(self) -> str:
        """The 12-hex id docker shows."""
        return self.hex[:12]

    @classmethod
    def from_bytes(cls, data: bytes, algorithm: str = "sha256") -> "Digest":
        import hashlib  # on first use: OpenSSL's module costs every CLI command ~2 ms otherwise
        return cls(f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")

    def hasher(self) -> "Hasher":
        return Hasher(self.algorithm)


class Hasher:
    """Incremental digest of streamed bytes, counting them too."""

    __slots__ = ("algorithm", "_h", "size")

    def __init__(self, algorithm: str = "sha256"):
        if algorithm not in _HEX_LEN:
            raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}", detail_code="DIGEST_INVALID")
        self.algorithm = algorithm
        import hashlib
        self._h = hashlib.new(algorithm)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._h.update(chunk)
        self.size += len(chunk)

    def digest(self) -> Digest:
        return Digest(f"{self.algorithm}:{self._h.hexdigest()}")


def parse_digest(value: str) -> Digest:
    return Digest(value)


SUPPORTED_ALGORITHMS = tuple(_HEX_LEN)
EMPTY_SHA256 = Digest("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
