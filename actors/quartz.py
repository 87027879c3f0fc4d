"""Quartz cron expressions (what Smile CDR writes) and Spring's (`@Scheduled(cron=...)`, what
hapi-fhir-groovy writes), pure.

Fields, seconds first: `sec min hour day-of-month month day-of-week [year]`.
Supported as Quartz's CronExpression documents them: `*`, `?` (day fields), lists `,`,
ranges `-` (wrapping, e.g. `FRI-MON`, `22-2`), increments `/` (`0/15`, `*/5`, `10-40/10`),
month names JAN-DEC, day names SUN-SAT with 1=SUN..7=SAT, `L` (`L`, `L-3`, `LW` in
day-of-month; `L` alone = SAT, `6L` = last Friday in day-of-week), `W` (`15W` nearest
weekday, never crossing the month), `#` (`6#3` = third Friday), years 1970-2099.

No well-kept PyPI library evaluates Quartz with Quartz's meanings (cronsim and croniter
are Unix cron: 0=Sunday, no `W`/`#` combination rules), so this is a small evaluator:
it walks matching days, then the hours/minutes/seconds of each day, in wall-clock time.
One deliberate leniency over Quartz: `*` in both day fields means every day (Spring
accepts it; Quartz would refuse); restricting both day fields is refused as in Quartz.

Spring's dialect (`parse(expr, dialect="spring")`) differs only in the day-of-week field and
in having no year: exactly 6 fields, day-of-week 0 or 7 = SUN, 1 = MON .. 6 = SAT (ISO, as
Spring's CronExpression), names as everywhere; `5L` = last Friday, `5#3` = third Friday. It
is parsed into the same Quartz structure (day numbers translated to Quartz's 1=SUN..7=SAT),
so one evaluator serves both.
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

MAX_YEAR = 2099
_MONTHS = {n: i for i, n in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                        "NOV", "DEC"], start=1)}
DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")  # index + 1 = Quartz's number
_DAYS = {n: i for i, n in enumerate(DAY_NAMES, start=1)}
_SPRING_DAYS = {n: (i - 2) % 7 + 1 for n, i in _DAYS.items()}  # ISO: MON=1 .. SUN=7
DIALECTS = ("quartz", "spring")
_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week", "year")
_BOUNDS = {"second": (0, 59), "minute": (0, 59), "hour": (0, 23), "day-of-month": (1, 31), "month": (1, 12),
           "day-of-week": (1, 7), "year": (1970, MAX_YEAR)}


class QuartzError(ValueError):
    pass


@dataclass(frozen=True)
class DayOfMonth:
    values: frozenset[int]          # plain days
    last_offset: int | None = None  # L or L-n
    last_weekday: bool = False      # LW
    nearest_weekday: int | None = None  # nW


@dataclass(frozen=True)
class DayOfWeek:
    values: frozenset[int]          # 1=SUN..7=SAT
    last_of: int | None = None      # 6L: last Friday of the month
    nth: tuple[int, int] | None = None  # (day, n): 6#3


@dataclass(frozen=True)
class Quartz:
    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    dom: DayOfMonth | None          # None: "?" (or "*" when day-of-week is restricted)
    months: frozenset[int]
    dow: DayOfWeek | None
    years: frozenset[int] | None    # None: every year

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months or (self.years is not None and d.year not in self.years):
            return False
        if self.dom is not None:
            return _dom_matches(self.dom, d)
        if self.dow is not None:
            return _dow_matches(self.dow, d)
        return True

    def next_after(self, t: datetime, zone: tzinfo) -> datetime | None:
        """The first fire time strictly after `t` (aware), or None if there is none
        before 2100. Wall times in a DST gap fire at the shifted instant (as Quartz's
        lenient calendar does); in a repeated hour they fire once, the first time."""
        local = t.astimezone(zone)
        day = local.date()
        first = (local.hour, local.minute, local.second)
        while day.year <= MAX_YEAR:
            if not self.day_matches(day):
                day = self._next_day(day)
                continue
            for h in self.hours:
                if (day == local.date()) and h < first[0]:
                    continue
                for m in self.minutes:
                    if day == local.date() and (h, m) < first[:2]:
                        continue
                    for s in self.seconds:
                        if day == local.date() and (h, m, s) < first:
                            continue
                        at = datetime.combine(day, time(h, m, s), tzinfo=zone)
                        if at > t:
                            return at
            day = self._next_day(day)
        return None

    def _next_day(self, d: date) -> date:
        if self.years is not None and d.year not in self.years:
            later = [y for y in self.years if y > d.year]
            return date(min(later), 1, 1) if later else date(MAX_YEAR + 1, 1, 1)
        if d.month not in self.months:  # jump to the 1st of the next month (cheap for Feb 30ths)
            return date(d.year + 1, 1, 1) if d.month == 12 else date(d.year, d.month + 1, 1)
        return d + timedelta(days=1)


def _last_day(d: date) -> int:
    return calendar.monthrange(d.year, d.month)[1]


def _dom_matches(spec: DayOfMonth, d: date) -> bool:
    last = _last_day(d)
    if d.day in spec.values:
        return True
    if spec.last_offset is not None and d.day == max(1, last - spec.last_offset):
        return True
    if spec.last_weekday:
        target = date(d.year, d.month, last)
        while target.weekday() >= 5:
            target -= timedelta(days=1)
        if d == target:
            return True
    if spec.nearest_weekday is not None:
        wanted = spec.nearest_weekday
        if wanted > last:  # "31W" in a 30-day month: no fire that month (as Quartz)
            return False
        target = date(d.year, d.month, wanted)
        if target.weekday() == 5:   # Saturday: Friday before, unless that leaves the month
            target = target - timedelta(days=1) if wanted > 1 else target + timedelta(days=2)
        elif target.weekday() == 6:  # Sunday: Monday after, unless that leaves the month
            target = target + timedelta(days=1) if wanted < last else target - timedelta(days=2)
        if d == target:
            return True
    return False


def _quartz_dow(d: date) -> int:
    return (d.weekday() + 1) % 7 + 1  # Monday=0 -> 2; Sunday=6 -> 1


def _dow_matches(spec: DayOfWeek, d: date) -> bool:
    q = _quartz_dow(d)
    if q in spec.values:
        return True
    if spec.last_of is not None and q == spec.last_of and d.day + 7 > _last_day(d):
        return True
    if spec.nth is not None and q == spec.nth[0] and (d.day - 1) // 7 + 1 == spec.nth[1]:
        return True
    return False


# ---------------------------------------------------------------- parsing
def _spring_to_quartz(iso: int) -> int:
    return iso % 7 + 1  # MON=1 -> 2, SAT=6 -> 7, SUN=7 -> 1


def _number(token: str, field: str, names: dict[str, int] | None, spring: bool = False) -> int:
    up = token.upper()
    if names and up in names:
        return names[up]
    if spring and field == "day-of-week" and up == "0":
        return 7  # Spring: 0 and 7 are both Sunday
    if not up.isdigit():
        hint = " (names: " + "-".join([next(iter(names)), list(names)[-1]]) + ")" if names else ""
        raise QuartzError(f"{field} {token!r} is not a number{hint}")
    n = int(up)
    lo, hi = _BOUNDS[field]
    if not lo <= n <= hi:
        extra = "; Quartz counts 1=SUN..7=SAT, use SUN" if field == "day-of-week" and n == 0 else ""
        raise QuartzError(f"{field} {n} is outside {lo}-{hi}{extra}")
    return n


def _values(text: str, field: str, names: dict[str, int] | None = None, spring: bool = False) -> frozenset[int]:
    """`*`, lists, ranges (wrapping past the maximum as Quartz does), increments."""
    lo, hi = _BOUNDS[field]
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise QuartzError(f"{field} has an empty list item")
        base, _, step_text = part.partition("/")
        step = 1
        if _:
            if not step_text.isdigit() or int(step_text) == 0:
                raise QuartzError(f"{field} increment {step_text!r} must be a positive number")
            step = int(step_text)
            if step > hi - lo + 1 and field != "year":
                raise QuartzError(f"{field} increment {step} is larger than the field's range {lo}-{hi}")
        if base in ("*", ""):
            start, end = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _number(a, field, names, spring), _number(b, field, names, spring)
        else:
            start = _number(base, field, names, spring)
            end = hi if _ else start  # "5/15": from 5 to the end
        span = end - start if end >= start else (hi - start) + (end - lo) + 1
        for k in range(0, span + 1, step):
            v = start + k
            out.add(v if v <= hi else v - (hi - lo + 1))
    return frozenset(out)


def _day_of_month(text: str) -> DayOfMonth:
    up = text.upper()
    if up == "L":
        return DayOfMonth(frozenset(), last_offset=0)
    if m := re.fullmatch(r"L-(\d+)", up):
        n = int(m.group(1))
        if n > 30:
            raise QuartzError(f"day-of-month offset {text!r} must be at most L-30")
        return DayOfMonth(frozenset(), last_offset=n)
    if up in ("LW", "WL"):
        return DayOfMonth(frozenset(), last_weekday=True)
    if m := re.fullmatch(r"(\d+)W", up):
        return DayOfMonth(frozenset(), nearest_weekday=_number(m.group(1), "day-of-month", None))
    if "L" in up or "W" in up:
        raise QuartzError(f"day-of-month {text!r}: L and W stand alone (L, L-3, LW, 15W), not in lists or ranges")
    return DayOfMonth(_values(text, "day-of-month"))


def _day_of_week(text: str, spring: bool = False) -> DayOfWeek:
    up = text.upper()
    names = _SPRING_DAYS if spring else _DAYS
    conv = _spring_to_quartz if spring else (lambda n: n)
    if up == "L":
        if spring:
            raise QuartzError("day-of-week 'L' alone: say which day's last (5L or FRIL = the last Friday)")
        return DayOfWeek(frozenset({7}))  # "L" alone = the last day of the week, Saturday
    if m := re.fullmatch(r"(\w+?)L", up):
        return DayOfWeek(frozenset(), last_of=conv(_number(m.group(1), "day-of-week", names, spring)))
    if m := re.fullmatch(r"(\w+)#(\d+)", up):
        n = int(m.group(2))
        if not 1 <= n <= 5:
            raise QuartzError(f"day-of-week {text!r}: the n in #n must be 1-5")
        return DayOfWeek(frozenset(), nth=(conv(_number(m.group(1), "day-of-week", names, spring)), n))
    if "#" in up or re.search(r"\dL|L$", up):
        raise QuartzError(f"day-of-week {text!r}: L and # stand alone (6L, 6#3), not in lists or ranges")
    return DayOfWeek(frozenset(conv(v) for v in _values(text, "day-of-week", names, spring)))


def describe_days(dow: DayOfWeek | None) -> tuple[str, str]:
    """(words, the day-of-week field spelled with names) of a parsed day-of-week: names mean
    the same in Quartz and Spring, so the second is an unambiguous way to write it."""
    if dow is None:
        return "every day", "*"
    if dow.last_of is not None:
        name = DAY_NAMES[dow.last_of - 1]
        return f"the last {name} of the month", f"{name}L"
    if dow.nth is not None:
        name, n = DAY_NAMES[dow.nth[0] - 1], dow.nth[1]
        return f"the {n}{'st' if n == 1 else 'nd' if n == 2 else 'rd' if n == 3 else 'th'} {name} of the month", \
            f"{name}#{n}"
    names = ",".join(DAY_NAMES[v - 1] for v in sorted(dow.values))
    return names, names


def parse(expression: str, dialect: str = "quartz") -> Quartz:
    """`dialect`: "quartz" (day-of-week 1=SUN..7=SAT, optional year) or "spring" (0/7=SUN,
    1=MON..6=SAT, no year)."""
    fields = expression.split()
    spring = dialect == "spring"
    if spring and len(fields) != 6:
        raise QuartzError(f"a Spring cron expression has 6 fields (seconds first, no year), not {len(fields)}")
    if len(fields) not in (6, 7):
        raise QuartzError(f"a Quartz expression has 6 or 7 fields (seconds first, optional year), not {len(fields)}")
    sec, minute, hour, dom, month, dow = fields[:6]
    for i, f in enumerate(fields):
        if "?" in f and (i not in (3, 5) or f != "?"):
            raise QuartzError(f"{_FIELDS[i]} {f!r}: '?' stands alone and only in day-of-month or day-of-week")
    dom_any, dow_any = dom in ("?", "*"), dow in ("?", "*")
    if not dom_any and not dow_any:
        raise QuartzError("restricting both day-of-month and day-of-week is not supported (Quartz refuses it, "
                          "Spring would require both to match): put '?' in one of them")
    if dom == "?" and dow == "?":
        raise QuartzError("'?' in both day-of-month and day-of-week: one of them must say which days")
    years = None
    if len(fields) == 7 and fields[6] != "*":
        years = _values(fields[6], "year")
    return Quartz(
        expression=expression,
        seconds=tuple(sorted(_values(sec, "second"))),
        minutes=tuple(sorted(_values(minute, "minute"))),
        hours=tuple(sorted(_values(hour, "hour"))),
        dom=None if dom_any else _day_of_month(dom),
        months=_values(month, "month", _MONTHS),
        dow=None if dow_any else _day_of_week(dow, spring),
        years=years,
    )
