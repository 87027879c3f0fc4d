"""Schedule specs and occurrence math: pure, unit-tested.

Cron dialect, told by the number of fields: 5 fields are Unix cron (cronsim: minute first,
0 or 7 = Sunday); 6 or 7 fields are Quartz (seconds first, optional year, `?`, `L`, `W`,
`#`, 1=SUN..7=SAT), evaluated by actors/quartz.py with Quartz's meanings."""
from __future__ import annotations

import enum
from datetime import datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from actors.quartz import Quartz, QuartzError
from actors.quartz import parse as parse_quartz

if TYPE_CHECKING:
    from actors.registry import Registry

# An occurrence this much overdue was missed (no daemon ran): `skip` drops it,
# `run_once` runs it once and skips the rest of the backlog.
LATE_AFTER = timedelta(seconds=60)


class Missed(str, enum.Enum):
    SKIP = "skip"
    RUN_ONCE = "run_once"


class ScheduleError(ValueError):
    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class Spec(msgspec.Struct, frozen=True):
    cron: str | None
    every: float | None
    timezone: str
    missed: str

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def validate(cron: str | None, every: float | None, timezone: str, missed: str) -> Spec:
    if (cron is None) == (every is None):
        raise ScheduleError("give exactly one of cron or every_seconds", "$.cron")
    if missed not in (m.value for m in Missed):
        raise ScheduleError("missed must be skip or run_once", "$.missed")
    try:
        if "\x00" in timezone or not timezone:
            raise ZoneInfoNotFoundError(timezone)
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown timezone {timezone!r}", "$.timezone") from None
    if cron is not None:
        check_cron(cron, ZoneInfo(timezone))
    if every is not None and not 1 <= every <= 366 * 86400:
        raise ScheduleError("every_seconds must be between 1 and 31622400", "$.every_seconds")
    return Spec(cron, every, timezone, missed)


def dialect(cron: str) -> str:
    """"unix" (5 fields) or "quartz" (6 or 7 fields, seconds first)."""
    return "unix" if len(cron.split()) == 5 else "quartz"


@lru_cache(maxsize=256)
def _quartz(cron: str) -> Quartz:
    return parse_quartz(cron)


def check_cron(cron: str, zone: ZoneInfo, now: datetime | None = None) -> None:
    n = len(cron.split())
    if n not in (5, 6, 7):
        raise ScheduleError(f"cron expression {cron!r} has {n} fields: give 5 (Unix: minute first) or "
                            "6-7 (Quartz: seconds first, optional year)", "$.cron")
    now = now or datetime.now(zone)
    if dialect(cron) == "unix":
        try:
            next(CronSim(cron, now.astimezone(zone)))
        except (CronSimError, StopIteration, ValueError) as e:
            raise ScheduleError(f"bad cron expression {cron!r}: {e}", "$.cron") from None
        return
    try:
        q = _quartz(cron)
    except QuartzError as e:
        raise ScheduleError(f"bad Quartz cron expression {cron!r}: {e}", "$.cron") from None
    if q.next_after(now, zone) is None:
        raise ScheduleError(f"cron expression {cron!r} never fires after {now:%Y-%m-%d}", "$.cron")


# A Quartz schedule whose last year has passed stays, due at a time that never comes.
NEVER = datetime(9999, 12, 31, tzinfo=ZoneInfo("UTC"))


def next_after(spec: Spec, t: datetime) -> datetime:
    """The first occurrence strictly after `t`."""
    if spec.every is not None:
        # aligned to the epoch, so every daemon computes the same occurrences
        step = spec.every
        n = int(t.timestamp() // step) + 1
        return datetime.fromtimestamp(n * step, tz=t.tzinfo)
    cron = spec.cron or ""
    if dialect(cron) == "unix":
        return next(CronSim(cron, t.astimezone(spec.zone())))
    nxt = _quartz(cron).next_after(t, spec.zone())
    return NEVER if nxt is None else nxt


def plan_fire(spec: Spec, occurrence: datetime, now: datetime) -> tuple[bool, datetime]:
    """Fire this occurrence? And the schedule's next occurrence after it."""
    late = now - occurrence > LATE_AFTER
    if not late:
        return True, next_after(spec, occurrence)
    return spec.missed == Missed.RUN_ONCE.value, next_after(spec, now)


def check_declared(registry: "Registry") -> None:
    """Every Schedule declared in a job module, checked before the daemon starts: a bad one
    is a code bug that would otherwise leave a nightly job silently never running."""
    import json

    from actors.instances import SubmitError
    from actors.instances import validate as validate_params
    from actors.job import JobDefinitionError
    for s in registry.schedules.values():
        try:
            validate(s.cron, s.every, s.timezone, s.missed)
            validate_params(registry, s.job, json.dumps(s.params), s.version)
        except (ScheduleError, SubmitError) as e:
            raise JobDefinitionError(f"schedule {s.name!r} declared in a job module is invalid: {e}") from None
