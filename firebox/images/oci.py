"""Bases from OCI images: pulled with ``skopeo``, unpacked with ``umoci``, cached by digest.

No registry client of our own: skopeo (containers/image, the library podman and CRI-O use)
talks to registries, and umoci (the OCI reference tool) applies the layers; both are Debian's.
``umoci raw unpack``, not ``umoci unpack``: it writes the root filesystem and nothing else (no
runtime config.json, no mtree of every file, which only ``umoci repack`` needs), and run as
root it keeps the owners and modes the layers record. Its extraction confines every path to
the target (securejoin), which anyone's image needs.

Each pull resolves the reference to the digest of its manifest first (``skopeo inspect``), so
a moved ``:latest`` is seen, and an unchanged digest is a cache hit with nothing pulled; a
reference pinned by digest is answered from the cache with no network at all. Entries sit
beside the template images (cache.py) as ``oci-<key>/``: ``rootfs/``, ``oci.json`` (the
reference, the digests and the image's config: Env, Cmd, WorkingDir for whoever starts it),
``image.json`` and ``build.log``; the key hashes the digest, the architecture and the sources
of the adaptation.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._fs import remove_tree
from .adapt import adapt, host_arch
from .cache import Progress, build_cached, image_root, ready_rootfs
from .errors import ImageBuildError
from .oci_ref import DIGEST, LAYOUT_TAG, OciRef, check_platform, explain, oci_key, read_layout
from .rootfs import run_logged

INSPECT_TIMEOUT = 120.0
PULL_TIMEOUT = 30 * 60.0
UNPACK_TIMEOUT = 20 * 60.0
# Without a policy skopeo refuses to copy. Where the host has none, accept any image: the
# digest, resolved before the pull and checked by skopeo, pins the content.
_ACCEPT_ANY = {"default": [{"type": "insecureAcceptAnything"}]}


def _quiet(message: str) -> None:
    pass


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ImageBuildError(
            f"{name} is not installed; OCI bases need skopeo and umoci: run scripts/setup, or "
            "apt-get install skopeo umoci"
        )
    return found


@contextlib.contextmanager
def _private_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="firebox-oci-"))  # 0700: may hold credentials
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def skopeo_command(arch: str, workdir: Path, timeout: float) -> list[str]:
    """skopeo with its options for a copy of this host's platform (``copy`` and what it
    copies follow): its temporary files in ``workdir``, and the policy file it needs written
    there where the host has none. Shared with server/templates/distribute.py."""
    skopeo = [tool("skopeo"), "--override-os=linux", f"--override-arch={arch}"]
    skopeo += [f"--command-timeout={timeout:.0f}s", f"--tmpdir={workdir}"]
    if not Path("/etc/containers/policy.json").exists():
        (workdir / "policy.json").write_text(json.dumps(_ACCEPT_ANY))
        skopeo.append(f"--policy={workdir / 'policy.json'}")
    return skopeo


def unpack(layout: Path, target: Path, log: Path, what: str) -> None:
    """The layers of the image ``LAYOUT_TAG`` of ``layout`` applied into ``target``, owners
    and modes as they record them (run as root); its output appended to ``log``."""
    cmd = [tool("umoci"), "raw", "unpack", "--image", f"{layout}:{LAYOUT_TAG}", str(target)]
    result = run_logged(cmd, log, lambda line: None, UNPACK_TIMEOUT, append=True)
    if result.returncode != 0:
        raise ImageBuildError(
            f"unpacking {what} failed"
            + (" (killed at its deadline)" if result.returncode is None else "")
            + ":\n  "
            + "\n  ".join(result.tail)
            + f"\nFull log: {log}; the image may be damaged: try pulling it again",
            log_path=log,
            tail=result.tail,
        )


def _access(
    ref: OciRef, private: Path, username: str | None, password: str | None, insecure: bool
) -> list[str]:
    """skopeo's options for reaching ``ref``'s registry (``--src-`` prefixed for copy).

    Credentials go to a file only this process's directory holds, never onto a command line,
    where any local user could read them, or into a log. Without credentials the pull is
    anonymous, never with ones stored on this host: one tenant's pull must not reach a private
    image through another's (or the administrator's) login.
    """
    opts = [f"--tls-verify={'false' if insecure else 'true'}"]
    if username is None:
        return [*opts, "--no-creds"]
    token = f"{username}:{password}".encode()
    authfile = private / "auth.json"
    fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"auths": {ref.registry: {"auth": base64.b64encode(token).decode()}}}, fh)
    return [*opts, f"--authfile={authfile}"]


def _inspect(ref: OciRef, access: list[str], arch: str) -> dict[str, Any]:
    target = ref.pinned(ref.digest) if ref.digest else f"docker://{ref}"
    cmd = [tool("skopeo"), "--override-os=linux", f"--override-arch={arch}"]
    cmd += ["inspect", "--no-tags", *access, target]
    try:
        out = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INSPECT_TIMEOUT,
            env={**os.environ, "LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired:
        raise ImageBuildError(
            f"looking up {ref} took over {INSPECT_TIMEOUT:.0f} s: {ref.registry} is too slow or "
            "unreachable; check that this host can reach it"
        ) from None
    if out.returncode != 0:
        said = out.stderr.strip().splitlines()[-1:] or ["(nothing)"]
        raise ImageBuildError(
            f"cannot look up {ref}: {explain(out.stderr, ref, arch)}.\nskopeo said: {said[0]}"
        )
    info = json.loads(out.stdout)
    if not isinstance(info, dict) or not DIGEST.fullmatch(str(info.get("Digest"))):
        raise ImageBuildError(f"skopeo gave no usable digest for {ref}: {out.stdout[:200]!r}")
    return info


def defuse(tree: Path) -> list[str]:
    """Take from an image tree what would be a door on the host, where the tree lies readable
    under the image directory: device nodes (to the host's devices wherever the tree is seen
    without nodev), and set-id bits and file capabilities (any local user could run such a
    program from here). Sandboxes lose nothing: they get their own /dev, and run with
    no_new_privs, under which set-id programs and capabilities gain nothing anyway."""
    done = []
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                os.unlink(path)
                done.append(f"device {path}")
            elif stat.S_ISREG(mode):
                if mode & (stat.S_ISUID | stat.S_ISGID):
                    os.chmod(path, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID))
                    done.append(f"set-id bit of {path}")
                with contextlib.suppress(OSError):  # a file system without xattrs
                    if "security.capability" in os.listxattr(path, follow_symlinks=False):
                        os.removexattr(path, "security.capability", follow_symlinks=False)
                        done.append(f"capabilities of {path}")
    return done


def _pull(
    ref: OciRef,
    digest: str,
    access: list[str],
    arch: str,
    target: Path,
    log: Path,
    report: Progress,
) -> None:
    """The builder of an entry: copy the image into an OCI layout, unpack, adapt."""
    work = target.parent / "layout"  # removed before the entry is complete
    skopeo = skopeo_command(arch, target.parent, PULL_TIMEOUT)
    copy = [*skopeo, "copy", "--retry-times=2", *(f"--src-{opt[2:]}" for opt in access)]
    copy += [ref.pinned(digest), f"oci:{work}:{LAYOUT_TAG}"]
    report(f"pulling {ref.registry}/{ref.repository}@{digest}")
    result = run_logged(copy, log, report, PULL_TIMEOUT + 30)
    if result.returncode != 0:
        cause = (
            f"took over {PULL_TIMEOUT / 60:.0f} min and was stopped"
            if result.returncode is None
            else explain("\n".join(result.tail), ref, arch)
        )
        raise ImageBuildError(
            f"pulling {ref} failed: {cause}.\nLast output lines:\n  "
            + "\n  ".join(result.tail)
            + f"\nFull log: {log}",
            log_path=log,
            tail=result.tail,
        )
    manifest, config = read_layout(work)
    check_platform(ref, config, arch)
    report("unpacking the image's layers")
    unpack(work, target, log, str(ref))
    remove_tree(work)
    source = {"ref": str(ref), "digest": digest, "manifest": manifest, "config": config}
    (target.parent / "oci.json").write_text(json.dumps(source, indent=2) + "\n")
    taken = defuse(target)
    with open(log, "a") as fh:
        fh.writelines(f"removed {what}\n" for what in taken)
    report("adapting the tree for firebox")
    found = adapt(target)
    report(f"Python {found.version[0]}.{found.version[1]} at {found.path}")


def oci_base(
    ref: str,
    progress: Progress | None = None,
    username: str | None = None,
    password: str | None = None,
    insecure_loopback: bool = False,
) -> Path:
    """The root tree of OCI image ``ref``, adapted for firebox, pulled unless its digest is
    cached. ``insecure_loopback`` allows plain HTTP (and unverified TLS) to a registry on this
    host's loopback, and nowhere else. Needs root; ImageBuildError says what failed and why."""
    report = progress or _quiet
    parsed = OciRef.parse(ref)
    if insecure_loopback and not parsed.loopback:
        raise ImageBuildError(
            f"TLS may be skipped only for a registry on this host's loopback (127.0.0.0/8, ::1, "
            f"localhost), not {parsed.registry}"
        )
    if (username is None) != (password is None):
        raise ImageBuildError("give both a username and a password for the registry, or neither")
    arch, root = host_arch(), image_root()
    if parsed.digest and (ready := ready_rootfs(oci_key(parsed.digest, arch), root)):
        report(f"{parsed} is cached")
        return ready
    for name in ("skopeo", "umoci"):
        tool(name)  # both there, before anything is fetched
    with _private_dir() as private:
        access = _access(parsed, private, username, password, insecure_loopback)
        report(f"resolving {parsed}")
        info = _inspect(parsed, access, arch)
        check_platform(parsed, info, arch)
        digest = info["Digest"]
        key = oci_key(digest, arch)
        if ready := ready_rootfs(key, root):
            report(f"{parsed} is {digest}, cached")
            return ready
        if os.geteuid() != 0:
            raise ImageBuildError(
                f"{parsed} is not cached, and unpacking an image needs root (its files belong "
                "to many users): pull it once as root"
            )
        return build_cached(
            key,
            lambda target, log, prog: _pull(parsed, digest, access, arch, target, log, prog),
            root=root,
            progress=report,
        )
