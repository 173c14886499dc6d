"""E2B's own SDK (``e2b``, unchanged) on firebox's files: the ``filesystem`` Connect service,
``/files`` downloads and uploads (multipart, octet-stream, gzip, metadata), watchers, signed
URLs, and who may reach a sandbox's files."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon
from tests.e2b.conftest import e2b_environment

# The E2B edge translates onto the same core on every backend (which the functional, interpreter
# and security suites check on each): its translation is checked once.
pytestmark = [pytest.mark.slow, pytest.mark.daemon_only]

BINARY = bytes(range(256)) * 64


def test_read_and_write(e2b_sandbox: Any) -> None:
    from e2b import FileType
    from e2b.sandbox.filesystem.filesystem import WriteEntry

    sbx = e2b_sandbox
    info = sbx.files.write("notes/hello.txt", "héllo, wörld\n")
    assert (info.name, info.type, info.path) == (
        "hello.txt",
        FileType.FILE,
        "/home/user/notes/hello.txt",
    )
    assert sbx.files.read("notes/hello.txt") == "héllo, wörld\n"

    sbx.files.write("blob.bin", BINARY)
    data = sbx.files.read("blob.bin", format="bytes")
    assert isinstance(data, bytearray) and bytes(data) == BINARY
    assert b"".join(sbx.files.read("blob.bin", format="stream")) == BINARY
    assert bytes(sbx.files.read("blob.bin", format="bytes", gzip=True)) == BINARY

    entries = [WriteEntry(path=f"many/{i}.txt", data=f"file {i}") for i in range(3)]
    entries.append(WriteEntry(path="many/deep/raw.bin", data=b"\x00\xff"))
    written = sbx.files.write_files(entries)
    assert [w.path for w in written] == [f"/home/user/{e['path']}" for e in entries]
    for i in range(3):
        assert sbx.files.read(f"many/{i}.txt") == f"file {i}"
    assert bytes(sbx.files.read("many/deep/raw.bin", format="bytes")) == b"\x00\xff"


def test_upload_encodings_and_metadata(e2b_sandbox: Any, backend_name: str) -> None:
    from e2b.sandbox.filesystem.filesystem import WriteEntry

    sbx = e2b_sandbox
    text = "gzip me " * 10_000
    assert sbx.files.write("z.txt", text, gzip=True).path == "/home/user/z.txt"
    assert sbx.files.read("z.txt") == text
    infos = sbx.files.write_files(
        [WriteEntry(path=f"gz/{i}.txt", data=f"gz {i}") for i in range(2)], gzip=True
    )
    assert len(infos) == 2 and sbx.files.read("gz/1.txt") == "gz 1"

    sbx.files.write("octet.bin", io.BytesIO(BINARY), use_octet_stream=True)
    assert bytes(sbx.files.read("octet.bin", format="bytes")) == BINARY
    # a shell sees what the SDK wrote
    assert sbx.commands.run("wc -c < octet.bin").stdout.strip() == str(len(BINARY))

    meta = {"author": "ada", "stage": "draft"}
    if backend_name == "gvisor":
        # gVisor keeps extended attributes only in memory (/dev/shm): its disk refuses them
        # with what to do (docs/BACKENDS.md), so the metadata round trip is made there
        sbx.files.make_dir("/dev/shm/meta")
        sbx.files.write("/dev/shm/meta/m.txt", "x", metadata=meta)
        assert sbx.files.get_info("/dev/shm/meta/m.txt").metadata == meta
        return
    assert sbx.files.write("m.txt", "x", metadata=meta).metadata == meta
    assert sbx.files.get_info("m.txt").metadata == meta
    listed = {e.name: e for e in sbx.files.list(".")}
    assert listed["m.txt"].metadata == meta
    assert sbx.files.rename("m.txt", "m2.txt").metadata == meta
    # an upload without metadata clears what the file had
    assert sbx.files.write("m2.txt", "y").metadata is None
    assert sbx.files.get_info("m2.txt").metadata is None


def test_list_info_rename_make_dir_remove(e2b_sandbox: Any) -> None:
    from e2b import FileType
    from e2b.exceptions import FileNotFoundException

    sbx = e2b_sandbox
    assert sbx.files.make_dir("top/a") is True
    assert sbx.files.make_dir("top/a") is False  # already there: E2B says False, no error
    sbx.files.make_dir("top/b/c")
    sbx.files.write("top/f.txt", "hello")

    one = sbx.files.list("top")
    assert [(e.name, e.type) for e in one] == [
        ("a", FileType.DIR),
        ("b", FileType.DIR),
        ("f.txt", FileType.FILE),
    ]
    assert sbx.files.list("top", depth=None) == one  # the SDK's "not given"
    two = [e.path for e in sbx.files.list("top", depth=2)]
    assert two == [
        "/home/user/top/a",
        "/home/user/top/b",
        "/home/user/top/b/c",
        "/home/user/top/f.txt",
    ]

    assert sbx.files.exists("top/f.txt") and not sbx.files.exists("top/nope")
    info = sbx.files.get_info("top/f.txt")
    assert (info.size, info.mode, info.permissions) == (5, 0o644, "-rw-r--r--")
    assert (info.owner, info.group, info.symlink_target) == ("user", "user", None)
    assert info.modified_time.tzinfo is not None
    d = sbx.files.get_info("top/a")
    assert (d.type, d.permissions) == (FileType.DIR, "drwxr-xr-x")

    # a symlink: its target's type, and the target resolved (as E2B's envd reports it)
    sbx.commands.run("ln -s f.txt link", cwd="/home/user/top")
    link = sbx.files.get_info("top/link")
    assert link.type == FileType.FILE and link.symlink_target == "/home/user/top/f.txt"

    moved = sbx.files.rename("top/f.txt", "top/b/g.txt")
    assert (moved.name, moved.path) == ("g.txt", "/home/user/top/b/g.txt")
    assert sbx.files.read("top/b/g.txt") == "hello"
    with pytest.raises(FileNotFoundException):
        sbx.files.read("top/f.txt")
    with pytest.raises(FileNotFoundException):
        sbx.files.get_info("top/f.txt")

    sbx.files.remove("top")
    assert not sbx.files.exists("top")
    sbx.files.remove("top")  # a missing path: nothing to do, as in E2B


def test_writes_outside_the_users_reach_are_refused(e2b_sandbox: Any) -> None:
    from e2b.exceptions import SandboxException

    sbx = e2b_sandbox
    with pytest.raises(SandboxException):
        sbx.files.write("/etc/evil", "x")
    with pytest.raises(SandboxException):
        sbx.files.make_dir("/etc/evil.d")
    assert not sbx.files.exists("/etc/evil")
    sbx.files.write("/root/ok.txt", "x", user="root")
    assert sbx.files.get_info("/root/ok.txt", user="root").owner == "root"


def _wait_for(handle: Any, wanted: set[tuple[str, Any]]) -> set[tuple[str, Any]]:
    seen: set[tuple[str, Any]] = set()
    deadline = time.monotonic() + 60  # a bound on waiting, not a promise of speed
    while not wanted <= seen and time.monotonic() < deadline:
        seen |= {(e.name, e.type) for e in handle.get_new_events()}
        time.sleep(0.1)
    return seen


def test_watch_dir_sees_a_write_as_e2b_does(e2b_sandbox: Any) -> None:
    from e2b import FilesystemEventType as T

    sbx = e2b_sandbox
    sbx.files.make_dir("w")
    sbx.files.write("w/old.txt", "1")
    handle = sbx.files.watch_dir("w")
    try:
        sbx.files.write("w/old.txt", "2")
        sbx.files.write("w/new.txt", "3")
        seen = _wait_for(
            handle, {("old.txt", T.WRITE), ("new.txt", T.CREATE), ("new.txt", T.WRITE)}
        )
    finally:
        handle.stop()
    assert {("old.txt", T.WRITE), ("new.txt", T.CREATE), ("new.txt", T.WRITE)} <= seen
    # the upload's temporary file is not shown, nor its rename into place
    assert {name for name, _ in seen} == {"old.txt", "new.txt"}
    assert all(kind != T.RENAME for _, kind in seen)


async def test_async_watch_dir_calls_on_event(e2b_env: dict[str, str]) -> None:
    from e2b import AsyncSandbox, FilesystemEvent, FilesystemEventType

    sbx = await AsyncSandbox.create(timeout=600)
    try:
        await sbx.files.make_dir("aw")
        seen = asyncio.Event()
        events: list[FilesystemEvent] = []

        def on_event(e: FilesystemEvent) -> None:
            events.append(e)
            if e.type == FilesystemEventType.WRITE and e.name == "x.txt":
                seen.set()

        handle = await sbx.files.watch_dir("aw", on_event=on_event, include_entry=True)
        await sbx.files.write("aw/x.txt", "data")
        await asyncio.wait_for(seen.wait(), 60)
        await handle.stop()
        write = next(e for e in events if e.type == FilesystemEventType.WRITE)
        assert write.entry is not None and write.entry.path == "/home/user/aw/x.txt"
        assert await sbx.files.read("aw/x.txt") == "data"
    finally:
        await sbx.kill()


def test_signed_urls(e2b_env: dict[str, str]) -> None:
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=600, secure=True)
    try:
        sbx.files.write("signed.txt", "secret")
        down = sbx.download_url("signed.txt")
        assert "signature=" in down
        with httpx.Client(timeout=60) as http:  # no token, no key: the signature alone
            r = http.get(down)
            assert r.status_code == 200 and r.text == "secret"
            # signed to read: no upload
            r = http.post(down, files={"file": ("signed.txt", b"overwritten")})
            assert r.status_code == 401
            assert sbx.files.read("signed.txt") == "secret"

            up = sbx.upload_url("uploaded.txt")
            r = http.post(up, files={"file": ("uploaded.txt", b"via url")})
            assert r.status_code == 200, r.text
            assert r.json()[0]["path"] == "/home/user/uploaded.txt"
            assert sbx.files.read("uploaded.txt") == "via url"

            bad = down.replace("signature=v1_", "signature=v1_X")
            assert http.get(bad).status_code in (401, 404)
            expired = sbx.download_url("signed.txt", use_signature_expiration=-120)
            assert http.get(expired).status_code == 401
            # a signature opens the one path it was made for
            other = down.replace("path=signed.txt", "path=uploaded.txt")
            assert http.get(other).status_code in (401, 404)
    finally:
        sbx.kill()


def test_another_tenant_cannot_reach_the_files(daemon: Daemon, e2b_sandbox: Any) -> None:
    from e2b import Sandbox
    from e2b.exceptions import NotFoundException

    sbx = e2b_sandbox
    sbx.files.write("private.txt", "mine")
    other = e2b_environment(daemon, daemon.new_key("other-tenant"))
    with pytest.raises(NotFoundException):
        Sandbox.connect(sbx.sandbox_id, api_key=other["E2B_API_KEY"])

    # refused as E2B refuses a sandbox it cannot open: 401, or "no such sandbox" (its proxy's
    # 502 over HTTP, Connect's unavailable 503), never a 2xx
    refused = (401, 404, 502, 503)
    query = {"path": "private.txt"}
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}
    with httpx.Client(base_url=daemon.url, timeout=60) as http:
        for creds in (
            {"X-Access-Token": "not-the-token"},
            {"X-API-Key": other["E2B_API_KEY"]},
            {},
        ):
            r = http.get("/files", params=query, headers={**headers, **creds})
            assert r.status_code in refused, r.text
            assert "mine" not in r.text
            r = http.post("/files", params=query, headers={**headers, **creds}, content=b"theirs")
            assert r.status_code in refused, r.text
        # the Connect service: refused the same way
        r = http.post(
            "/filesystem.Filesystem/Remove",
            json={"path": "private.txt"},
            headers={**headers, "X-Access-Token": "not-the-token"},
        )
        assert r.status_code in refused, r.text
    assert sbx.files.read("private.txt") == "mine"
