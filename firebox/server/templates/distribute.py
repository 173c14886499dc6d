"""Templates across nodes: a build pushed as an OCI image to the cluster's template registry
(``firebox serve --template-registry HOST[:PORT]/PATH``), and pulled from there by every other
node the first time it starts the template, or warms it ahead of that.

No registry client of our own (images/oci.py): skopeo copies images, umoci unpacks them.

What is pushed: ``<prefix>/<build id>:<first tag>``, one image per build of one layer, the
build's flattened tree (its base's files and every step's), as tree_image.py writes it (and
says what of the tree it keeps). The record (catalog.TemplateRecord) gets ``image_ref`` and the
manifest's ``image_digest``, and nodes pull by that digest: what runs is what was built,
whatever the registry's tag says later. Skopeo reaches the registry with this host's own
login, if it has one (``skopeo login``, or REGISTRY_AUTH_FILE): the daemon pulls for itself
here, never for a tenant.

What is pulled lands in this node's image directory under the tree's own name
(``templates/tree-…``, a hash of what it is made of), as builds.write_tree makes it, so that
what comes after (a create, the warm pool, a microVM's root disk, prune) finds it as if it
were built here; set-id bits are taken off, as from any image (images/oci.py ``defuse``):
under no_new_privs they do nothing in a sandbox, and on the host they would be a door. Pulls
of one tree wait for one another: within the daemon (one task per tree), and across daemons
sharing an image directory (cache.build_cached's lock, which builds.write_tree takes too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firebox.images._fs import remove_tree
from firebox.images.adapt import host_arch
from firebox.images.cache import Progress, build_cached, image_root
from firebox.images.errors import ImageBuildError
from firebox.images.oci import defuse, skopeo_command, tool, unpack
from firebox.images.oci_ref import DIGEST, LAYOUT_TAG, OciRef, check_platform, explain, read_layout
from firebox.images.rootfs import run_logged
from firebox.server.errors import ApiError
from firebox.server.templates.tree_image import LABEL, write_layout

if TYPE_CHECKING:
    from firebox.server.templates.catalog import Catalog, TemplateRecord

log = logging.getLogger("firebox.templates")

PUSH_TIMEOUT = 30 * 60.0
PULL_TIMEOUT = 30 * 60.0
DELETE_TIMEOUT = 120.0


def trees_root() -> Path:
    """Where the templates' trees are on this node (builds.write_tree, and pulls)."""
    return image_root() / "templates"


def local_rootfs(record: TemplateRecord) -> Path:
    """Where ``record``'s tree is on this node, whether there or not: under this node's image
    directory, by the tree's name. ``record.rootfs`` is where the node that built it has it."""
    return trees_root() / Path(record.rootfs).parent.name / "rootfs"


def present(rootfs: Path) -> bool:
    # image.json comes last (write_tree, build_cached): with it, the tree is complete
    return (rootfs.parent / "image.json").is_file() and rootfs.is_dir()


def parse_prefix(prefix: str) -> OciRef:
    """``--template-registry``'s reference prefix, checked: it must name its registry."""
    try:
        ref = OciRef.parse(f"{prefix}/template:latest")
    except ImageBuildError:
        ref = None
    if ref is None or prefix.split("/")[0] != ref.registry:
        raise ImageBuildError(
            f"--template-registry {prefix!r} is not a registry and path: write "
            "HOST[:PORT][/PATH], e.g. registry.internal:5000/firebox-templates"
        )
    return ref


def image_ref(prefix: str, record: TemplateRecord) -> str:
    """Where ``record``'s build is pushed: a repository per build, tagged with its first tag."""
    repository = re.sub(r"[^a-z0-9]+", "-", record.build_id.lower()).strip("-") or "build"
    return f"{prefix}/{repository}:{record.tags[0] if record.tags else 'latest'}"


# -- push and pull (blocking: run in a thread) ------------------------------------------------


def _cause(output: str, ref: OciRef) -> str:
    if "http response to https client" in output.lower():
        return (
            f"{ref.registry} speaks plain HTTP: give it TLS, or give every node "
            "--template-registry-insecure"
        )
    return explain(output, ref, host_arch())


def _tls(insecure: bool) -> str:
    return "false" if insecure else "true"


def remove_stale_pushes(root: Path) -> list[str]:
    """Remove what pushes killed with their daemon left (a layer: a tree's size), which no
    push under way can be, as none lasts past its deadline; their names."""
    removed = []
    for entry in root.glob(".push-*") if root.is_dir() else ():
        with contextlib.suppress(OSError, ImageBuildError):
            if time.time() - entry.stat().st_mtime > 2 * PUSH_TIMEOUT:
                remove_tree(entry)
                removed.append(entry.name)
    return removed


def push_tree(rootfs: Path, record: TemplateRecord, ref: str, insecure: bool) -> str:
    """Push ``rootfs`` as the image ``ref``; the digest of its manifest there. Skopeo uses
    this host's own login for the registry, if it has one (``skopeo login``)."""
    parsed, arch = OciRef.parse(ref), host_arch()
    work = Path(tempfile.mkdtemp(prefix=f".push-{record.build_id}-", dir=rootfs.parent.parent))
    try:
        write_layout(rootfs, work / "layout", record, arch)
        cmd = [*skopeo_command(arch, work, PUSH_TIMEOUT), "copy", "--retry-times=2"]
        cmd += [f"--dest-tls-verify={_tls(insecure)}", f"--digestfile={work / 'digest'}"]
        cmd += [f"oci:{work / 'layout'}:{LAYOUT_TAG}", f"docker://{ref}"]
        result = run_logged(cmd, work / "push.log", lambda line: None, PUSH_TIMEOUT + 30)
        if result.returncode != 0:
            cause = (
                f"it took over {PUSH_TIMEOUT / 60:.0f} min"
                if result.returncode is None
                else _cause("\n".join(result.tail), parsed)
            )
            raise ImageBuildError(
                f"pushing the template to {ref} failed: {cause}.\nskopeo said:\n  "
                + "\n  ".join(result.tail[-5:])
            )
        digest = (work / "digest").read_text().strip()
        if not DIGEST.fullmatch(digest):
            raise ImageBuildError(f"skopeo pushed {ref} but gave no digest ({digest[:80]!r})")
        return digest
    finally:
        remove_tree(work)


def delete_image(ref: str, digest: str, insecure: bool) -> None:
    """Remove the image ``ref@digest`` from its registry (its tags go with it)."""
    parsed = OciRef.parse(ref)
    cmd = [tool("skopeo"), "delete", "--retry-times=2", f"--tls-verify={_tls(insecure)}"]
    try:
        out = subprocess.run(
            [*cmd, parsed.pinned(digest)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DELETE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise ImageBuildError(
            f"{parsed.registry} did not answer in {DELETE_TIMEOUT:.0f} s"
        ) from None
    if out.returncode != 0:
        said = (out.stderr.strip().splitlines() or ["(nothing)"])[-1]
        if "unsupported" in said.lower() or "405" in said:
            raise ImageBuildError(f"{parsed.registry} does not allow deletes ({said})")
        raise ImageBuildError(f"{_cause(out.stderr, parsed)}; skopeo said: {said}")


@dataclass(frozen=True)
class _Pulled:
    """The cache entry (cache.CacheKey) a pull makes: named and keyed by the tree's name, as
    builds.write_tree's are, so that a tree built here is found by a pull, and the other way."""

    tree: str
    ref: str
    digest: str

    @property
    def key(self) -> str:
        return self.tree

    @property
    def name(self) -> str:
        return self.tree

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "pulled-template", "ref": self.ref, "digest": self.digest}


def _unpack_pulled(
    entry: _Pulled, insecure: bool, target: Path, logfile: Path, report: Progress
) -> None:
    """The builder of a pulled tree's entry: copy by digest into a layout, check it is the
    image pushed for this tree, unpack it."""
    ref, arch = OciRef.parse(entry.ref), host_arch()
    work = target.parent / "layout"  # removed before the entry is complete
    cmd = [*skopeo_command(arch, target.parent, PULL_TIMEOUT), "copy", "--retry-times=2"]
    cmd += [f"--src-tls-verify={_tls(insecure)}", ref.pinned(entry.digest)]
    cmd.append(f"oci:{work}:{LAYOUT_TAG}")
    report(f"pulling {ref.registry}/{ref.repository}@{entry.digest}")
    result = run_logged(cmd, logfile, lambda line: None, PULL_TIMEOUT + 30)
    if result.returncode != 0:
        cause = (
            f"it took over {PULL_TIMEOUT / 60:.0f} min"
            if result.returncode is None
            else _cause("\n".join(result.tail), ref)
        )
        raise ImageBuildError(f"pulling {ref}@{entry.digest} failed: {cause}")
    # skopeo checked every blob against its digest, and the manifest against ours: the config
    # is the one pushed for this tree, whatever the registry holds now
    manifest, config = read_layout(work)
    labels = (config.get("config") or {}).get("Labels") or {}
    if manifest != entry.digest or labels.get(f"{LABEL}.tree") != entry.tree:
        raise ImageBuildError(
            f"{ref}@{entry.digest} is not the image pushed for {entry.tree} (its manifest "
            f"{manifest}, its tree {labels.get(f'{LABEL}.tree')!r}): build the template again"
        )
    check_platform(ref, config, arch)
    unpack(work, target, logfile, f"{ref}@{entry.digest}")
    remove_tree(work)
    defuse(target)  # nothing of the kind was pushed: kept out all the same (images/oci.py)


def pull_tree(record: TemplateRecord, insecure: bool, report: Progress) -> Path:
    """``record``'s tree pulled into this node's image directory, unless already there."""
    assert record.image_ref is not None and record.image_digest is not None
    entry = _Pulled(Path(record.rootfs).parent.name, record.image_ref, record.image_digest)
    return build_cached(
        entry,
        lambda target, logfile, prog: _unpack_pulled(entry, insecure, target, logfile, prog),
        root=trees_root(),
        progress=report,
    )


# -- the node's side --------------------------------------------------------------------------


def not_here(label: str) -> ApiError:
    return ApiError(
        "unavailable",
        f"template {label!r} has no files on this node and was never pushed to a template "
        "registry: it was built on another node that has none, or its files were removed "
        "here by hand. Give every node the same `firebox serve --template-registry REF` and "
        "build it again (it is then pushed, and pulled by each node that starts it)",
    )


class Distribution:
    """This node's side of the template registry: pushes what it builds, when it has one
    (``prefix``), and pulls what other nodes built."""

    def __init__(self, prefix: str = "", insecure: bool = False) -> None:
        self.prefix = prefix.rstrip("/")
        self.registry = parse_prefix(self.prefix).registry if self.prefix else None
        self.insecure = insecure
        self._pulls: dict[str, asyncio.Task[Path]] = {}
        # a pulled tree is leased as a built one is: the template service says how
        self.hold: Callable[[TemplateRecord], None] = lambda record: None

    def _insecure_for(self, ref: str) -> bool:
        # plain HTTP only to the registry this node was told is plain HTTP
        return self.insecure and OciRef.parse(ref).registry == self.registry

    async def push(self, record: TemplateRecord, progress: Progress) -> TemplateRecord:
        """``record`` pushed to the template registry, and saying where; as it is if this
        node has none. ApiError if the push fails: the build then fails, as a template the
        other nodes cannot start is not done."""
        if not self.prefix:
            return record
        ref = image_ref(self.prefix, record)
        progress(f"pushing the template to {ref}")
        started = time.monotonic()
        rootfs = Path(record.rootfs)
        try:
            digest = await asyncio.to_thread(push_tree, rootfs, record, ref, self.insecure)
        except ImageBuildError as e:
            raise ApiError("unavailable", str(e)) from None
        progress(f"pushed {ref}@{digest} in {time.monotonic() - started:.1f} s")
        return replace(record, image_ref=ref, image_digest=digest)

    async def forget(self, record: TemplateRecord) -> None:
        """The registry's copy of a build no template names any more goes too (nodes that
        pulled it drop theirs at their next prune). Best effort: a registry that keeps
        everything (deletes off, as distribution's default) is said so in the log."""
        if not record.image_ref or not record.image_digest:
            return
        try:
            await asyncio.to_thread(
                delete_image,
                record.image_ref,
                record.image_digest,
                self._insecure_for(record.image_ref),
            )
        except ImageBuildError as e:
            log.warning(
                "template build %s: its image stays in the registry: %s", record.build_id, e
            )

    async def ensure(self, record: TemplateRecord, label: str) -> tuple[Path, bool]:
        """``record``'s tree on this node: its rootfs, and whether it had to be pulled (or
        waited for a pull under way). ApiError if it is not here and cannot be pulled."""
        rootfs = local_rootfs(record)
        pulled = False
        if not present(rootfs):
            if not record.image_ref or not record.image_digest:
                raise not_here(label)
            name = rootfs.parent.name
            task = self._pulls.get(name)
            if task is None:
                task = asyncio.create_task(self._pull(record, label))
                self._pulls[name] = task
                task.add_done_callback(lambda t: self._done(name, t))
            # shielded: a create given up on leaves the pull to finish for the next one
            rootfs = await asyncio.shield(task)
            pulled = True
        self.hold(record)
        return rootfs, pulled

    def _done(self, name: str, task: asyncio.Task[Path]) -> None:
        self._pulls.pop(name, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    async def _pull(self, record: TemplateRecord, label: str) -> Path:
        assert record.image_ref is not None
        log.warning("template %s: pulling its tree from %s", label, record.image_ref)
        started = time.monotonic()
        try:
            rootfs = await asyncio.to_thread(
                pull_tree,
                record,
                self._insecure_for(record.image_ref),
                lambda message: log.info("template %s: %s", label, message),
            )
        except ImageBuildError as e:
            log.warning("template %s: the pull failed: %s", label, e)
            raise ApiError(
                "unavailable",
                f"template {label!r} was built on another node, and this node could not pull "
                f"it: {e}",
            ) from None
        log.warning("template %s: pulled in %.1f s", label, time.monotonic() - started)
        return rootfs


async def warm(
    catalog: Catalog, caller: str, ref: str, admin: bool = False, owner: str | None = None
) -> dict[str, Any]:
    """Have template ``ref`` on this node ahead of its first create: pulled if another node
    built it. Whoever may read it may warm it (its key, any key if it is public); the admin
    any key's, named by ``owner`` where several keys have a template of that name."""
    from firebox.server.templates.catalog import builtin  # catalog imports this module

    if (name := builtin(ref)) is not None:
        catalog.resolve(caller, name)  # there, or ApiError saying how to build it
        return {"template_id": name, "pulled": False}
    if owner is not None and owner != caller and not admin:
        raise ApiError("forbidden", "only the admin key warms another key's template")
    record = catalog.find(owner or caller, ref)
    if record is None and admin and owner is None:
        found = catalog.named(ref)
        if len({r.owner for r in found}) > 1:
            raise ApiError(
                "conflict",
                f"several keys have a template {ref!r}: name the one with ?owner=KEY_ID "
                "(GET /templates shows whose each is)",
            )
        record = found[0] if found else None
    if record is None:
        raise ApiError("not_found", f"no template {ref!r} for this key")
    _, pulled = await catalog.distribution.ensure(record, ref)
    return {"template_id": record.build_id, "pulled": pulled}
