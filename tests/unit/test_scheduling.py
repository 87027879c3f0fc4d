from datetime import datetime, timedelta, timezone

import pytest

from actors.scheduling import LATE_AFTER, ScheduleError, next_after, plan_fire, validate
from daemon.wiring.config import ConfigError, load

UTC = timezone.utc


def test_every_is_aligned_so_daemons_agree() -> None:
    spec = validate(None, 10, "UTC", "skip")
    t = datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC)
    assert next_after(spec, t) == datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)
    assert next_after(spec, datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC)) == datetime(2026, 1, 1, 0, 0, 20, tzinfo=UTC)


def test_cron_five_and_six_fields_and_timezone() -> None:
    spec = validate("30 2 * * *", None, "Europe/Berlin", "skip")
    n = next_after(spec, datetime(2026, 6, 1, 0, 0, tzinfo=UTC))
    assert n.astimezone(UTC) == datetime(2026, 6, 1, 0, 30, tzinfo=UTC)  # 02:30 CEST
    six = validate("*/15 * * * * *", None, "UTC", "skip")  # seconds first
    assert next_after(six, datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)) == datetime(2026, 1, 1, 0, 0, 15, tzinfo=UTC)


@pytest.mark.parametrize("cron,every,tz,missed,path", [
    ("61 * * * *", None, "UTC", "skip", "$.cron"),
    ("* * *", None, "UTC", "skip", "$.cron"),
    ("* * * * *", None, "Mars/Olympus", "skip", "$.timezone"),
    (None, None, "UTC", "skip", "$.cron"),
    ("* * * * *", 5, "UTC", "skip", "$.cron"),
    (None, 0.5, "UTC", "skip", "$.every_seconds"),
    (None, 5, "UTC", "sometimes", "$.missed"),
])
def test_bad_specs_name_the_field(cron, every, tz, missed, path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ScheduleError) as e:
        validate(cron, every, tz, missed)
    assert e.value.path == path


def test_missed_runs() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    skip = validate(None, 1, "UTC", "skip")
    once = validate(None, 1, "UTC", "run_once")
    # on time: fire, next is the following occurrence
    assert plan_fire(skip, t0, t0 + timedelta(seconds=0.2)) == (True, t0 + timedelta(seconds=1))
    # an hour of downtime: skip fires nothing, run_once fires once; both resume after now
    now = t0 + timedelta(hours=1, seconds=0.5)
    assert plan_fire(skip, t0, now) == (False, t0 + timedelta(hours=1, seconds=1))
    assert plan_fire(once, t0, now) == (True, t0 + timedelta(hours=1, seconds=1))
    assert LATE_AFTER >= timedelta(seconds=30)


def test_retention_durations() -> None:
    cfg = load({"CHUNKD_RETENTION": "12h", "CHUNKD_RETENTION_FAILED": "90d"})
    assert cfg.retention == 12 * 3600 and cfg.retention_failed == 90 * 86400
    assert load({}).retention == 7 * 86400 and load({}).retention_failed == 30 * 86400
    with pytest.raises(ConfigError, match="CHUNKD_RETENTION='soon'"):
        load({"CHUNKD_RETENTION": "soon"})
    assert load({"CHUNKD_SCHEDULING": "false"}).scheduling is False


def test_a_declared_schedule_names_its_dialect_where_quartz_and_spring_disagree() -> None:
    # issue 23: Schedule(cron="0 0 1 * * 1") is Monday to a Spring user, Sunday to Quartz
    from actors.job import JobDefinitionError, Schedule
    from actors.registry import build_registry
    from actors.scheduling import check_declared
    reg = build_registry([], None, ("daemon.jobs.synthetic",))
    reg.schedules["m"] = Schedule(name="m", job="chunkd.synthetic", params={"chunks": 1}, cron="0 0 1 * * 1")
    with pytest.raises(JobDefinitionError, match="schedule 'm'.*spring reads MON"):
        check_declared(reg)
    reg.schedules["m"] = Schedule(name="m", job="chunkd.synthetic", params={"chunks": 1}, cron="0 0 1 * * 1",
                                  dialect="spring")
    check_declared(reg)


def test_a_declared_schedule_id_no_route_can_name_is_a_definition_error() -> None:
    from actors.job import JobDefinitionError, Schedule
    from actors.registry import build_registry
    from actors.scheduling import check_declared
    reg = build_registry([], None, ("daemon.jobs.synthetic",))
    reg.schedules["nightly/eu"] = Schedule(name="nightly/eu", job="chunkd.synthetic", params={"chunks": 1},
                                           cron="0 0 1 * * ?")
    with pytest.raises(JobDefinitionError, match="schedule 'nightly/eu'.*cannot be named in a URL"):
        check_declared(reg)
