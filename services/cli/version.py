"""`dockyard --version`: the installed distribution's version, as importlib.metadata finds it.

Read by hand: importing importlib.metadata (email, zipfile, csv, ...) costs more than
the rest of the command. The same search, in the same order: each `sys.path` entry's
`<name>-<version>.dist-info/METADATA`, or `<name>.egg-info/PKG-INFO` for a checkout.
"""

from __future__ import annotations

import os
import sys

DIST = "dockyard"


def version() -> str:
    """The `Version:` of the first dockyard distribution on sys.path; importlib.metadata's
    answer when none is a plain directory here (zips, eggs)."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            meta = _metadata_file(name)
            if meta:
                found = _version_of(os.path.join(entry or ".", name, meta))
                if found:
                    return found
    from importlib import metadata
    return metadata.version(DIST)


def _metadata_file(name: str) -> str:
    """METADATA or PKG-INFO if `name` is a dist-info or egg-info directory of dockyard, else ''."""
    base, dot, kind = name.rpartition(".")
    if not dot or kind not in ("dist-info", "egg-info"):
        return ""
    project = base.partition("-")[0].lower().replace("_", "-").replace(".", "-")
    if project != DIST:
        return ""
    return "METADATA" if kind == "dist-info" else "PKG-INFO"


def _version_of(path: str) -> str:
    """The `Version:` header of a metadata file ('' if unreadable or missing)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the headers end at the first blank line
                key, _, value = line.partition(":")
                if key.lower() == "version":
                    return value.strip()
    except OSError:
        pass
    return ""


def banner() -> str:
    """docker's `Docker version X` line, for dockyard."""
    return f"dockyard version {version()}"
