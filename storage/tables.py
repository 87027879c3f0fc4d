"""SQL over the user's own tables, for the built-in jobs: names are resolved against the
catalog and quoted, never pasted in (no SQL injection through job parameters)."""
from __future__ import annotations

from typing import Any, Protocol

import asyncpg
import msgspec

from storage import sql

INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
JSON_TYPES = frozenset({"json", "jsonb"})


class Db(Protocol):
    async def fetch(self, query: str, *args: Any) -> list[Any]: ...
    async def fetchval(self, query: str, *args: Any) -> Any: ...


class Table(msgspec.Struct, frozen=True):
    schema: str
    name: str
    columns: dict[str, str]  # name -> type

    @property
    def sql(self) -> str:
        return f"{quote(self.schema)}.{quote(self.name)}"


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def find_table(db: Db, name: str) -> Table | None:
    """The table `name` resolves to (search path and quoting rules of Postgres), or None."""
    try:
        rows = await db.fetch(sql.CATALOG_TABLE, name)
    except (asyncpg.PostgresError, asyncpg.DataError):  # invalid name syntax, e.g. SQL in the name
        return None
    if not rows:
        return None
    schema, rel = rows[0][0], rows[0][1]
    cols = {r[0]: r[1] for r in await db.fetch(sql.CATALOG_COLUMNS, f"{quote(schema)}.{quote(rel)}")}
    return Table(schema, rel, cols)


async def db_time(db: Db) -> Any:
    """The database's clock (a bulk export's transactionTime is "as of the data")."""
    return await db.fetchval(sql.DB_NOW)


async def current_schema(db: Db) -> str:
    """Where an unqualified new table is created."""
    return await db.fetchval(sql.CATALOG_CURRENT_SCHEMA)


# ---------------------------------------------------------------- bulk export
class ExportSql(msgspec.Struct, frozen=True):
    first_page: str
    next_page: str
    load: str


def export_sql(t: Table, id_col: str, type_col: str | None, updated_col: str | None,
               column: str | None, filter_types: bool, since: bool) -> ExportSql:
    """Keyset pagination over ids (never OFFSET) and the row loader. Arguments:
    pages: [$1 last id,] types?, since?, limit; load: ids, types?, since?, default type."""
    tid = quote(id_col)

    def where(first: int) -> tuple[str, int]:
        conds, n = [], first
        if filter_types:
            conds.append(f"t.{quote(type_col or '')}::text = ANY(${n}::text[])")
            n += 1
        if since:
            conds.append(f"t.{quote(updated_col or '')} >= ${n}")
            n += 1
        return "".join(f" AND {c}" for c in conds), n

    w1, n1 = where(1)
    w2, n2 = where(2)
    first = f"SELECT t.{tid} FROM {t.sql} t WHERE true{w1} ORDER BY t.{tid} LIMIT ${n1}"
    nxt = f"SELECT t.{tid} FROM {t.sql} t WHERE t.{tid} > $1{w2} ORDER BY t.{tid} LIMIT ${n2}"
    wl, nl = where(2)
    type_expr = f"t.{quote(type_col)}::text" if type_col else f"${nl}::text"
    body = f"t.{quote(column)}::text" if column else "to_jsonb(t)::text"
    load = (f"SELECT {type_expr}, {body} FROM {t.sql} t WHERE t.{tid} = ANY($1::bigint[]){wl} "
            f"ORDER BY t.{tid}")
    return ExportSql(first, nxt, load)


# ---------------------------------------------------------------- reindex
def reindex_target_ddl(target: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {quote(target)} (id bigint PRIMARY KEY, value text, "
            "writes int NOT NULL DEFAULT 1, written_at timestamptz NOT NULL DEFAULT now())")


def reindex_sql(t: Table, id_col: str, source_col: str, target: str) -> str:
    """Recompute `value` = source #>> path for the given ids; `writes` counts how often a row
    was written, so a double application would show."""
    q = quote(target)
    return (f"INSERT INTO {q} (id, value) SELECT t.{quote(id_col)}, t.{quote(source_col)} #>> $2::text[] "
            f"FROM {t.sql} t WHERE t.{quote(id_col)} = ANY($1::bigint[]) "
            f"ON CONFLICT (id) DO UPDATE SET value = EXCLUDED.value, writes = {q}.writes + 1, written_at = now()")


def page_ids_sql(t: Table, id_col: str) -> tuple[str, str]:
    tid = quote(id_col)
    return (f"SELECT t.{tid} FROM {t.sql} t ORDER BY t.{tid} LIMIT $1",
            f"SELECT t.{tid} FROM {t.sql} t WHERE t.{tid} > $1 ORDER BY t.{tid} LIMIT $2")
