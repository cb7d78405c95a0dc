"""buildx-style `key=value,key=value` options (`--output`, `--cache-to`, `--cache-from`)."""

from __future__ import annotations

from shared.errors import InvalidArgument


def key_values(text: str, flag: str) -> dict[str, str]:
    """The fields of `text`, keys lower-cased; a part without `=` is refused, naming `flag`."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        k, eq, v = part.partition("=")
        if not eq:
            raise InvalidArgument(f"{flag} {text!r}: {part!r} is not key=value")
        fields[k.strip().lower()] = v.strip()
    return fields
