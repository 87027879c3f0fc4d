"""Schedule specs and occurrence math: pure, unit-tested.

Cron dialects, said per schedule (`dialect`), never guessed where they disagree:
- "unix": 5 fields (cronsim: minute first, 0 or 7 = Sunday);
- "quartz": 6 or 7 fields (seconds first, optional year, `?`, `L`, `W`, `#`, 1=SUN..7=SAT),
  evaluated by actors/quartz.py with Quartz's meanings (Smile CDR's scheduler);
- "spring": 6 fields, Spring's `@Scheduled(cron=...)` (hapi-fhir-groovy): as Quartz but
  day-of-week 0/7=SUN, 1=MON..6=SAT, no year.
Without a dialect, 5 fields are unix and 7 are quartz; 6 fields are quartz when Quartz and
Spring read them alike, and refused, showing both readings, when they do not (a numeric
day-of-week: `0 0 1 * * 1` is Sunday to Quartz, Monday to Spring)."""
from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from actors.quartz import Quartz, QuartzError, describe_days
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


DIALECTS = ("quartz", "spring", "unix")
_FIELD_COUNTS = {"unix": (5,), "quartz": (6, 7), "spring": (6,)}


class Spec(msgspec.Struct, frozen=True):
    cron: str | None
    every: float | None
    timezone: str
    missed: str
    dialect: str | None = None  # for a cron spec: quartz, spring or unix (None: by field count, old rows)

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def validate_id(sid: str) -> None:
    """A schedule id every route can name: /api/v1/schedules/{id} matches no `/` (not even
    sent as %2F: the path is decoded before routing), and clients normalise `.` and `..` away;
    such a schedule would fire forever with no way to show, pause or delete it."""
    if "/" in sid or sid in (".", "..") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in sid):
        raise ScheduleError(f"schedule id {sid!r} cannot be named in a URL: use no '/', no control characters, "
                            "and not '.' or '..'", "$.id")


def validate(cron: str | None, every: float | None, timezone: str, missed: str, dialect: str | None = None,
             now: datetime | None = None) -> Spec:
    """A checked spec; for a cron one, with its dialect said (named, or the only reading)."""
    if (cron is None) == (every is None):
        raise ScheduleError("give exactly one of cron or every_seconds", "$.cron")
    if missed not in (m.value for m in Missed):
        raise ScheduleError("missed must be skip or run_once", "$.missed")
    if dialect is not None and (cron is None or dialect not in DIALECTS):
        raise ScheduleError(f"dialect {dialect!r}: " + ("a dialect goes with a cron expression only" if cron is None
                            else f"one of {', '.join(DIALECTS)}"), "$.dialect")
    try:
        if "\x00" in timezone or not timezone:
            raise ZoneInfoNotFoundError(timezone)
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown timezone {timezone!r}", "$.timezone") from None
    if cron is not None:
        dialect = check_cron(cron, ZoneInfo(timezone), now, dialect)
    if every is not None and not 1 <= every <= 366 * 86400:
        raise ScheduleError("every_seconds must be between 1 and 31622400", "$.every_seconds")
    return Spec(cron, every, timezone, missed, dialect)


def dialect(cron: str) -> str:
    """The dialect a cron expression has when none is named and the readings agree: "unix"
    (5 fields) or "quartz" (6 or 7 fields, seconds first)."""
    return "unix" if len(cron.split()) == 5 else "quartz"


@lru_cache(maxsize=256)
def _quartz(cron: str, dialect: str = "quartz") -> Quartz:
    return parse_quartz(cron, dialect)


def _when(t: datetime | None) -> str:
    return "never" if t is None else t.strftime("%a %Y-%m-%d %H:%M:%S %Z")


def _said(cron: str, zone: ZoneInfo, now: datetime) -> str:
    """The dialect of a 6-field expression named by nobody: quartz if Spring reads it alike."""
    try:
        q = _quartz(cron, "quartz")
    except QuartzError as e:
        hint = ""
        try:
            _quartz(cron, "spring")
            hint = "; if it is Spring's (0 or 7 = SUN, 1 = MON), say dialect spring"
        except QuartzError:
            pass
        raise ScheduleError(f"bad Quartz cron expression {cron!r}: {e}{hint}", "$.cron") from None
    try:
        s = _quartz(cron, "spring")
    except QuartzError:
        return "quartz"  # Spring has no reading of it (a year, 'L' alone): only Quartz's
    if s.dow == q.dow:
        return "quartz"
    fields = cron.split()
    (q_words, q_names), (s_words, s_names) = describe_days(q.dow), describe_days(s.dow)
    as_names = [" ".join(fields[:5] + [names]) for names in (q_names, s_names)]
    raise ScheduleError(
        f"cron expression {cron!r} has a day-of-week ({fields[5]!r}) that Quartz and Spring read differently: "
        f"quartz reads {q_words} (next {_when(q.next_after(now, zone))}), spring reads {s_words} "
        f"(next {_when(s.next_after(now, zone))}). Say which with \"dialect\": \"quartz\" or \"spring\" "
        f"(CLI --dialect, Schedule(dialect=...)), or write day names, which mean the same in both: "
        f"{as_names[0]!r} for Quartz's reading, {as_names[1]!r} for Spring's", "$.cron")


def check_cron(cron: str, zone: ZoneInfo, now: datetime | None = None, dialect: str | None = None) -> str:
    """Checks the expression in its dialect (named, or said by `_said`); returns the dialect."""
    n = len(cron.split())
    if n not in (5, 6, 7):
        raise ScheduleError(f"cron expression {cron!r} has {n} fields: give 5 (Unix: minute first) or "
                            "6-7 (Quartz: seconds first, optional year; Spring: 6)", "$.cron")
    if dialect is not None and n not in _FIELD_COUNTS[dialect]:
        counts = " or ".join(str(c) for c in _FIELD_COUNTS[dialect])
        raise ScheduleError(f"cron expression {cron!r} has {n} fields; a {dialect} expression has {counts}", "$.cron")
    now = now or datetime.now(zone)
    if dialect is None:
        dialect = "unix" if n == 5 else "quartz" if n == 7 else _said(cron, zone, now)
    if dialect == "unix":
        try:
            next(CronSim(cron, now.astimezone(zone)))
        except (CronSimError, StopIteration, ValueError) as e:
            raise ScheduleError(f"bad cron expression {cron!r}: {e}", "$.cron") from None
        return dialect
    try:
        q = _quartz(cron, dialect)
    except QuartzError as e:
        raise ScheduleError(f"bad {dialect.capitalize()} cron expression {cron!r}: {e}", "$.cron") from None
    if q.next_after(now, zone) is None:
        raise ScheduleError(f"cron expression {cron!r} never fires after {now:%Y-%m-%d}", "$.cron")
    return dialect


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
    said = spec.dialect or dialect(cron)
    if said == "unix":
        return next(CronSim(cron, t.astimezone(spec.zone())))
    nxt = _quartz(cron, said).next_after(t, spec.zone())
    return NEVER if nxt is None else nxt


def upcoming(spec: Spec, first: datetime, n: int) -> list[datetime]:
    """`first` (a schedule's next_fire_at) and the occurrences after it: n in all, fewer if it
    ends; all in UTC, as next_fire_at is shown (the instants are the zone's, the offsets one)."""
    out = [first]
    while len(out) < n and out[-1] < NEVER:
        nxt = next_after(spec, out[-1])
        if nxt >= NEVER:
            break
        out.append(nxt)
    return [t.astimezone(UTC) for t in out if t < NEVER]


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
            validate_id(s.name)
            validate(s.cron, s.every, s.timezone, s.missed, s.dialect)
            validate_params(registry, s.job, json.dumps(s.params), s.version)
        except (ScheduleError, SubmitError) as e:
            raise JobDefinitionError(f"schedule {s.name!r} declared in a job module is invalid: {e}") from None
