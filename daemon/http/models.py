"""Bodies of the HTTP control API (msgspec: validated in, encoded out, and the source of
the OpenAPI schemas, so the document matches what is served)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from actors.instances import Priority, Version
from daemon.http.limits import MAX_IDEMPOTENCY_KEY, MAX_NAME
from storage.schedules import ScheduleState


class ErrorDetail(msgspec.Struct):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorBody(msgspec.Struct):
    error: ErrorDetail


class SubmitRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Its ranges and lengths are msgspec constraints: a value outside them is refused by
    the decoding itself (common._decode: a 422 naming the path), for a single submit and
    for each item of a bulk one alike."""
    job: Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
    parameters: dict[str, Any] = {}
    version: Version | None = None
    idempotency_key: Annotated[str, msgspec.Meta(max_length=MAX_IDEMPOTENCY_KEY)] | None = None
    # -3..3: each level doubles the instance's share of the claims against the instances it
    # shares partitions with (fair share, migrations 0012/0013)
    priority: Priority = 0


class StepInfo(msgspec.Struct):
    index: int
    name: str
    kind: str
    consumes: str | None
    emits: str | None
    max_attempts: int
    transactional: bool
    weight: float


class JobInfo(msgspec.Struct):
    name: str
    version: int
    latest: bool
    gated: bool
    description: str
    concurrency: int | None
    steps: list[StepInfo]
    parameters_type: str = ""                       # the parameter Struct's name
    parameters_schema: dict[str, Any] = {}          # its JSON Schema (msgspec.json.schema)


class JobList(msgspec.Struct):
    jobs: list[JobInfo]


class StepProgress(msgspec.Struct):
    index: int
    name: str
    created: int
    completed: int
    failed: int
    cancelled: int
    errors: int
    states: dict[str, int]


class Instance(msgspec.Struct):
    id: int
    job: str
    version: int
    status: str
    gated: bool
    current_step: int
    parameters: dict[str, Any]
    idempotency_key: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    progress: float
    chunks_per_second: float | None
    eta_seconds: float | None
    error_message: str | None
    error_count: int
    report: Any
    steps: list[StepProgress] | None = None
    warnings: list[str] | None = None
    schedule_id: str | None = None          # the clustered schedule that fired it, if one did
    scheduled_for: datetime | None = None   # that schedule's occurrence
    cancel_reason: str | None = None        # why a CANCELLED instance stopped (a cancel is not an error)
    # While the reduction fails and runs again: its failed attempts (the instance FAILS at the
    # step's max_attempts) and why the last one failed ("statement timeout", ...).
    reduction_attempts: int = 0
    last_error: str | None = None


class InstanceList(msgspec.Struct):
    total: int
    start: int
    count: int
    instances: list[Instance]


class Chunk(msgspec.Struct):
    id: int
    step: int
    step_name: str
    status: str
    attempt: int
    failures: int
    max_attempts: int
    created_at: datetime
    claimed_at: datetime | None
    completed_at: datetime | None
    lease_until: datetime | None
    next_run_at: datetime | None
    error_message: str | None       # the last error, kept when a later attempt succeeded
    error_trace: str | None = None  # the traceback of the last error (bounded, storage.text.MAX_TRACE)
    error_attempt: int | None = None  # the attempt that raised the last error
    data: Any = None


class ChunkList(msgspec.Struct):
    total: int
    start: int
    count: int
    chunks: list[Chunk]


class ScheduleIn(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    job: str
    parameters: dict[str, Any] = {}
    version: Version | None = None
    cron: str | None = None
    every_seconds: float | None = None
    timezone: str = "UTC"
    missed: str = "skip"
    dialect: str | None = None  # quartz, spring or unix; required where Quartz and Spring disagree


class Schedule(ScheduleState, kw_only=True):
    id: str
    job: str
    version: int | None
    parameters: dict[str, Any]
    cron: str | None
    every_seconds: float | None
    dialect: str | None  # the cron's dialect: quartz, spring or unix (null for every_seconds)
    next_fire_times: list[datetime]  # next_fire_at and the occurrences after it (3 in all)


class ScheduleList(msgspec.Struct):
    schedules: list[Schedule]


class Deleted(msgspec.Struct):
    deleted: str


class Health(msgspec.Struct):
    status: str
    problems: list[str]


class ThroughputPoint(msgspec.Struct):
    at: datetime
    completed: int


class Throughput(msgspec.Struct):
    bucket_seconds: float
    points: list[ThroughputPoint]


class Node(msgspec.Struct):
    id: int
    name: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    seen_seconds_ago: float
    partitions: list[int]
    in_flight: int
    leader: bool


class Cluster(msgspec.Struct):
    nodes: list[Node]


class WhoAmI(msgspec.Struct):
    scope: str
    auth_required: bool


SCHEMA_TYPES = (ErrorBody, SubmitRequest, JobList, Instance, InstanceList, ChunkList, Health, ScheduleIn,
                Schedule, ScheduleList, Deleted, Throughput, Cluster, WhoAmI)
