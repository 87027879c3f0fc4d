"""`chunkd.reindex`: recompute a derived index table (id -> source #>> path) for every row
of a source table, in chunks, in transactional mode: each row's write commits in the same
transaction that completes its chunk, so it happens exactly once even across crashes."""
from __future__ import annotations

import re
from collections.abc import AsyncIterator

import msgspec

from chunkd import Context, Job, ParameterError, Sink
from daemon.jobs.sandbox import check_relation, check_table
from storage.tables import (
    INTEGER_TYPES,
    JSON_TYPES,
    Db,
    Table,
    current_schema,
    find_table,
    page_ids_sql,
    reindex_sql,
    reindex_target_ddl,
)

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class ReindexParams(msgspec.Struct, forbid_unknown_fields=True):
    table: str
    source_column: str               # a json/jsonb column
    path: list[str]                  # keys into it, e.g. ["code", "coding", "0", "code"]
    target: str                      # index table (id bigint, value text, writes int), created if missing
    id_column: str = "id"
    chunk_size: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= 100_000:
            raise ValueError("chunk_size must be between 1 and 100000")
        if not self.path:
            raise ValueError("path needs at least one key")


class Ids(msgspec.Struct, array_like=True):
    ids: list[int]


class ReindexReport(msgspec.Struct):
    rows: int
    chunks: int
    target: str


reindex = Job("chunkd.reindex", params=ReindexParams,
              description="Recompute an index table from a JSON column, each row written exactly once.")


async def resolve(p: ReindexParams, db: Db) -> Table:
    t = await find_table(db, p.table)
    if t is None:
        raise ParameterError(f"no table or view named {p.table!r}", "$.table")
    check_table(t, "$.table")
    for field, name, kinds in (("id_column", p.id_column, INTEGER_TYPES),
                               ("source_column", p.source_column, JSON_TYPES)):
        if name not in t.columns:
            raise ParameterError(f"table {p.table!r} has no column {name!r}", f"$.{field}")
        if t.columns[name] not in kinds:
            raise ParameterError(f"column {name!r} is {t.columns[name]}; expected one of {sorted(kinds)}",
                                 f"$.{field}")
    if not _IDENT.match(p.target):
        raise ParameterError("target must be a plain lower-case table name (letters, digits, _)", "$.target")
    existing = await find_table(db, p.target)
    if existing is not None:
        check_table(existing, "$.target")
    else:
        check_relation(await current_schema(db), p.target, "$.target")
    if existing is not None and not {"id", "value", "writes"} <= set(existing.columns):
        raise ParameterError(f"table {p.target!r} exists without the columns id, value, writes", "$.target")
    return t


@reindex.params_check
async def check(p: ReindexParams, db: Db) -> None:
    await resolve(p, db)


@reindex.first_step(emits=Ids, transactional=True)
async def plan(p: ReindexParams, ctx: Context, sink: Sink[Ids]) -> None:
    t = await resolve(p, ctx.db)
    ctx.tx.execute(reindex_target_ddl(p.target))  # commits with this chunk, before any child runs
    first, nxt = page_ids_sql(t, p.id_column)
    rows = await ctx.db.fetch(first, p.chunk_size)
    while rows:
        ids = [r[0] for r in rows]
        sink.emit(Ids(ids))
        rows = await ctx.db.fetch(nxt, ids[-1], p.chunk_size)


@reindex.step(consumes=Ids, emits=Ids, transactional=True, max_attempts=5)
async def recompute(p: ReindexParams, chunk: Ids, ctx: Context, sink: Sink[Ids]) -> None:
    t = await resolve(p, ctx.db)
    ctx.tx.execute(reindex_sql(t, p.id_column, p.source_column, p.target), chunk.ids, p.path)
    sink.emit(Ids([len(chunk.ids)]))


@reindex.reduce(consumes=Ids)
async def report(p: ReindexParams, counts: AsyncIterator[Ids], ctx: Context) -> ReindexReport:
    rows = chunks = 0
    async for c in counts:
        rows += c.ids[0]
        chunks += 1
    return ReindexReport(rows, chunks, p.target)
