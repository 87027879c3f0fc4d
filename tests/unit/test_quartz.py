"""Quartz cron: the examples of Quartz's CronTrigger tutorial
(quartz-scheduler.org/documentation/quartz-2.5.x/tutorials/crontrigger.html, "Example Cron
Expressions" and "Special characters"), each checked against concrete next fire times that
follow from the tutorial's description."""
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from actors.quartz import QuartzError, parse
from actors.scheduling import NEVER, ScheduleError, dialect, next_after, upcoming, validate

UTC = timezone.utc


def fires(expr: str, start: datetime, n: int, tz: str = "UTC") -> list[datetime]:
    # the tutorial is Quartz's: its numeric days of the week are Quartz's (1 = SUN)
    spec = validate(expr, None, tz, "skip", "quartz") if "2005" not in expr and "2002" not in expr else None
    q = parse(expr)
    out, t = [], start
    for _ in range(n):
        nxt = next_after(spec, t) if spec else q.next_after(t, ZoneInfo(tz))
        assert nxt is not None
        out.append(nxt.astimezone(UTC).replace(tzinfo=None))
        t = nxt
    return out


def d(*a: int) -> datetime:
    return datetime(*a)  # naive UTC, for short tables


# 2026-03-02 is a Monday.
T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)

TUTORIAL = [
    # Fire at 12pm (noon) every day
    ("0 0 12 * * ?", T0, [d(2026, 3, 2, 12), d(2026, 3, 3, 12), d(2026, 3, 4, 12)]),
    # Fire at 10:15am every day (four spellings)
    ("0 15 10 ? * *", T0, [d(2026, 3, 2, 10, 15), d(2026, 3, 3, 10, 15)]),
    ("0 15 10 * * ?", T0, [d(2026, 3, 2, 10, 15), d(2026, 3, 3, 10, 15)]),
    ("0 15 10 * * ? *", T0, [d(2026, 3, 2, 10, 15), d(2026, 3, 3, 10, 15)]),
    # Fire at 10:15am every day during the year 2005
    ("0 15 10 * * ? 2005", datetime(2004, 12, 31, 12, tzinfo=UTC), [d(2005, 1, 1, 10, 15), d(2005, 1, 2, 10, 15)]),
    # Fire every minute starting at 2pm and ending at 2:59pm, every day
    ("0 * 14 * * ?", datetime(2026, 3, 2, 14, 58, tzinfo=UTC), [d(2026, 3, 2, 14, 59), d(2026, 3, 3, 14, 0)]),
    # Fire every 5 minutes starting at 2pm and ending at 2:55pm, every day
    ("0 0/5 14 * * ?", datetime(2026, 3, 2, 14, 50, tzinfo=UTC), [d(2026, 3, 2, 14, 55), d(2026, 3, 3, 14, 0)]),
    # ... AND every 5 minutes starting at 6pm and ending at 6:55pm
    ("0 0/5 14,18 * * ?", datetime(2026, 3, 2, 14, 55, tzinfo=UTC), [d(2026, 3, 2, 18, 0), d(2026, 3, 2, 18, 5)]),
    # Fire every minute starting at 2pm and ending at 2:05pm, every day
    ("0 0-5 14 * * ?", datetime(2026, 3, 2, 14, 4, tzinfo=UTC), [d(2026, 3, 2, 14, 5), d(2026, 3, 3, 14, 0)]),
    # Fire at 2:10pm and at 2:44pm every Wednesday in the month of March
    ("0 10,44 14 ? 3 WED", T0, [d(2026, 3, 4, 14, 10), d(2026, 3, 4, 14, 44), d(2026, 3, 11, 14, 10)]),
    # Fire at 10:15am every Monday, Tuesday, Wednesday, Thursday and Friday
    ("0 15 10 ? * MON-FRI", datetime(2026, 3, 6, 11, tzinfo=UTC), [d(2026, 3, 9, 10, 15), d(2026, 3, 10, 10, 15)]),
    # Fire at 10:15am on the 15th day of every month
    ("0 15 10 15 * ?", T0, [d(2026, 3, 15, 10, 15), d(2026, 4, 15, 10, 15)]),
    # Fire at 10:15am on the last day of every month
    ("0 15 10 L * ?", datetime(2026, 1, 31, 11, tzinfo=UTC), [d(2026, 2, 28, 10, 15), d(2026, 3, 31, 10, 15)]),
    # Fire at 10:15am on the 2nd-to-last last day of every month (Quartz computes last day - 2)
    ("0 15 10 L-2 * ?", T0, [d(2026, 3, 29, 10, 15), d(2026, 4, 28, 10, 15)]),
    # Fire at 10:15am on the last Friday of every month
    ("0 15 10 ? * 6L", T0, [d(2026, 3, 27, 10, 15), d(2026, 4, 24, 10, 15), d(2026, 5, 29, 10, 15)]),
    # ... during the years 2002, 2003, 2004 and 2005
    ("0 15 10 ? * 6L 2002-2005", datetime(2005, 11, 1, tzinfo=UTC), [d(2005, 11, 25, 10, 15), d(2005, 12, 30, 10, 15)]),
    # Fire at 10:15am on the third Friday of every month
    ("0 15 10 ? * 6#3", T0, [d(2026, 3, 20, 10, 15), d(2026, 4, 17, 10, 15)]),
    # Fire at 12pm (noon) every 5 days every month, starting on the first day of the month
    ("0 0 12 1/5 * ?", T0, [d(2026, 3, 6, 12), d(2026, 3, 11, 12), d(2026, 3, 16, 12), d(2026, 3, 21, 12),
                            d(2026, 3, 26, 12), d(2026, 3, 31, 12), d(2026, 4, 1, 12)]),
    # Fire every November 11th at 11:11am
    ("0 11 11 11 11 ?", T0, [d(2026, 11, 11, 11, 11), d(2027, 11, 11, 11, 11)]),
    # Special characters: "0/15" in seconds = 0, 15, 30, 45; "5/15" = 5, 20, 35, 50
    ("5/15 * * * * ?", T0, [d(2026, 3, 2, 0, 0, 5), d(2026, 3, 2, 0, 0, 20), d(2026, 3, 2, 0, 0, 35),
                            d(2026, 3, 2, 0, 0, 50), d(2026, 3, 2, 0, 1, 5)]),
    # "15W": nearest weekday to the 15th (2026-08-15 is a Saturday -> Friday 14th;
    # 2026-11-15 a Sunday -> Monday 16th)
    ("0 0 0 15W * ?", datetime(2026, 8, 1, tzinfo=UTC), [d(2026, 8, 14), d(2026, 9, 15), d(2026, 10, 15),
                                                        d(2026, 11, 16)]),
    # "1W" when the 1st is a Saturday: Monday the 3rd, never the last day of the previous month
    ("0 0 0 1W * ?", datetime(2026, 7, 15, tzinfo=UTC), [d(2026, 8, 3), d(2026, 9, 1)]),
    # "LW": last weekday of the month (2026-05-31 is a Sunday -> Friday 29th)
    ("0 0 0 LW * ?", datetime(2026, 5, 1, tzinfo=UTC), [d(2026, 5, 29), d(2026, 6, 30)]),
    # "L" alone in day-of-week = 7 = Saturday
    ("0 0 0 ? * L", T0, [d(2026, 3, 7), d(2026, 3, 14)]),
    # "#5": the fifth Wednesday; months without one do not fire
    ("0 0 0 ? * 4#5", T0, [d(2026, 4, 29), d(2026, 7, 29), d(2026, 9, 30)]),
    # the tutorial's complex example: 0/5 14,18,3-39,52 * ? JAN,MAR,SEP MON-FRI 2002-2010
    ("0/5 14,18,3-39,52 * ? JAN,MAR,SEP MON-FRI 2002-2010", datetime(2010, 9, 30, 23, 52, 54, tzinfo=UTC),
     [d(2010, 9, 30, 23, 52, 55)]),
]


@pytest.mark.parametrize("expr,start,expected", TUTORIAL, ids=[t[0] for t in TUTORIAL])
def test_quartz_tutorial_examples(expr: str, start: datetime, expected: list[datetime]) -> None:
    assert fires(expr, start, len(expected)) == expected


def test_complex_example_ends_with_its_years() -> None:
    q = parse("0/5 14,18,3-39,52 * ? JAN,MAR,SEP MON-FRI 2002-2010")
    assert q.next_after(datetime(2010, 9, 30, 23, 52, 55, tzinfo=UTC), ZoneInfo("UTC")) is None


def test_spring_scheduled_nightly_is_one_am_daily() -> None:
    spec = validate("0 0 1 * * ?", None, "UTC", "skip")
    assert dialect("0 0 1 * * ?") == "quartz"
    t = datetime(2026, 3, 2, 1, 0, 0, tzinfo=UTC)
    assert next_after(spec, t) == datetime(2026, 3, 3, 1, 0, 0, tzinfo=UTC)
    assert next_after(spec, t - timedelta(seconds=1)) == t


def test_unix_five_fields_keep_unix_meaning() -> None:
    # 5 = Friday in Unix cron, Thursday in Quartz: the dialect is told by the field count
    assert dialect("0 10 * * 5") == "unix"
    unix = validate("0 10 * * 5", None, "UTC", "skip")
    quartz = validate("0 0 10 ? * 5", None, "UTC", "skip", "quartz")
    assert next_after(unix, T0).weekday() == 4
    assert next_after(quartz, T0).weekday() == 3


def test_names_wrap_and_case() -> None:
    assert fires("0 0 0 ? * fri-mon", T0, 4) == [d(2026, 3, 6), d(2026, 3, 7), d(2026, 3, 8), d(2026, 3, 9)]
    assert fires("0 0 22-1 * * ?", T0, 3) == [d(2026, 3, 2, 1), d(2026, 3, 2, 22), d(2026, 3, 2, 23)]
    assert fires("0 0 0 1 jan-feb,DEC ?", T0, 3) == [d(2026, 12, 1), d(2027, 1, 1), d(2027, 2, 1)]


def test_timezone_and_dst() -> None:
    # 02:30 local does not exist on 2026-03-08 in New York: it fires at 03:30 EDT (Quartz's
    # lenient calendar); the repeated 01:30 on 2026-11-01 fires once.
    ny = "America/New_York"
    spec = validate("0 30 2 * * ?", None, ny, "skip")
    n = next_after(spec, datetime(2026, 3, 8, 0, 0, tzinfo=ZoneInfo(ny)))
    assert n.astimezone(UTC) == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
    back = validate("0 30 1 * * ?", None, ny, "skip")
    first = next_after(back, datetime(2026, 11, 1, 0, 0, tzinfo=ZoneInfo(ny)))
    assert first.astimezone(UTC) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert next_after(back, first).astimezone(UTC) == datetime(2026, 11, 2, 6, 30, tzinfo=UTC)


@pytest.mark.parametrize("expr,words", [
    ("0 0 1 * * * * *", "give 5 (Unix: minute first) or 6-7 (Quartz"),
    ("0 0 25 * * ?", "hour 25 is outside 0-23"),
    ("0 0 1 ? * 0", "1=SUN..7=SAT, use SUN; if it is Spring's (0 or 7 = SUN, 1 = MON), say dialect spring"),
    ("0 0 1 5 * MON", "put '?' in one of them"),
    ("0 0 1 ? * ?", "one of them must say"),
    ("0 0 1 ? * 6#6", "1-5"),
    ("0 0 1 ? * FOO", "not a number"),
    ("0 0 1 L,5 * ?", "stand alone"),
    ("? 0 1 * * *", "'?' stands alone"),
    ("0 0/0 1 * * ?", "positive"),
    ("0 0 1 * * ? 1960", "year 1960 is outside 1970-2099"),
    ("0 0 1 30 2 ?", "never fires"),
    ("0 0 1 * * ? 2005", "never fires"),
])
def test_bad_quartz_expressions_say_why(expr: str, words: str) -> None:
    with pytest.raises(ScheduleError) as e:
        validate(expr, None, "UTC", "skip")
    assert words in str(e.value) and e.value.path == "$.cron"


def test_parse_errors_are_quartz_errors() -> None:
    with pytest.raises(QuartzError):
        parse("0 0 1 * *")
    assert NEVER.year == 9999


# ---------------------------------------------------------------- dialects (issue 23)
# Seed 002 (hapi-fhir-groovy, "Tutorial: Implementing a Custom Scheduled Job"): Spring's
# @Scheduled(cron = "0 0 1 * * ?") // Runs every day at 1:00 AM. Seed 004 (Smile CDR, "6.25.5
# Clustered Scheduled Jobs"): Smile schedules with Quartz.
SAT = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)  # a Saturday noon: the next Sunday is the 8th, Monday the 9th


def next_n(spec, t: datetime, n: int) -> list[datetime]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t = next_after(spec, t)
        out.append(t.astimezone(UTC).replace(tzinfo=None))
    return out


@pytest.mark.parametrize("said", [None, "quartz", "spring"])
def test_seed_nightly_fires_daily_at_one_in_both_dialects(said: str | None) -> None:
    # seed 002, "Step 1: Write the Job Script": "0 0 1 * * ?" runs every day at 1:00 AM
    spec = validate("0 0 1 * * ?", None, "UTC", "skip", said, now=SAT)
    assert spec.dialect == (said or "quartz")
    assert next_n(spec, SAT, 3) == [d(2026, 3, 8, 1), d(2026, 3, 9, 1), d(2026, 3, 10, 1)]


def test_numeric_day_of_week_is_refused_without_a_dialect_showing_both_readings() -> None:
    # issue 23: "0 0 1 * * 1" is a Spring user's "Mondays at 01:00" and Quartz's Sundays
    with pytest.raises(ScheduleError) as e:
        validate("0 0 1 * * 1", None, "UTC", "skip", now=SAT)
    msg = str(e.value)
    assert e.value.path == "$.cron"
    assert "quartz reads SUN (next Sun 2026-03-08 01:00:00 UTC)" in msg
    assert "spring reads MON (next Mon 2026-03-09 01:00:00 UTC)" in msg
    assert '"dialect": "quartz" or "spring"' in msg and "--dialect" in msg
    assert "'0 0 1 * * SUN' for Quartz's reading, '0 0 1 * * MON' for Spring's" in msg
    spring = validate("0 0 1 * * 1", None, "UTC", "skip", "spring", now=SAT)
    assert next_n(spring, SAT, 2) == [d(2026, 3, 9, 1), d(2026, 3, 16, 1)]  # Mondays
    quartz = validate("0 0 1 * * 1", None, "UTC", "skip", "quartz", now=SAT)
    assert next_n(quartz, SAT, 2) == [d(2026, 3, 8, 1), d(2026, 3, 15, 1)]  # Sundays


@pytest.mark.parametrize("dow,quartz,spring", [
    ("7", "SAT", "SUN"),
    ("1-5", "SUN,MON,TUE,WED,THU", "MON,TUE,WED,THU,FRI"),
    ("*/2", "SUN,TUE,THU,SAT", "SUN,MON,WED,FRI"),
    ("5L", "the last THU of the month", "the last FRI of the month"),
    ("5#3", "the 3rd THU of the month", "the 3rd FRI of the month"),
])
def test_every_numeric_form_that_differs_is_refused(dow: str, quartz: str, spring: str) -> None:
    with pytest.raises(ScheduleError) as e:
        validate(f"0 0 1 ? * {dow}", None, "UTC", "skip", now=SAT)
    assert f"quartz reads {quartz} (" in str(e.value) and f"spring reads {spring} (" in str(e.value)


@pytest.mark.parametrize("cron,weekday", [
    ("0 0 1 ? * MON", 0), ("0 0 1 ? * mon-fri", 0), ("0 0 1 ? * SUN", 6), ("0 0 1 ? * 1-7", 6),
    ("0 0 1 ? * FRIL", 4), ("0 0 1 ? * FRI#3", 4), ("0 0 1 L * ?", 1),
])
def test_names_and_same_meaning_expressions_pass_without_a_dialect(cron: str, weekday: int) -> None:
    spec = validate(cron, None, "UTC", "skip", now=SAT)
    assert spec.dialect == "quartz"
    assert next_after(spec, SAT).weekday() == weekday
    assert validate(cron, None, "UTC", "skip", "spring", now=SAT).dialect == "spring"
    assert next_after(validate(cron, None, "UTC", "skip", "spring", now=SAT), SAT) == next_after(spec, SAT)


def test_spring_day_numbers() -> None:
    # Spring's CronExpression: 0 and 7 are Sunday, 1 Monday .. 6 Saturday; 5L last Friday
    for sunday in ("0", "7", "SUN"):
        assert next_after(validate(f"0 0 1 ? * {sunday}", None, "UTC", "skip", "spring", now=SAT), SAT) == \
            datetime(2026, 3, 8, 1, tzinfo=UTC)
    assert next_n(validate("0 0 1 ? * 5L", None, "UTC", "skip", "spring", now=SAT), SAT, 2) == \
        [d(2026, 3, 27, 1), d(2026, 4, 24, 1)]
    assert next_n(validate("0 0 1 ? * 5#3", None, "UTC", "skip", "spring", now=SAT), SAT, 1) == [d(2026, 3, 20, 1)]
    assert next_n(validate("0 0 1 ? * 1-5", None, "UTC", "skip", "spring", now=SAT), SAT, 2) == \
        [d(2026, 3, 9, 1), d(2026, 3, 10, 1)]


@pytest.mark.parametrize("cron,every,said,words,path", [
    ("0 0 1 * * ? 2030", None, "spring", "a spring expression has 6", "$.cron"),
    ("0 0 1 * * ?", None, "unix", "a unix expression has 5", "$.cron"),
    ("0 1 * * *", None, "quartz", "a quartz expression has 6 or 7", "$.cron"),
    ("0 0 1 ? * L", None, "spring", "say which day's last", "$.cron"),
    ("0 0 1 ? * 8", None, "spring", "day-of-week 8 is outside", "$.cron"),
    ("0 0 1 * * ?", None, "cronos", "one of quartz, spring, unix", "$.dialect"),
    (None, 60, "quartz", "goes with a cron expression only", "$.dialect"),
])
def test_bad_dialects_say_why(cron: str | None, every: float | None, said: str, words: str, path: str) -> None:
    with pytest.raises(ScheduleError) as e:
        validate(cron, every, "UTC", "skip", said)
    assert words in str(e.value) and e.value.path == path


def test_unix_and_seven_fields_need_no_dialect() -> None:
    assert validate("0 1 * * 1", None, "UTC", "skip").dialect == "unix"  # Unix: 1 = Monday, no ambiguity
    assert validate("0 0 1 ? * 2 2030", None, "UTC", "skip").dialect == "quartz"  # Spring has no year field


def test_upcoming_lists_next_fire_times() -> None:
    spec = validate("0 0 1 * * 1", None, "UTC", "skip", "spring", now=SAT)
    first = next_after(spec, SAT)
    assert [t.astimezone(UTC).replace(tzinfo=None) for t in upcoming(spec, first, 3)] == \
        [d(2026, 3, 9, 1), d(2026, 3, 16, 1), d(2026, 3, 23, 1)]
    ended = validate("0 0 1 * * ? 2026", None, "UTC", "skip", now=datetime(2026, 12, 31, tzinfo=UTC))
    assert len(upcoming(ended, next_after(ended, datetime(2026, 12, 31, tzinfo=UTC)), 3)) == 1
