"""Bad input is answered naming the thing that is wrong, in the caller's own terms: the
item number in a bulk request, the field of a schedule (a new user's walk through the API
found each of these answering something else)."""
from __future__ import annotations

import pytest

from daemon.cli.client import ApiCallError, ApiClient

pytestmark = pytest.mark.anyio

SYN = "chunkd.synthetic"


async def test_a_bulk_conflict_names_the_item_by_its_place_in_the_request(api_daemon) -> None:  # type: ignore[no-untyped-def]
    # Item 0 is refused before submission; the key's first user is item 1, not "item 0"
    # (the numbers counted only the items that reached the submit service).
    c = ApiClient(api_daemon().url)
    out = c.call("POST", "/api/v1/instances:batch", body={"items": [
        {"job": SYN, "priority": 9},
        {"job": SYN, "parameters": {"chunks": 1}, "idempotency_key": "k4"},
        {"job": SYN, "parameters": {"chunks": 2}, "idempotency_key": "k4"},
    ]})
    statuses = [r["status"] for r in out["results"]]
    assert statuses == [422, 201, 409]
    message = out["results"][2]["error"]["message"]
    assert "used by item 1 of this batch" in message and "parameters differ from item 1" in message, message


@pytest.mark.parametrize("item,says", [
    (5, "Expected `object`, got `int`"),
    ({"job": SYN, "parameters": {"chunks": 1}, "bogus": 1}, "unknown field `bogus`"),
])
async def test_a_malformed_bulk_item_is_named(api_daemon, item: object, says: str) -> None:  # type: ignore[no-untyped-def]
    c = ApiClient(api_daemon().url)
    with pytest.raises(ApiCallError) as e:
        c.call("POST", "/api/v1/instances:batch", body={"items": [{"job": SYN, "parameters": {"chunks": 1}}, item]})
    assert e.value.status == 400 and says in str(e.value) and "$.items[1]" in str(e.value), str(e.value)


@pytest.mark.parametrize("sid", ["a/b", "..", "tab\there"])
async def test_a_schedule_id_no_route_can_name_is_refused(api_daemon, sid: str) -> None:  # type: ignore[no-untyped-def]
    # It used to be created (201) and then fired daily, with every route that names it a 404.
    c = ApiClient(api_daemon().url)
    with pytest.raises(ApiCallError) as e:
        c.call("POST", "/api/v1/schedules", body={"id": sid, "job": SYN, "cron": "0 0 1 * * ?"})
    assert e.value.status == 422 and e.value.code == "invalid_schedule", str(e.value)
    assert e.value.details == {"path": "$.id"}
    assert c.call("GET", "/api/v1/schedules")["schedules"] == []


async def test_next_fire_times_are_all_in_utc(api_daemon) -> None:  # type: ignore[no-untyped-def]
    # The first came from the row (UTC), the rest in the schedule's zone: one list, two offsets.
    c = ApiClient(api_daemon().url)
    s = c.call("POST", "/api/v1/schedules", body={"id": "ny", "job": SYN, "cron": "0 0 * * * ?",
                                                 "timezone": "America/New_York"})
    assert len(s["next_fire_times"]) == 3 and all(t.endswith("Z") for t in s["next_fire_times"]), s


async def test_a_parameters_refusal_always_says_where(api_daemon) -> None:  # type: ignore[no-untyped-def]
    c = ApiClient(api_daemon().url)
    for params, path in (({"chunks": -5}, "$"), ({"bogus": 1}, "$.bogus"), ({"chunks": "x"}, "$.chunks")):
        with pytest.raises(ApiCallError) as e:
            c.call("POST", "/api/v1/instances", body={"job": SYN, "parameters": params})
        assert e.value.status == 422 and e.value.details == {"path": path}, (params, str(e.value), e.value.details)
