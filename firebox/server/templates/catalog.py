"""Which templates exist, whose they are, and what a template name given to a create means.

Two kinds of template:

- firebox's own, made from a recipe by ``firebox image build`` (``python``, the default, and
  ``base``), which every key may use; E2B's default names resolve to them at the E2B edge;
- built ones (server/templates/builds.py), one row per name and tag in the registry's
  ``templates`` table, owned by the key that built them. Another key neither sees nor uses
  one (the same answer as a name nobody built: no oracle), unless an admin made it public.
  In a cluster the table is shared, and a template built on one node is pulled by the others
  from the template registry it was pushed to (distribute.py).

A name is ``name`` or ``name:tag``; the tag defaults to ``latest``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from firebox import images, recipes
from firebox.images import layers
from firebox.server.boot import rootfs_for
from firebox.server.errors import ApiError
from firebox.server.registry import Registry
from firebox.server.templates.distribute import Distribution, local_rootfs, not_here, present
from firebox.settings import StartConfig

DEFAULT_TAG = "latest"
# what E2B's SDKs name firebox's own templates
E2B_ALIASES = {"code-interpreter-v1": images.DEFAULT_TEMPLATE, "code-interpreter": "python"}


@dataclass(frozen=True)
class TemplateRecord:
    build_id: str
    owner: str
    name: str
    tags: tuple[str, ...]
    rootfs: str  # the flattened tree sandboxes start from
    base: str  # what it was built on (an image, an OCI reference, a template)
    base_tree: str
    layers: tuple[str, ...]  # layer keys, lowest first (images/layers.py)
    start: StartConfig
    steps: int
    size_bytes: int
    build_seconds: float
    built_at: float
    pool_size: int | None = None  # sandboxes kept warm of it (None: the daemon's --pool-size)
    public: bool = False
    # where it was pushed for the other nodes (distribute.py): a reference, and the digest of
    # its manifest, which they pull by; None when the node that built it had no registry
    image_ref: str | None = None
    image_digest: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "template_id": self.build_id,
            "name": self.name,
            "tags": list(self.tags),
            "public": self.public,
            "base": self.base,
            "steps": self.steps,
            "layers": len(self.layers),
            "size_bytes": self.size_bytes,  # the whole tree, its base's files included
            # what its own layers hold (shared with templates built on the same steps)
            "layers_bytes": sum(
                int((layers.info(k) or {}).get("size_bytes", 0)) for k in self.layers
            ),
            "build_seconds": self.build_seconds,
            "built_at": self.built_at,
            "start_cmd": self.start.start_cmd,
            "ready_cmd": self.start.ready_cmd,
            "envs": self.start.envs,
            "workdir": self.start.workdir,
            "user": self.start.user,
            "pool_size": self.pool_size,
            "image_ref": self.image_ref,
            "image_digest": self.image_digest,
        }


@dataclass(frozen=True)
class Resolved:
    """A template name made concrete for a create: the tree and how to start it."""

    name: str  # as sandboxes report it
    rootfs: Path
    start: StartConfig | None = None
    build_id: str | None = None
    pool_size: int | None = None


def split(ref: str) -> tuple[str, str]:
    """``name[:tag]`` → (name, tag), checked by the one rule (firebox.recipes)."""
    try:
        name, tag = recipes.split_name(ref)
    except recipes.RecipeError as e:
        raise ApiError("invalid_argument", str(e)) from None
    return name, tag or DEFAULT_TAG


def builtin(name: str) -> str | None:
    """The firebox image template ``name`` means (its E2B aliases too), or None."""
    name = E2B_ALIASES.get(name, name)
    return name if name in images.known_templates() else None


_FIELDS = {f.name for f in fields(TemplateRecord)}


def _record(row: tuple[Any, ...]) -> TemplateRecord:
    # a field a newer node wrote is ignored (readers ignore what they do not know); one an
    # older node did not write takes its default
    data = {k: v for k, v in json.loads(row[0]).items() if k in _FIELDS}
    data["start"] = StartConfig(**data["start"])
    data["tags"] = tuple(data["tags"])
    data["layers"] = tuple(data["layers"])
    return TemplateRecord(**{**data, "public": bool(row[1])})


class Catalog:
    def __init__(
        self, registry: Registry, template_registry: str = "", insecure: bool = False
    ) -> None:
        """``template_registry`` and ``insecure``: the daemon's ``--template-registry`` and
        ``--template-registry-insecure`` (distribute.py)."""
        self.registry = registry
        self.distribution = Distribution(template_registry, insecure)

    def add(self, record: TemplateRecord) -> None:
        """Point each of ``record``'s tags at it (a tag moves from an older build)."""
        body = asdict(record)
        body.pop("public")
        for tag in record.tags:
            self.registry.query(
                "INSERT INTO templates (owner, name, tag, build_id, record, built_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (owner, name, tag) DO UPDATE SET"
                " build_id = excluded.build_id, record = excluded.record,"
                " built_at = excluded.built_at",
                (
                    record.owner,
                    record.name,
                    tag,
                    record.build_id,
                    json.dumps(body),
                    record.built_at,
                ),
            )

    def find(self, owner: str, ref: str) -> TemplateRecord | None:
        """``owner``'s template ``ref``, or a public one of that name; None if neither."""
        name, tag = split(ref)
        rows = self.registry.query(
            "SELECT record, public, owner = ? FROM templates WHERE name = ? AND tag = ?"
            " AND (owner = ? OR public = 1) ORDER BY owner = ? DESC LIMIT 1",
            (owner, name, tag, owner, owner),
        )
        return self._with_tags(_record(rows[0])) if rows else None

    def _with_tags(self, record: TemplateRecord) -> TemplateRecord:
        rows = self.registry.query(
            "SELECT tag FROM templates WHERE build_id = ? ORDER BY tag", (record.build_id,)
        )
        return TemplateRecord(**{**record.__dict__, "tags": tuple(r[0] for r in rows)})

    def visible(self, owner: str, admin: bool = False) -> list[TemplateRecord]:
        """The templates ``owner`` may use (every one, for an admin), one per build."""
        rows = self.registry.query(
            "SELECT MAX(record), MAX(public) FROM templates WHERE owner = ? OR public = 1"
            " OR ? = 1 GROUP BY build_id ORDER BY MAX(built_at) DESC",
            (owner, int(admin)),
        )
        return [self._with_tags(_record(r)) for r in rows]

    def owned(self, owner: str, ref: str) -> list[TemplateRecord]:
        """``owner``'s own builds that ``ref`` names: the one of a tag, or, for a name
        alone, those of every tag of it."""
        name, tag = split(ref)
        if ":" in ref:
            rows = self.registry.query(
                "SELECT record, public FROM templates WHERE owner = ? AND name = ? AND tag = ?",
                (owner, name, tag),
            )
        else:
            rows = self.registry.query(
                "SELECT MAX(record), MAX(public) FROM templates WHERE owner = ? AND name = ?"
                " GROUP BY build_id",
                (owner, name),
            )
        return [self._with_tags(_record(r)) for r in rows]

    def remove(self, owner: str, ref: str) -> None:
        """Drop ``owner``'s tag ``ref`` (``name`` alone: every tag of that name)."""
        name, tag = split(ref)
        if ":" in ref:
            self.registry.query(
                "DELETE FROM templates WHERE owner = ? AND name = ? AND tag = ?",
                (owner, name, tag),
            )
        else:
            self.registry.query("DELETE FROM templates WHERE owner = ? AND name = ?", (owner, name))

    def set_public(self, ref_owner: str, ref: str, public: bool) -> bool:
        name, _ = split(ref)
        before = self.registry.query(
            "SELECT 1 FROM templates WHERE owner = ? AND name = ?", (ref_owner, name)
        )
        self.registry.query(
            "UPDATE templates SET public = ? WHERE owner = ? AND name = ?",
            (int(public), ref_owner, name),
        )
        return bool(before)

    def named(self, ref: str) -> list[TemplateRecord]:
        """Every key's build that ``ref`` names (for the admin)."""
        name, tag = split(ref)
        rows = self.registry.query(
            "SELECT record, public FROM templates WHERE name = ? AND tag = ? ORDER BY owner",
            (name, tag),
        )
        return [self._with_tags(_record(r)) for r in rows]

    def builds_in_use(self) -> set[str]:
        return {r[0] for r in self.registry.query("SELECT DISTINCT build_id FROM templates")}

    def all_records(self) -> list[TemplateRecord]:
        rows = self.registry.query(
            "SELECT MAX(record), MAX(public) FROM templates GROUP BY build_id"
        )
        return [_record(r) for r in rows]

    def _found(self, owner: str, ref: str) -> TemplateRecord:
        record = self.find(owner, ref)
        if record is None:
            known = ", ".join(images.known_templates())
            raise ApiError(
                "invalid_argument",
                f"unknown template {ref!r}: not firebox's own ({known}) nor one this key "
                "built (firebox template list shows them); build it first",
            )
        return record

    def _resolved(self, ref: str, record: TemplateRecord, rootfs: Path) -> Resolved:
        name, tag = split(ref)
        return Resolved(f"{name}:{tag}", rootfs, record.start, record.build_id, record.pool_size)

    def resolve(self, owner: str, ref: str) -> Resolved:
        """What a create of template ``ref`` starts, for ``owner``, if its tree is on this
        node; ApiError if nothing (``ready`` pulls a tree that another node built)."""
        if (name := builtin(ref)) is not None:
            return Resolved(name, rootfs_for(name))
        record = self._found(owner, ref)
        rootfs = local_rootfs(record)
        if not present(rootfs):
            if record.image_ref:
                raise ApiError(
                    "unavailable",
                    f"template {ref!r} was built on another node and is not pulled to this "
                    f"one yet: POST /templates/{ref}/warm pulls it",
                )
            raise not_here(ref)
        return self._resolved(ref, record, rootfs)

    async def ready(self, owner: str, ref: str) -> Resolved:
        """``resolve``, the template's tree pulled to this node first if another node built
        it (and pushed it to the template registry); concurrent creates wait for one pull."""
        if (name := builtin(ref)) is not None:
            return Resolved(name, rootfs_for(name))
        record = self._found(owner, ref)
        rootfs, _ = await self.distribution.ensure(record, ref)
        return self._resolved(ref, record, rootfs)
