"""An example job module for the chunkd image: CHUNKD_JOBS=acme_jobs.export.

Fetches numbered pages from an HTTP endpoint, one chunk per page, and sums their sizes in a
reduction. It uses `requests`, the third-party package the example Dockerfile adds; the
fetch step is a plain function, so chunkd runs it in a worker thread and the blocking
HTTP call does not stall the daemon's event loop."""
from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import requests

from chunkd import Context, Job, Sink


class FetchParams(msgspec.Struct, forbid_unknown_fields=True):
    base_url: str   # pages are {base_url}/page-{n}.json
    pages: int


class Page(msgspec.Struct, array_like=True):
    n: int


class Fetched(msgspec.Struct, array_like=True):
    n: int
    size: int


class Total(msgspec.Struct):
    pages: int
    bytes: int


job = Job("acme.fetch", version=1, params=FetchParams, gated=True)


@job.first_step(emits=Page)
async def plan(params: FetchParams, ctx: Context, sink: Sink[Page]) -> None:
    for n in range(params.pages):
        sink.emit(Page(n))


@job.step(consumes=Page, emits=Fetched, max_attempts=5)
def fetch(params: FetchParams, chunk: Page, ctx: Context, sink: Sink[Fetched]) -> None:
    # A failed request raises: chunkd retries the chunk with backoff, up to max_attempts.
    r = requests.get(f"{params.base_url}/page-{chunk.n}.json", timeout=10)
    r.raise_for_status()
    sink.emit(Fetched(chunk.n, len(r.content)))


@job.reduce(consumes=Fetched)
async def total(params: FetchParams, chunks: AsyncIterator[Fetched], ctx: Context) -> Total:
    pages = size = 0
    async for f in chunks:
        pages += 1
        size += f.size
    return Total(pages, size)
