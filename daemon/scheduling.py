"""Schedule specs and occurrence math: pure, unit-tested."""
from __future__ import annotations

import enum
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

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
        fields = cron.split()
        if len(fields) not in (5, 6):
            raise ScheduleError(f"cron expression {cron!r} needs 5 fields (or 6, seconds first)", "$.cron")
        try:
            next(CronSim(cron, datetime(2026, 1, 1, tzinfo=ZoneInfo(timezone))))
        except (CronSimError, StopIteration, ValueError) as e:
            raise ScheduleError(f"bad cron expression {cron!r}: {e}", "$.cron") from None
    if every is not None and not 1 <= every <= 366 * 86400:
        raise ScheduleError("every_seconds must be between 1 and 31622400", "$.every_seconds")
    return Spec(cron, every, timezone, missed)


def next_after(spec: Spec, t: datetime) -> datetime:
    """The first occurrence strictly after `t`."""
    if spec.every is not None:
        # aligned to the epoch, so every daemon computes the same occurrences
        step = spec.every
        n = int(t.timestamp() // step) + 1
        return datetime.fromtimestamp(n * step, tz=t.tzinfo)
    return next(CronSim(spec.cron or "", t.astimezone(spec.zone())))


def plan_fire(spec: Spec, occurrence: datetime, now: datetime) -> tuple[bool, datetime]:
    """Fire this occurrence? And the schedule's next occurrence after it."""
    late = now - occurrence > LATE_AFTER
    if not late:
        return True, next_after(spec, occurrence)
    return spec.missed == Missed.RUN_ONCE.value, next_after(spec, now)
