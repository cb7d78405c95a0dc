"""Names and rules that layer tars and overlay directories agree on (OCI image-spec, overlayfs)."""

from __future__ import annotations

WHITEOUT_PREFIX = ".wh."
# A whiteout of this name hides every lower entry of its directory.
OPAQUE_WHITEOUT = ".wh..wh..opq"
# aufs kept its own bookkeeping under `.wh..wh.*`; such entries carry no file.
WHITEOUT_META_PREFIX = ".wh..wh."

OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_XATTR_PREFIX = "trusted.overlay."

PAX_XATTR_PREFIX = "SCHILY.xattr."

# xattrs carried between a layer and a directory. overlayfs' own bookkeeping
# (trusted.overlay.*: opaque, redirect, origin, metacopy) is never taken from a layer,
# or a hostile layer could redirect lookups; security.selinux is host labelling.
_XATTR_ALLOWED_PREFIXES = ("user.", "trusted.", "system.posix_acl_")
_XATTR_ALLOWED_NAMES = frozenset({"security.capability"})


def xattr_allowed(name: str) -> bool:
    if name.startswith(OVERLAY_XATTR_PREFIX):
        return False
    return name in _XATTR_ALLOWED_NAMES or name.startswith(_XATTR_ALLOWED_PREFIXES)
