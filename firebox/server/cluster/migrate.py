"""``firebox db migrate``: the cluster's schema, applied with yoyo-migrations.

The migrations are SQL files in ``migrations/``, applied in order once each; yoyo records
which were applied and takes a lock in the database, so two gateways starting at once (both
running it, as the Kubernetes manifests do) apply each migration once. Migrations only add:
an older node or gateway keeps working while a newer one has migrated (rolling upgrades).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from yoyo import get_backend, read_migrations

MIGRATIONS = Path(__file__).parent / "migrations"


def _yoyo_url(url: str) -> str:
    # yoyo names its PostgreSQL driver by the scheme: psycopg 3 is ``postgresql+psycopg``
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        raise ValueError(f"--cluster-db must be a postgresql:// URL, not {parts.scheme or url!r}")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))


def migrate(url: str) -> list[str]:
    """Apply what is not applied yet; the ids of what was applied now."""
    backend = get_backend(_yoyo_url(url))
    migrations = read_migrations(str(MIGRATIONS))
    with backend.lock():
        todo = backend.to_apply(migrations)
        backend.apply_migrations(todo)
    return [m.id for m in todo]
