"""`chunkd.bulk-export`: a table's rows to NDJSON files, one file per resource type per
chunk, plus a FHIR Bulk Data style manifest (batch2's bulk export, in four steps)."""
from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlsplit

import msgspec

from daemon.sdk import Context, Job, ParameterError, PermanentError, Sink
from storage.tables import INTEGER_TYPES, JSON_TYPES, Db, Table, export_sql, find_table


class ExportParams(msgspec.Struct, forbid_unknown_fields=True):
    table: str                        # e.g. "resources" or "fhir.resources"
    output: str                       # absolute directory, or file:///dir
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


def output_dir(p: ExportParams) -> Path:
    raw = p.output
    if raw.startswith("file://"):
        parts = urlsplit(raw)
        if parts.netloc not in ("", "localhost"):
            raise ParameterError("output file:// URL must be local (file:///dir)", "$.output")
        raw = unquote(parts.path)
    elif "://" in raw:
        raise ParameterError("output must be an absolute directory or a file:// URL", "$.output")
    path = Path(raw)
    if not path.is_absolute():
        raise ParameterError("output must be an absolute directory or a file:// URL", "$.output")
    return path


async def resolve(p: ExportParams, db: Db) -> Table:
    t = await find_table(db, p.table)
    if t is None:
        raise ParameterError(f"no table or view named {p.table!r}", "$.table")

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
    output_dir(p)
    await resolve(p, db)


def _sql(p: ExportParams, t: Table):  # type: ignore[no-untyped-def]
    return export_sql(t, p.id_column, p.type_column, p.updated_column, p.column, bool(p.types), p.since is not None)


def _filters(p: ExportParams) -> list[object]:
    return ([p.types] if p.types else []) + ([p.since] if p.since is not None else [])


@export.first_step(emits=IdBatch, weight=1)
async def list_ids(p: ExportParams, ctx: Context, sink: Sink[IdBatch]) -> None:
    t = await resolve(p, ctx.db)  # the table may have changed since submit
    q = _sql(p, t)
    output_dir(p).mkdir(parents=True, exist_ok=True)
    tt = datetime.now(timezone.utc).isoformat()
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
    sink.emit(RowBatch(chunk.batch, chunk.tt, [(r[0] or "unknown", r[1]) for r in rows]))


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def file_name(rtype: str, batch: int) -> str:
    return f"{_SAFE.sub('_', rtype)[:100]}-{batch:06d}.ndjson"


@export.step(consumes=RowBatch, emits=FileRef, max_attempts=5, weight=2)
def write_files(p: ExportParams, chunk: RowBatch, ctx: Context, sink: Sink[FileRef]) -> None:
    """Plain function (file I/O runs in a worker thread). Each file is written under a
    temporary name and renamed, so a crash never leaves half a file under the final name,
    and a retry overwrites cleanly."""
    out = output_dir(p)
    by_type: dict[str, list[str]] = defaultdict(list)
    for rtype, body in chunk.rows:
        by_type[rtype].append(body)
    for rtype, bodies in sorted(by_type.items()):
        final = out / file_name(rtype, chunk.batch)
        tmp = out / f".{final.name}.tmp-{ctx.attempt}-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for body in bodies:
                    f.write(body)
                    f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except FileNotFoundError:
            raise PermanentError(f"output directory {out} does not exist") from None
        sink.emit(FileRef(rtype, final.as_uri(), len(bodies), chunk.tt))


@export.reduce(consumes=FileRef)
async def manifest(p: ExportParams, files: AsyncIterator[FileRef], ctx: Context) -> Manifest:
    outputs: list[Output] = []
    tt = ""
    async for f in files:
        outputs.append(Output(f.type, f.url, f.count))
        tt = f.tt
    outputs.sort(key=lambda o: (o.type, o.url))
    out = output_dir(p)
    m = Manifest(transaction_time=tt or datetime.now(timezone.utc).isoformat(),
                 request=f"chunkd.bulk-export table={p.table}", requires_access_token=False,
                 output=outputs, error=[])
    if out.is_dir():
        for stale in out.glob(".*.ndjson.tmp-*"):  # attempts that died before their rename
            stale.unlink(missing_ok=True)
        tmp = out / f".manifest.json.tmp-{os.getpid()}"
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(m)))
        os.replace(tmp, out / "manifest.json")
    return m


