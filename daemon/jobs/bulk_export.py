"""`chunkd.bulk-export`: a table's rows to NDJSON files, one file per resource type per
chunk, plus a FHIR Bulk Data style manifest (batch2's bulk export, in four steps)."""
from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime

import msgspec

from chunkd import Context, Job, ParameterError, PermanentError, Sink
from daemon.jobs.sandbox import check_table, open_output, output_parts, output_url, remove_stale_temps, write_file
from storage.tables import INTEGER_TYPES, JSON_TYPES, Db, Table, db_time, export_sql, find_table


class ExportParams(msgspec.Struct, forbid_unknown_fields=True):
    table: str                        # e.g. "resources" or "fhir.resources"
    output: str                       # a directory name below CHUNKD_EXPORT_DIR
    id_column: str = "id"             # an integer key: keyset pagination
    type_column: str | None = None    # one file per value of this column per chunk
    types: list[str] = []             # only these types (needs type_column)
    updated_column: str | None = None
    since: datetime | None = None     # rows with updated_column >= since
    column: str | None = None         # export this json/jsonb column instead of the whole row
    chunk_size: int = 1000

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size <= 100_000:
            raise ValueError("chunk_size must be between 1 and 100000")


class IdBatch(msgspec.Struct, array_like=True):
    batch: int
    tt: str                           # transactionTime of the export
    ids: list[int]


class RowBatch(msgspec.Struct, array_like=True):
    batch: int
    tt: str
    rows: list[tuple[str, str]]       # (type, JSON text)


class FileRef(msgspec.Struct, array_like=True):
    type: str
    url: str
    count: int
    tt: str


class Output(msgspec.Struct):
    type: str
    url: str
    count: int


class Manifest(msgspec.Struct, rename="camel"):
    transaction_time: str
    request: str
    requires_access_token: bool
    output: list[Output]
    error: list[Output]


export = Job("chunkd.bulk-export", params=ExportParams,
             description="Export a table's rows as NDJSON files with a FHIR Bulk Data style manifest.")


async def resolve(p: ExportParams, db: Db) -> Table:
    t = await find_table(db, p.table)
    if t is None:
        raise ParameterError(f"no table or view named {p.table!r}", "$.table")
    check_table(t, "$.table")

    def col(name: str | None, field: str, kinds: frozenset[str] | None = None) -> None:
        if name is None:
            return
        if name not in t.columns:
            raise ParameterError(f"table {p.table!r} has no column {name!r}", f"$.{field}")
        if kinds is not None and t.columns[name] not in kinds:
            raise ParameterError(f"column {name!r} is {t.columns[name]}; expected one of {sorted(kinds)}",
                                 f"$.{field}")
    col(p.id_column, "id_column", INTEGER_TYPES)
    col(p.type_column, "type_column")
    col(p.updated_column, "updated_column")
    col(p.column, "column", JSON_TYPES)
    if p.types and p.type_column is None:
        raise ParameterError("types needs type_column", "$.types")
    if p.since is not None and p.updated_column is None:
        raise ParameterError("since needs updated_column", "$.since")
    return t


@export.params_check
async def check(p: ExportParams, db: Db) -> None:
    output_parts(p.output)
    await resolve(p, db)


def _sql(p: ExportParams, t: Table):  # type: ignore[no-untyped-def]
    return export_sql(t, p.id_column, p.type_column, p.updated_column, p.column, bool(p.types), p.since is not None)


def _filters(p: ExportParams) -> list[object]:
    return ([p.types] if p.types else []) + ([p.since] if p.since is not None else [])


@export.first_step(emits=IdBatch, weight=1)
async def list_ids(p: ExportParams, ctx: Context, sink: Sink[IdBatch]) -> None:
    t = await resolve(p, ctx.db)  # the table (or the allow-list) may have changed since submit
    q = _sql(p, t)
    os.close(open_output(output_parts(p.output), create=True))
    tt = (await db_time(ctx.db)).isoformat()  # "as of the data": the database's clock, not the host's
    last: int | None = None
    batch = 0
    while True:
        if last is None:
            rows = await ctx.db.fetch(q.first_page, *_filters(p), p.chunk_size)
        else:
            rows = await ctx.db.fetch(q.next_page, last, *_filters(p), p.chunk_size)
        if not rows:
            return
        ids = [r[0] for r in rows]
        sink.emit(IdBatch(batch, tt, ids))
        batch += 1
        last = ids[-1]


@export.step(consumes=IdBatch, emits=RowBatch, max_attempts=5, weight=2)
async def load_rows(p: ExportParams, chunk: IdBatch, ctx: Context, sink: Sink[RowBatch]) -> None:
    t = await resolve(p, ctx.db)
    default_type = [] if p.type_column else [t.name]
    rows = await ctx.db.fetch(_sql(p, t).load, chunk.ids, *_filters(p), *default_type)
    sink.emit(RowBatch(chunk.batch, chunk.tt, [(resource_type(r[0]), r[1]) for r in rows]))


# A type is a name (Patient, Observation): anything else in the type column is row data,
# which must not reach file names or the report (a view token can read it).
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def resource_type(value: object) -> str:
    if value is None:
        return "unknown"
    return value if isinstance(value, str) and _TYPE.match(value) else "other"


def file_name(rtype: str, batch: int) -> str:
    return f"{rtype}-{batch:06d}.ndjson"


@export.step(consumes=RowBatch, emits=FileRef, max_attempts=5, weight=2)
def write_files(p: ExportParams, chunk: RowBatch, ctx: Context, sink: Sink[FileRef]) -> None:
    """Plain function (file I/O runs in a worker thread). Each file is written under a
    temporary name and renamed (sandbox.write_file), so a crash never leaves half a file
    under the final name, and a retry overwrites cleanly."""
    parts = output_parts(p.output)
    by_type: dict[str, list[str]] = defaultdict(list)
    for rtype, body in chunk.rows:
        by_type[resource_type(rtype)].append(body)
    try:
        out = open_output(parts, create=False)
    except FileNotFoundError:
        raise PermanentError(f"output directory {p.output!r} does not exist under the export root") from None
    try:
        for rtype, bodies in sorted(by_type.items()):
            name = file_name(rtype, chunk.batch)
            write_file(out, name, "".join(b + "\n" for b in bodies).encode())
            sink.emit(FileRef(rtype, output_url(parts, name), len(bodies), chunk.tt))
    finally:
        os.close(out)


@export.reduce(consumes=FileRef)
async def manifest(p: ExportParams, files: AsyncIterator[FileRef], ctx: Context) -> Manifest:
    outputs: list[Output] = []
    tt = ""
    async for f in files:
        outputs.append(Output(f.type, f.url, f.count))
        tt = f.tt
    outputs.sort(key=lambda o: (o.type, o.url))
    m = Manifest(transaction_time=tt or (await db_time(ctx.db)).isoformat(),
                 request=f"chunkd.bulk-export table={p.table}", requires_access_token=False,
                 output=outputs, error=[])
    try:
        out = open_output(output_parts(p.output), create=False)
    except FileNotFoundError:
        return m  # nothing was exported (no rows): no directory, no manifest file
    try:
        remove_stale_temps(out)
        write_file(out, "manifest.json", msgspec.json.format(msgspec.json.encode(m)))
    finally:
        os.close(out)
    return m


