"""USER and --chown names resolved against the image's own /etc/passwd and /etc/group."""

from __future__ import annotations

from pathlib import Path

from shared.errors import InvalidArgument


def _read_db(root: Path, name: str) -> list[list[str]]:
    p = root / "etc" / name
    try:
        # Never follow a symlink out of the rootfs: resolve it inside.
        if p.is_symlink():
            return []
        return [line.split(":") for line in p.read_text(errors="replace").splitlines() if line and line[0] != "#"]
    except OSError:
        return []


def resolve(root: Path, spec: str, where: str = "") -> tuple[int, int, tuple[int, ...]]:
    """(uid, gid, additional gids) for `user[:group]`, names or numbers, like docker."""
    user, _, group = (spec or "0").partition(":")
    passwd = _read_db(root, "passwd")
    groups = _read_db(root, "group")
    uid = gid = None
    uname = None
    if user.isdigit():
        uid = int(user)
        for e in passwd:
            if len(e) > 3 and e[2] == user:
                uname, gid = e[0], int(e[3]) if e[3].isdigit() else 0
                break
    else:
        for e in passwd:
            if len(e) > 3 and e[0] == user:
                uname, uid, gid = user, int(e[2]), int(e[3]) if e[3].isdigit() else 0
                break
        if uid is None:
            raise InvalidArgument(f"{where}unable to find user {user}: no matching entries in passwd file")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found = next((e for e in groups if len(e) > 2 and e[0] == group), None)
            if found is None:
                raise InvalidArgument(f"{where}unable to find group {group}: no matching entries in group file")
            gid = int(found[2])
    extra: tuple[int, ...] = ()
    if uname and not group:
        extra = tuple(int(e[2]) for e in groups
                      if len(e) > 3 and uname in e[3].split(",") and e[2].isdigit() and int(e[2]) != gid)
    return uid, gid or 0, extra


def needs_db(spec: str) -> bool:
    """Whether a `--chown` spec names a user or group (numbers need no passwd file)."""
    user, _, group = spec.partition(":")
    return not user.isdigit() or bool(group) and not group.isdigit()


def resolve_chown(root: Path | None, spec: str, where: str = "") -> tuple[int, int]:
    """(uid, gid) of a `--chown`, as BuildKit's file ops read it.

    A uid without a group is also the gid (`1001` is 1001:1001); a user name
    without a group takes the user's primary group from passwd.
    """
    user, _, group = spec.partition(":")
    if not user:
        raise InvalidArgument(f"{where}invalid user {spec!r}")
    if user.isdigit():
        uid = gid = int(user)
    else:
        entry = next((e for e in _read_db(root, "passwd") if len(e) > 3 and e[0] == user), None) if root else None
        if entry is None or not entry[2].isdigit():
            raise InvalidArgument(f"{where}unable to find user {user}: no matching entries in passwd file")
        uid, gid = int(entry[2]), int(entry[3]) if entry[3].isdigit() else 0
    if group.isdigit():
        gid = int(group)
    elif group:
        found = next((e for e in _read_db(root, "group") if len(e) > 2 and e[0] == group), None) if root else None
        if found is None or not found[2].isdigit():
            raise InvalidArgument(f"{where}unable to find group {group}: no matching entries in group file")
        gid = int(found[2])
    return uid, gid
