"""docker's `--mount type=volume|bind|tmpfs,source=..,target=..[,readonly]...` as a typed Mount."""

from __future__ import annotations

from shared.errors import InvalidArgument
from shared.messages.volumes import Mount

_TRUE, _FALSE = ("", "1", "true"), ("0", "false")


def _bool(key: str, value: str, text: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise InvalidArgument(f"invalid --mount {text!r}: {key} takes true or false, not {value!r}")


def parse_mount(text: str) -> Mount:
    fields: dict = {"type": "volume"}
    labels: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if key == "type":
            if value not in ("volume", "bind", "tmpfs"):
                raise InvalidArgument(f"invalid --mount {text!r}: type is volume, bind or tmpfs, not {value!r}")
            fields["type"] = value
        elif key in ("source", "src"):
            fields["source"] = value
        elif key in ("target", "destination", "dst"):
            fields["target"] = value
        elif key in ("readonly", "ro"):
            fields["readonly"] = _bool(key, value, text)
        elif key == "volume-nocopy":
            fields["nocopy"] = _bool(key, value, text)
        elif key == "volume-label":
            k, _, v = value.partition("=")
            labels[k] = v
        elif key == "tmpfs-size":
            from services.cli.commands.containers import parse_size
            fields["tmpfs_size"] = parse_size(value)
        elif key == "tmpfs-mode":
            try:
                fields["tmpfs_mode"] = int(value, 8)
            except ValueError:
                raise InvalidArgument(f"invalid --mount {text!r}: tmpfs-mode is octal, not {value!r}") from None
        elif key == "volume-driver" and value == "local":
            pass
        elif key == "bind-propagation" and value in ("rprivate", "private"):
            pass  # what every bind here already is
        elif not eq and not key:
            continue
        else:
            raise InvalidArgument(f"invalid --mount {text!r}: unknown or unsupported field {key!r}")
    if labels:
        fields["labels"] = labels
    m = Mount(**fields)
    if not m.target:
        raise InvalidArgument(f"invalid --mount {text!r}: target is required")
    if m.type == "bind" and not m.source:
        raise InvalidArgument(f"invalid --mount {text!r}: a bind mount needs a source")
    return m
