"""`images` and `agents` with docker's `--format` fields and `-q` (ps has its own: psview.py)."""

from __future__ import annotations

IMAGE_HEADERS = {"ID": "IMAGE ID", "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST",
                 "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE"}
AGENT_HEADERS = {"ID": "AGENT", "Status": "STATUS", "Address": "ADDRESS", "Runtime": "RUNTIME",
                 "Running": "RUNNING", "Containers": "CONTAINERS", "Images": "IMAGES", "CPUs": "CPUS",
                 "FreeMemory": "FREE MEMORY", "Memory": "MEMORY", "LastHeartbeat": "LAST HEARTBEAT"}


def image_fields(*, repository: str, tag: str, digest: str, image_id: str, created: str, since: str,
                 size: str) -> dict[str, str]:
    return {"ID": image_id, "Repository": repository, "Tag": tag, "Digest": digest, "CreatedSince": since,
            "CreatedAt": created, "Size": size}


def agent_fields(row: list) -> dict[str, str]:
    """An `agents` table row (in AGENT_HEADERS' order) as --format fields."""
    return {k: str(v) for k, v in zip(AGENT_HEADERS, row)}


def show(args, fields: list[dict[str, str]], headers: dict[str, str]) -> bool:
    """Print `-q` (unique IDs, in order) or `--format`; False when the caller prints its table."""
    if getattr(args, "quiet", False):
        for i in dict.fromkeys(f["ID"] for f in fields):
            print(i)
        return True
    if getattr(args, "format", None):
        from services.cli.formatting import emit
        emit(args.format, fields, headers)
        return True
    return False
