"""The registry on both of its databases: SQLite (one host, the default) and PostgreSQL (a
cluster), behind one interface, checked by the same tests.

Each test takes ``registry``, which is made once per database: a SQLite file of its own, or
the cluster's PostgreSQL registry (``firebox.server.cluster.postgres.PostgresRegistry``) on a
database of a PostgreSQL server started for this module (tests/cluster/harness.py), with the
schema applied by ``firebox db migrate`` and emptied between tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from firebox.images.cache import IMAGE_DIR_ENV
from firebox.server.errors import ApiError
from firebox.server.registry import Conflict, KeyRecord, Registry
from firebox.server.templates.catalog import Catalog, TemplateRecord
from firebox.settings import StartConfig
from tests.cluster.harness import Postgres, Unavailable, migrate, postgres_unavailable

DATABASES = ["sqlite", "postgres"]
# What the tests may leave behind in PostgreSQL, emptied before each (yoyo's own tables and
# the schema's version stay)
SKIP_TABLES = ("_yoyo_log", "_yoyo_migration", "_yoyo_version", "yoyo_lock")

# A factory of registries on the test's one database: ``open_registry(node="a")``.
Opener = Callable[..., Registry]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    if reason := postgres_unavailable():
        pytest.skip(reason)
    try:
        server = Postgres()
    except Unavailable as e:
        pytest.skip(str(e))
    with server:
        migrate(server.url)
        yield server.url


def _empty(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        tables = [
            r[0]
            for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if r[0] not in SKIP_TABLES
        ]
        db.execute(f"TRUNCATE {', '.join(tables)} CASCADE")


@pytest.fixture(params=DATABASES)
def open_registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens registries (of any node) on this test's database, fresh for the test, and
    closes them after."""
    opened: list[Registry] = []
    if request.param == "sqlite":
        path = tmp_path / "registry.db"

        def opener(node: str = "") -> Registry:
            opened.append(Registry(path, node=node))
            return opened[-1]
    else:
        url = request.getfixturevalue("postgres_url")
        _empty(url)
        from firebox.server.cluster.postgres import PostgresRegistry

        def opener(node: str = "") -> Registry:
            opened.append(PostgresRegistry(url, node=node))
            return opened[-1]

    try:
        yield opener
    finally:
        for r in opened:
            r.close()


@pytest.fixture
def registry(open_registry: Opener) -> Registry:
    return open_registry()


def _key(registry: Registry, key_id: str = "k1", admin: bool = False) -> str:
    """A key in the registry; its hash."""
    key_hash = f"hash-of-{key_id}"
    registry.add_key(key_id, f"name of {key_id}", key_hash, admin)
    return key_hash


def _sandbox(registry: Registry, sandbox_id: str, owner: str = "k1") -> None:
    now = time.time()
    registry.add_sandbox(sandbox_id, owner, "python", "jail", {"team": "a"}, now, now + 300)


def _state(registry: Registry, sandbox_id: str) -> tuple[Any, ...]:
    rows = registry.query(
        "SELECT state, paused_at, end_at, metadata, node FROM sandboxes WHERE id = ?",
        (sandbox_id,),
    )
    assert len(rows) == 1
    return tuple(rows[0])


# -- keys -------------------------------------------------------------------------------------


def test_a_key_is_found_by_its_hash_and_listed(registry: Registry) -> None:
    admin = _key(registry, "admin", admin=True)
    user = _key(registry, "k1")
    assert registry.key_by_hash(admin) == KeyRecord("admin", "name of admin", True)
    assert registry.key_by_hash(user) == KeyRecord("k1", "name of k1", False)
    assert registry.key_by_hash("no such hash") is None
    listed = registry.all_keys()
    assert [k["id"] for k in listed] == ["admin", "k1"]
    assert listed[0]["admin"] is True and listed[1]["admin"] is False
    assert all(isinstance(k["created_at"], float) and k["revoked_at"] is None for k in listed)
    assert "hash" not in listed[0]


def test_a_revoked_key_is_refused_and_listed_as_revoked(registry: Registry) -> None:
    admin = _key(registry, "admin", admin=True)
    user = _key(registry, "k1")
    assert registry.key_by_hash(user) is not None  # now known: cached
    assert registry.revoke_key("k1") is True
    assert registry.key_by_hash(user) is None
    assert registry.revoke_key("k1") is False  # already
    assert registry.revoke_key("nobody") is False
    assert registry.revoke_key("admin") is False  # the admin's key is never revoked
    assert registry.key_by_hash(admin) is not None
    revoked = {k["id"]: k["revoked_at"] for k in registry.all_keys()}
    assert revoked["admin"] is None and isinstance(revoked["k1"], float)


def test_a_key_revoked_by_another_process_is_refused_once_its_cache_expires(
    open_registry: Opener,
) -> None:
    # a cluster: a gateway revokes, a node that knew the key must stop believing it
    here, there = open_registry(), open_registry()
    user = _key(here, "k1")
    assert there.key_by_hash(user) is not None
    here.revoke_key("k1")
    there.KEY_CACHE_SECONDS = 0.0  # (PostgreSQL's: a few seconds; one host's: forever)
    assert there.key_by_hash(user) is None


def test_a_key_id_or_hash_taken_is_a_conflict(registry: Registry) -> None:
    _key(registry, "k1")
    with pytest.raises(Conflict):
        registry.add_key("k1", "again", "another hash", False)
    with pytest.raises(Conflict):
        registry.add_key("k2", "same secret", "hash-of-k1", False)
    assert [k["id"] for k in registry.all_keys()] == ["k1"]


def test_a_given_key_is_added_once_by_the_first(open_registry: Opener) -> None:
    # every process of a cluster adds the admin key of its secret as it starts
    first, second = open_registry(), open_registry(node="n2")
    first.add_given_key("admin", "admin", "h", True)
    second.add_given_key("admin", "another name", "h", True)
    first.add_given_key("admin", "admin", "h", True)
    assert [(k["id"], k["name"]) for k in second.all_keys()] == [("admin", "admin")]
    assert second.key_by_hash("h") == KeyRecord("admin", "admin", True)


# -- sandboxes --------------------------------------------------------------------------------


def test_a_sandboxs_life_in_the_registry(registry: Registry) -> None:
    _key(registry, "k1")
    _sandbox(registry, "sbx_1")
    assert registry.running_ids() == ["sbx_1"]
    assert registry.live_records() == [("sbx_1", "k1", None)]
    state, paused_at, _, metadata, node = _state(registry, "sbx_1")
    assert (state, paused_at, node) == ("running", None, "")
    assert metadata == '{"team": "a"}'

    registry.set_record("sbx_1", {"pid": 42, "socket": "/run/x.sock"})
    assert registry.live_records() == [("sbx_1", "k1", {"pid": 42, "socket": "/run/x.sock"})]
    registry.set_end_at("sbx_1", 1234.5)
    assert _state(registry, "sbx_1")[2] == 1234.5

    registry.set_paused("sbx_1", 99.0)
    assert _state(registry, "sbx_1")[:2] == ("paused", 99.0)
    assert registry.running_ids() == ["sbx_1"]  # paused is not ended
    registry.set_paused("sbx_1", None)
    assert _state(registry, "sbx_1")[:2] == ("running", None)

    assert registry.end_reason("sbx_1", "k1") is None  # not ended
    registry.mark_ended("sbx_1", "killed")
    assert registry.running_ids() == [] and registry.live_records() == []
    assert registry.end_reason("sbx_1", "k1") == "killed"
    assert registry.end_reason("sbx_1", "someone else") is None  # no oracle
    assert registry.end_reason("sbx_nope", "k1") is None

    # an ended sandbox stays ended: no late record nor pause revives it
    registry.set_paused("sbx_1", 100.0)
    registry.set_record("sbx_1", {"late": True})
    assert _state(registry, "sbx_1")[0] == "ended"
    assert registry.live_records() == []


def test_a_sandbox_id_taken_is_a_conflict(registry: Registry) -> None:
    _key(registry, "k1")
    _sandbox(registry, "sbx_1")
    with pytest.raises(Conflict):
        _sandbox(registry, "sbx_1")


def test_each_node_adopts_only_its_own_sandboxes(open_registry: Opener) -> None:
    a, b, host = open_registry(node="node-a"), open_registry(node="node-b"), open_registry()
    _key(a, "k1")
    _sandbox(a, "sbx_a1")
    _sandbox(a, "sbx_a2")
    _sandbox(b, "sbx_b1")
    assert sorted(a.running_ids()) == ["sbx_a1", "sbx_a2"]
    assert b.running_ids() == ["sbx_b1"]
    assert sorted(r[0] for r in a.live_records()) == ["sbx_a1", "sbx_a2"]
    assert [r[0] for r in b.live_records()] == ["sbx_b1"]
    assert host.running_ids() == []  # "" is one host's, none of these
    assert _state(a, "sbx_b1")[4] == "node-b"  # yet every row is seen by every node
    # ending one of another node's (a gateway marking a lost node's sandboxes) is seen there
    a.mark_ended("sbx_b1", "lost")
    assert b.running_ids() == [] and b.end_reason("sbx_b1", "k1") == "lost"


# -- query: the statements of the modules that own tables -------------------------------------


def test_query_takes_question_mark_parameters_and_literal_percents(registry: Registry) -> None:
    _key(registry, "k1")
    _key(registry, "k2")
    assert registry.query("SELECT id FROM keys WHERE name = ?", ("name of k2",)) == [("k2",)]
    rows = registry.query("SELECT id FROM keys WHERE name LIKE 'name of %' ORDER BY id")
    assert [r[0] for r in rows] == ["k1", "k2"]
    assert registry.query("SELECT id FROM keys WHERE id LIKE ? AND admin = ?", ("%2", 0)) == [
        ("k2",)
    ]
    # a statement without rows gives none; RETURNING gives them
    assert registry.query("UPDATE keys SET name = ? WHERE id = ?", ("x", "k1")) == []
    assert registry.query("DELETE FROM keys WHERE id = ? RETURNING id", ("k1",)) == [("k1",)]


def test_a_snapshot_name_taken_is_a_conflict_and_unnamed_ones_are_many(
    registry: Registry,
) -> None:
    # server/snapshots.py's statements
    _key(registry, "k1")
    insert = (
        "INSERT INTO snapshots (id, owner, name, sandbox_id, hidden, created_at, record, node)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )
    registry.query(insert, ("s1", "k1", "mine", "sbx_1", 0, 1.0, "{}", "node-a"))
    with pytest.raises(Conflict):
        registry.query(insert, ("s2", "k1", "mine", "sbx_1", 0, 2.0, "{}", "node-a"))
    registry.query(insert, ("s3", "k1", None, "sbx_1", 1, 3.0, "{}", "node-a"))
    registry.query(insert, ("s4", "k1", None, "sbx_1", 1, 4.0, "{}", "node-b"))
    rows = registry.query("SELECT id, node FROM snapshots ORDER BY created_at")
    assert rows == [("s1", "node-a"), ("s3", "node-a"), ("s4", "node-b")]


# -- the templates' catalog (server/templates/catalog.py) -------------------------------------


def _template(build_id: str, tags: tuple[str, ...], **kw: Any) -> TemplateRecord:
    fields: dict[str, Any] = {
        "build_id": build_id,
        "owner": "k1",
        "name": "app",
        "tags": tags,
        "rootfs": f"/nowhere/templates/{build_id}/rootfs",
        "base": "python",
        "base_tree": "/nowhere",
        "layers": ("layer-a",),
        "start": StartConfig(start_cmd="sleep infinity", envs={"A": "1"}),
        "steps": 1,
        "size_bytes": 10,
        "build_seconds": 1.5,
        "built_at": time.time(),
        **kw,
    }
    return TemplateRecord(**fields)


def _resolve_error(catalog: Catalog, owner: str, ref: str) -> str:
    """The code of the error resolving ``ref`` gives: the records are in the database, their
    trees on no node here (a tree's place is the templates' business, not the registry's)."""
    with pytest.raises(ApiError) as e:
        catalog.resolve(owner, ref)
    return e.value.code


def test_the_catalog_adds_finds_lists_and_resolves(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IMAGE_DIR_ENV, str(tmp_path))  # no tree of a template is found here
    _key(registry, "k1")
    _key(registry, "k2")
    catalog = Catalog(registry)
    v1 = _template("b1", ("latest", "v1"), built_at=1.0)
    catalog.add(v1)

    found = catalog.find("k1", "app")
    assert found is not None and found.build_id == "b1" and found.tags == ("latest", "v1")
    assert found.start == v1.start and found.layers == ("layer-a",)
    assert catalog.find("k1", "app:v1") == found
    assert catalog.find("k2", "app") is None  # another key's: not even seen
    assert _resolve_error(catalog, "k1", "app:v1") == "unavailable"  # known, not here
    assert _resolve_error(catalog, "k2", "app:v1") == "invalid_argument"  # unknown to k2
    assert _resolve_error(catalog, "k1", "app:v9") == "invalid_argument"

    # a new build takes the tag "latest" from the old one, which keeps "v1"
    v2 = _template("b2", ("latest",), built_at=2.0)
    catalog.add(v2)
    assert catalog.find("k1", "app:latest").build_id == "b2"  # type: ignore[union-attr]
    assert catalog.find("k1", "app:v1").tags == ("v1",)  # type: ignore[union-attr]
    assert [(t.build_id, t.tags) for t in catalog.visible("k1")] == [
        ("b2", ("latest",)),
        ("b1", ("v1",)),
    ]
    assert catalog.visible("k2") == []
    assert [t.build_id for t in catalog.visible("k2", admin=True)] == ["b2", "b1"]
    assert sorted(t.build_id for t in catalog.owned("k1", "app")) == ["b1", "b2"]
    assert [t.build_id for t in catalog.owned("k1", "app:v1")] == ["b1"]
    assert catalog.builds_in_use() == {"b1", "b2"}
    assert sorted(t.build_id for t in catalog.all_records()) == ["b1", "b2"]

    # public: every key sees and uses it, its own template of that name first
    assert catalog.set_public("k1", "app", True) is True
    assert catalog.set_public("k1", "nothing", True) is False
    assert [t.build_id for t in catalog.visible("k2")] == ["b2", "b1"]
    assert all(t.public for t in catalog.visible("k2"))
    assert _resolve_error(catalog, "k2", "app") == "unavailable"  # found now
    catalog.add(replace(_template("b3", ("latest",)), owner="k2"))
    assert catalog.find("k2", "app").build_id == "b3"  # type: ignore[union-attr]

    catalog.remove("k1", "app:v1")
    assert catalog.find("k1", "app:v1") is None
    catalog.remove("k1", "app")
    assert catalog.owned("k1", "app") == [] and catalog.builds_in_use() == {"b3"}
