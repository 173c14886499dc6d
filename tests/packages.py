"""The tests' package sources, on loopback: a PEP 503 index of wheels built here, and a flat
apt repository of .deb packages built here with dpkg-deb. Sandboxes reach it only through
the daemon's egress proxy, by a name the test daemon resolves to ``EGRESS_ORIGIN``
(tests/conftest.py), exactly as they would reach the host's real package sources."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import posixpath
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def wheel(project: str, module: str, source: str, version: str = "1.0") -> tuple[str, bytes]:
    """A pure-Python wheel of one module: its file name and bytes."""
    dist = project.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{module}.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: firebox-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, text in {**files, f"{info}/RECORD": record}.items():
            # a fixed time: the index's hash and the file fetched later are of the same bytes
            zf.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), text)
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


def deb(package: str, files: dict[str, str], version: str = "1.0") -> bytes:
    """A binary package installing ``files`` (path → text; those under bin/ executable)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN" / "control").write_text(
            f"Package: {package}\nVersion: {version}\nArchitecture: all\n"
            "Maintainer: firebox tests <tests@firebox.invalid>\n"
            f"Description: {package}, made by firebox's tests\n"
        )
        for path, text in files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            target.chmod(0o755 if "/bin/" in path else 0o644)
        out = Path(tmp) / f"{package}.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "--build", str(root), str(out)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return out.read_bytes()


class PackageServer(http.server.ThreadingHTTPServer):
    requests: list[str]
    routes: dict[str, tuple[bytes, str]]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: PackageServer

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        raw = self.path.split("?")[0]
        # apt asks for a flat repository's files as /apt/./Release
        path = posixpath.normpath(raw) + ("/" if raw.endswith("/") else "")
        self.server.requests.append(path)
        found = self.server.routes.get(path) or self.server.routes.get(path.rstrip("/") + "/")
        if found is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body, kind = found
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _apt_index(debs: dict[str, bytes]) -> dict[str, tuple[bytes, str]]:
    stanzas = []
    for name, data in debs.items():
        control = subprocess.run(
            ["dpkg-deb", "-f", "/dev/stdin"], input=data, capture_output=True, check=True
        ).stdout.decode()
        stanzas.append(
            control.rstrip("\n")
            + f"\nFilename: ./{name}.deb\nSize: {len(data)}\n"
            + f"SHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    packages = "\n".join(stanzas).encode()
    packages_gz = gzip.compress(packages, mtime=0)
    release = "Origin: firebox-tests\nLabel: firebox-tests\nSuite: tests\nSHA256:\n" + "".join(
        f" {hashlib.sha256(b).hexdigest()} {len(b)} {n}\n"
        for n, b in (("Packages", packages), ("Packages.gz", packages_gz))
    )
    routes = {
        "/apt/Packages": (packages, "text/plain"),
        "/apt/Packages.gz": (packages_gz, "application/gzip"),
        "/apt/Release": (release.encode(), "text/plain"),
    }
    for name, data in debs.items():
        routes[f"/apt/{name}.deb"] = (data, "application/vnd.debian.binary-package")
    return routes


def _pip_index(wheels: dict[str, tuple[str, bytes]]) -> dict[str, tuple[bytes, str]]:
    routes: dict[str, tuple[bytes, str]] = {}
    for project, (filename, data) in wheels.items():
        digest = hashlib.sha256(data).hexdigest()
        link = f'<a href="/files/{filename}#sha256={digest}">{filename}</a>'
        routes[f"/simple/{project}/"] = (f"<html><body>{link}</body></html>".encode(), "text/html")
        routes[f"/files/{filename}"] = (data, "application/octet-stream")
    return routes


@contextmanager
def serve(
    address: str, wheels: dict[str, tuple[str, bytes]], debs: dict[str, bytes]
) -> Iterator[PackageServer]:
    """Serve ``wheels`` (project → wheel) under /simple/ and ``debs`` (package → .deb) as the
    flat apt repository /apt/ (``deb [trusted=yes] http://host:port/apt/ ./``)."""
    server = PackageServer((address, 0), _Handler)
    server.requests = []
    server.routes = {**_pip_index(wheels), **_apt_index(debs)}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
