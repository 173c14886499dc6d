"""The sandbox's users: who a request may act as, and where their paths start.

Only two names are accepted, ``user`` (the default, uid 1000 in our images) and ``root``; their
ids and homes come from the sandbox's own /etc/passwd, read on every request because code in
the sandbox may edit it (the file is tiny, a read costs microseconds).
"""

from __future__ import annotations

import os

from firebox.agent.errors import Fail, log
from firebox.protocol import dataclass  # the light one: see protocol.py

USERS = ("user", "root")
PASSWD = "/etc/passwd"
GROUP = "/etc/group"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


def _entries(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return [line.rstrip("\n").split(":") for line in f if not line.startswith("#")]
    except OSError:
        return []


def lookup(name: object) -> User:
    if not isinstance(name, str) or name not in USERS:
        raise Fail(
            "invalid",
            f"unknown user {name!r}: a sandbox runs things as 'user' (the default) or 'root'",
        )
    for fields in _entries(PASSWD):
        if len(fields) >= 6 and fields[0] == name:
            try:
                return User(name, int(fields[2]), int(fields[3]), fields[5] or "/")
            except ValueError:
                break
    raise Fail("invalid", f"user {name!r} is not in this sandbox's {PASSWD}")


def id_names() -> tuple[dict[int, str], dict[int, str]]:
    """uid → name and gid → name, for reporting file owners."""
    maps: list[dict[int, str]] = []
    for path in (PASSWD, GROUP):
        names: dict[int, str] = {}
        for fields in _entries(path):
            if len(fields) >= 3 and fields[2].isdigit():
                names.setdefault(int(fields[2]), fields[0])
        maps.append(names)
    return maps[0], maps[1]


def resolve(user: User, path: object) -> str:
    """An absolute, normalized path: relative paths and ``~`` start at the user's home."""
    if not isinstance(path, str) or not path:
        raise Fail("invalid", "a path is required")
    if "\0" in path:
        raise Fail("invalid", f"path {path!r} contains a NUL byte")
    if path == "~" or path.startswith("~/"):
        path = user.home + path[1:]
    elif not path.startswith("/"):
        path = os.path.join(user.home, path)
    # normpath folds "a/../b" lexically; a symlink named "a" may point elsewhere, but the
    # permission checks that matter happen in the kernel on the final path, as the user.
    return os.path.normpath(path)


def prepare_home() -> None:
    """Give ``user`` its home: a fresh tmpfs or image directory starts out owned by root."""
    try:
        user = lookup("user")
    except Fail:
        return
    try:
        st = os.stat(user.home)
        if (st.st_uid, st.st_gid) != (user.uid, user.gid):
            os.chown(user.home, user.uid, user.gid)
    except OSError as e:
        log(f"could not give {user.home} to {user.name}: {e.strerror or e}")
