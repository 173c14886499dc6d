"""A container registry on loopback for the tests, and images made from directory trees.

The registry is Debian's ``docker-registry`` (the CNCF distribution registry), started on a
free 127.0.0.1 port with its storage in a temporary directory, optionally behind htpasswd
basic auth, and stopped by its PID. Images are built with ``umoci`` in an OCI layout (one tag
per variant, each a layer on the last) and pushed with ``skopeo``: the tools the product
pulls with, so nothing here speaks the registry protocol by hand. Traffic stays on loopback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"
START_DEADLINE = 30.0
TOOL_DEADLINE = 600.0


def _run(cmd: list[str]) -> str:
    out = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TOOL_DEADLINE
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def missing_tools() -> str | None:
    """Why the registry tests cannot run here, or None."""
    for tool in (REGISTRY, "skopeo", "umoci"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup --test installs it)"
    return None


def htpasswd_line(username: str, password: str) -> str | None:
    """An htpasswd line for the registry, which takes bcrypt only; None if this Python can
    make none (no ``bcrypt`` module, and no ``crypt`` with libxcrypt's bcrypt)."""
    try:
        import bcrypt

        return f"{username}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}"
    except ImportError:
        pass
    with contextlib.suppress(ImportError):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # removed in 3.13
            import crypt
        if hashed := crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 4)):
            return f"{username}:{hashed}"
    return None


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    workdir: Path
    credentials: tuple[str, str] | None = None
    host: str = "127.0.0.1"  # a loopback address of the host (a daemon's tests: the permitted one)
    deletes: bool = False  # allowed (distribution's default: off), as a deleted template needs
    addr: str = ""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Registry:
        self.workdir.mkdir(parents=True, exist_ok=True)
        auth = ""
        if self.credentials:
            line = htpasswd_line(*self.credentials)
            if line is None:
                raise RuntimeError("no bcrypt here for the registry's htpasswd")
            (self.workdir / "htpasswd").write_text(line + "\n")
            auth = f"auth:\n  htpasswd: {{realm: firebox-test, path: {self.workdir}/htpasswd}}\n"
        for _ in range(3):  # the free port may be taken between our probe and its bind
            self.addr = f"{self.host}:{_free_port(self.host)}"
            config = self.workdir / "config.yml"
            config.write_text(
                "version: 0.1\n"
                "log: {level: warn, accesslog: {disabled: true}}\n"
                f"storage:\n  filesystem: {{rootdirectory: {self.workdir}/storage}}\n"
                + ("  delete: {enabled: true}\n" if self.deletes else "")
                + "  maintenance: {uploadpurging: {enabled: false}}\n"
                f"http: {{addr: '{self.addr}', secret: firebox-test}}\n" + auth
            )
            with open(self.workdir / "registry.log", "ab") as log:
                self.proc = subprocess.Popen(
                    [REGISTRY, "serve", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return self
            self.stop()
        log_text = (self.workdir / "registry.log").read_text()[-2000:]
        raise RuntimeError(f"the test registry did not start: {log_text}")

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://{self.addr}/v2/", timeout=2).close()
                return True
            except urllib.error.HTTPError:
                return True  # 401: up, and asking for credentials
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Layout:
    """An OCI image layout to build test images in: ``new`` an empty image, ``insert`` a tree
    as a layer on top of a tag (under a new tag), ``push`` a tag to a registry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _run(["umoci", "init", "--layout", str(path)])

    def new(self, tag: str, arch: str = "amd64") -> str:
        _run(["umoci", "new", "--image", f"{self.path}:{tag}"])
        if arch != "amd64":  # umoci new writes this host's; a foreign image says otherwise
            _run(["umoci", "config", "--image", f"{self.path}:{tag}", "--architecture", arch])
        return tag

    def insert(self, tag: str, tree: Path, new_tag: str) -> str:
        _run(["umoci", "insert", "--image", f"{self.path}:{tag}", "--tag", new_tag, str(tree), "/"])
        return new_tag

    def index(self, new_tag: str, platforms: dict[str, str]) -> str:
        """A multi-platform image index of existing tags (platform "linux/arm64" -> tag):
        umoci makes none, so its JSON is written here, blobs addressed by their digests."""
        index = json.loads((self.path / "index.json").read_text())
        by_tag = {
            m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]
        }
        manifests = []
        for platform, tag in platforms.items():
            os_name, arch = platform.split("/")
            entry = {k: by_tag[tag][k] for k in ("mediaType", "digest", "size")}
            manifests.append({**entry, "platform": {"architecture": arch, "os": os_name}})
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": manifests,
            }
        ).encode()
        digest = hashlib.sha256(body).hexdigest()
        (self.path / "blobs/sha256" / digest).write_bytes(body)
        index["manifests"].append(
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": f"sha256:{digest}",
                "size": len(body),
                "annotations": {"org.opencontainers.image.ref.name": new_tag},
            }
        )
        (self.path / "index.json").write_text(json.dumps(index))
        return new_tag

    def push(
        self,
        tag: str,
        registry: str,
        name: str,
        dest_tag: str,
        creds: tuple[str, str] | None = None,
    ) -> str:
        """Push ``tag`` as ``registry/name:dest_tag``; the digest the registry has it under."""
        with tempfile.TemporaryDirectory() as tmp:
            cmd = ["skopeo", "copy", "--all", "--dest-tls-verify=false"]
            if creds:
                cmd.append(f"--dest-creds={creds[0]}:{creds[1]}")  # test-only credentials
            cmd += [f"--digestfile={tmp}/digest", f"oci:{self.path}:{tag}"]
            _run([*cmd, f"docker://{registry}/{name}:{dest_tag}"])
            return Path(tmp, "digest").read_text().strip()


def push_tree(tree: Path, registry: str, name: str, tag: str, *, arch: str = "amd64") -> str:
    """Make an image of one layer from ``tree`` and push it as ``registry/name:tag``; its
    digest."""
    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout(Path(tmp) / "layout")
        layout.insert(layout.new("empty", arch), tree, "image")
        return layout.push("image", registry, name, tag)


@contextlib.contextmanager
def running(workdir: Path, **options: object) -> Iterator[Registry]:
    """A registry (``Registry``'s fields as ``options``), stopped by its PID at the end."""
    reg = Registry(workdir, **options).start()  # type: ignore[arg-type]
    try:
        yield reg
    finally:
        reg.stop()
