"""Guest images: Debian root trees for the sandboxes, built with debootstrap and cached.

The tree comes from the host's own Debian release and apt mirror (``FIREBOX_APT_MIRROR``
overrides the mirror) and is cached under ``FIREBOX_IMAGE_DIR`` (default
``/var/lib/firebox/images``), keyed by a hash of its recipe, so a changed recipe builds anew
and an unchanged one is found instantly. The bases custom templates start from (Debian of
another release, an OCI image from a registry) are cached the same way: ``bases.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import leases
from ._fs import remove_tree
from .apt_sources import host_codename, host_mirror
from .cache import Recipe, build_cached, image_root, read_marker, ready_rootfs
from .errors import ImageBuildError
from .rootfs import DEFAULT_TEMPLATE, TEMPLATES, build_rootfs, get_template, make_recipe

__all__ = [
    "DEFAULT_TEMPLATE",
    "ImageBuildError",
    "build_image",
    "current_recipe",
    "ensure_image",
    "image_in_use",
    "image_path",
    "known_templates",
    "prune_images",
]


def known_templates() -> tuple[str, ...]:
    return tuple(sorted(TEMPLATES))


def current_recipe(template: str = DEFAULT_TEMPLATE) -> Recipe:
    """The recipe ``template`` would be built from on this host right now."""
    get_template(template)  # unknown name -> ValueError before touching apt config
    codename = host_codename()
    return make_recipe(template, codename, host_mirror(codename))


def image_path(template: str = DEFAULT_TEMPLATE) -> Path | None:
    """The ready rootfs for the current recipe of ``template``, or None if not built yet."""
    return ready_rootfs(current_recipe(template), image_root())


_leases: dict[str, int] = {}  # image entry -> this process's lease on it, held until it exits


def image_in_use(template: str = DEFAULT_TEMPLATE) -> Path | None:
    """``image_path``, with the entry leased to this process until it exits, so that no prune
    (``prune_images``, of this process or another) removes it while sandboxes may run on it."""
    recipe = current_recipe(template)
    root = image_root()
    rootfs = ready_rootfs(recipe, root)
    if rootfs is not None and recipe.name not in _leases:
        fd = leases.hold(root / recipe.name, lambda _: ready_rootfs(recipe, root) is not None)
        if fd is None:
            return None  # pruned just now: build it again
        _leases[recipe.name] = fd
    return rootfs


def prune_images() -> list[str]:
    """Remove the trees that no template's current recipe makes and no process holds (each
    is ~1.4 GB); the names of those removed."""
    root = image_root()
    current = {current_recipe(t).name for t in known_templates()}
    stale = [
        entry
        for entry in (root.iterdir() if root.is_dir() else ())
        if entry.name not in current and entry.is_dir() and read_marker(entry) is not None
    ]
    return leases.prune(stale, remove_tree)


def build_image(
    template: str = DEFAULT_TEMPLATE,
    progress: Callable[[str], None] | None = None,
    force: bool = False,
) -> Path:
    """Build ``template`` unless its current recipe is already cached; return the rootfs.

    ``force`` builds again even if cached (the previous tree is moved aside, not deleted,
    because running sandboxes may use it). Needs root. Raises ImageBuildError on failure.
    """
    recipe = current_recipe(template)

    def _quiet(message: str) -> None:
        pass

    report = progress or _quiet
    return build_cached(
        recipe,
        lambda target, log, prog: build_rootfs(recipe, target, log, prog),
        root=image_root(),
        progress=report,
        force=force,
    )


def ensure_image(
    template: str = DEFAULT_TEMPLATE, progress: Callable[[str], None] | None = None
) -> Path:
    """The rootfs for ``template``, building it first if needed (``build_image`` without force)."""
    return build_image(template, progress)
