"""Versioned SQL migrations, applied in order, each once, by `pixora-face migrate` and at start.

Workers starting together race for the same migration; a transaction-scoped advisory lock
makes the second one wait and then find nothing left to do.
"""

import logging
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

# Any constant shared by every worker; "PIXF" in ASCII.
MIGRATION_LOCK_KEY = 0x50495846


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def bundled_migrations() -> list[Migration]:
    folder = resources.files("schemas") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda migration: migration.version)


async def apply_migrations(
    connection: asyncpg.Connection, *, up_to: int | None = None
) -> list[int]:
    """Apply what is missing, up to version `up_to` if given; return the versions applied now."""
    applied_now = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await connection.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            row["version"]
            for row in await connection.fetch("SELECT version FROM schema_migrations")
        }
        for migration in bundled_migrations():
            if migration.version in done or (up_to is not None and migration.version > up_to):
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            log.info("migration applied: %04d %s", migration.version, migration.name)
            applied_now.append(migration.version)
    return applied_now
