"""What a build starts from: a template (firebox's own, or one this key may use), Debian of a
release the host's apt sources serve, or an OCI image. Made into a tree (and layers, for a
template built on another) by images/bases.py; resolved here into what the builder needs."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firebox import images
from firebox.images import bases as image_bases
from firebox.images import layers
from firebox.images.errors import ImageBuildError
from firebox.images.oci_ref import OciRef
from firebox.server.boot import rootfs_for
from firebox.server.egress import EgressSettings
from firebox.server.errors import ApiError
from firebox.server.templates.catalog import Catalog, builtin
from firebox.server.templates.steps import State, from_envs
from firebox.settings import StartConfig

# E2B's images that stand for its default template, whose firebox twin is ``python``
E2B_BASE_IMAGES = ("e2bdev/base", "e2bdev/code-interpreter")
# ``debian:<release name>`` is debootstrapped from the host's own mirror; ``debian:12`` or
# ``debian:bookworm-slim`` name images of a registry, and are pulled as such
_DEBIAN = re.compile(r"^(?:docker\.io/)?(?:library/)?debian:([a-z]+)$")


@dataclass(frozen=True)
class Base:
    label: str  # what the template says it was built on
    tree: Path
    key: str  # the parent key of the first layer
    layers: tuple[str, ...] = ()  # a template's own layers, when built on it
    state: State = State()
    start: StartConfig = field(default_factory=StartConfig)


def _image_key(tree: Path) -> str:
    # an image cache entry's name is its recipe's (or digest's) hash: its identity
    return "image:" + tree.parent.name


async def resolve(
    spec: dict[str, Any],
    owner: str,
    catalog: Catalog,
    progress: Callable[[str], None],
    egress: EgressSettings,
) -> Base:
    if (ref := spec.get("fromTemplate")) is not None:
        return await _template(ref, owner, catalog)
    image = spec["fromImage"]
    if image.split(":")[0] in E2B_BASE_IMAGES:
        return await _template(images.DEFAULT_TEMPLATE, owner, catalog)
    if _names_template(image, owner, catalog):
        # a Dockerfile's ``FROM python`` (or one of the key's templates): firebox's own
        return await _template(image, owner, catalog)
    try:
        if match := _DEBIAN.match(image):
            tree = await asyncio.to_thread(image_bases.debian_base, match.group(1), progress)
        else:
            creds = spec.get("fromImageRegistry") or {}
            loopback = await _registry_allowed(image, egress)
            tree = await asyncio.to_thread(
                image_bases.oci_base,
                image,
                progress,
                username=creds.get("username"),
                password=creds.get("password"),
                # a registry on the host's own loopback, lifted off the floor by the
                # operator, speaks plain HTTP as Docker allows for it
                insecure_loopback=loopback,
            )
    except ImageBuildError as e:
        raise ApiError("invalid_argument", f"base image {image}: {e}") from None
    return Base(image, tree, _image_key(tree))


async def _registry_allowed(image: str, egress: EgressSettings) -> bool:
    """Refuse a registry in the ranges no sandbox may reach (the host's loopback, private
    networks, cloud metadata) unless the operator lifted them (--egress-permit): the daemon
    pulls as the host, and a template must not make it a way in. Whether it is loopback."""
    try:
        ref = OciRef.parse(image)
    except ImageBuildError as e:
        raise ApiError("invalid_argument", str(e)) from None
    host = ref.registry.rsplit(":", 1)[0] if not ref.registry.endswith("]") else ref.registry
    host = host.strip("[]")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = await egress.resolver.resolve(host)
        except (OSError, TimeoutError) as e:
            raise ApiError(
                "invalid_argument", f"the registry {host} of {image} does not resolve ({e})"
            ) from None
    floor = egress.floor()
    for address in addresses:
        if (why := floor.reason(address)) is not None:
            raise ApiError(
                "forbidden",
                f"the registry {host} of {image} is at {address}: {why}; the daemon does not "
                "pull from there (an operator may lift a range with --egress-permit)",
            )
    return ref.loopback


def _names_template(image: str, owner: str, catalog: Catalog) -> bool:
    """Whether ``image`` (no registry, no path) is a template's name: firebox's own without a
    tag, or one the key may use. ``python:3.12`` stays an image to pull."""
    if "/" in image or "@" in image:
        return False
    name, _, tag = image.partition(":")
    if builtin(name) is not None:
        return tag in ("", "latest")
    try:
        return catalog.find(owner, image) is not None
    except ApiError:
        return False


async def _template(ref: str, owner: str, catalog: Catalog) -> Base:
    if (name := builtin(ref)) is not None:
        tree = rootfs_for(name)
        return Base(name, tree, _image_key(tree))
    record = catalog.find(owner, ref)
    if record is None:
        raise ApiError(
            "invalid_argument",
            f"fromTemplate {ref!r}: no such template for this key; build it first, or name "
            f"one of firebox's own ({', '.join(images.known_templates())})",
        )
    start = record.start
    state = State(from_envs(start.envs), start.workdir or State.workdir, start.user)
    keys = record.layers
    missing = [k for k in keys if layers.find(k) is None]
    if missing or not Path(record.base_tree).is_dir():
        # built on another node (or its layers pruned here): its flattened tree is the base,
        # pulled from the template registry if need be; no step of it is then shared
        tree, _ = await catalog.distribution.ensure(record, ref)
        return Base(f"template {ref}", tree, _image_key(tree), (), state, start)
    parent = keys[-1] if keys else "template:" + record.build_id
    return Base(f"template {ref}", Path(record.base_tree), parent, keys, state, start)
