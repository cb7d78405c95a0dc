"""msgspec JSON with hooks for dockyard's typed values (one encoder, cached decoders)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar

import msgspec

from shared.errors import InvalidArgument
from shared.oci.digest import Digest

T = TypeVar("T")


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, str):  # str subclasses such as Digest
        return str(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(typ: type, obj: Any) -> Any:
    if typ is Digest:
        if not isinstance(obj, str):
            raise ValueError("a digest must be a string")
        try:
            return Digest(obj)
        except InvalidArgument as e:
            raise ValueError(e.message) from e
    raise NotImplementedError(f"cannot decode {typ!r}")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


@lru_cache(maxsize=None)
def decoder(typ: Any) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(typ, dec_hook=_dec_hook)


def decode(data: bytes | str, typ: type[T]) -> T:
    """Decode and validate; malformed input becomes InvalidArgument."""
    try:
        return decoder(typ).decode(data)
    except msgspec.ValidationError as e:
        raise InvalidArgument(f"invalid {getattr(typ, '__name__', 'message')}: {e}") from e
    except msgspec.DecodeError as e:
        raise InvalidArgument(f"malformed JSON for {getattr(typ, '__name__', 'message')}: {e}") from e


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj, enc_hook=_enc_hook)
