"""The submit request's ranges and lengths are declared once, as msgspec constraints on
SubmitRequest; the 422 naming the path comes from decoding it (issue 25 row 3)."""
from __future__ import annotations

import json

import msgspec
import pytest

from daemon.http import models as m
from daemon.http.bulk import _item
from daemon.http.common import ApiError, _decode


def refused(body: dict) -> ApiError:
    with pytest.raises(ApiError) as e:
        _decode(json.dumps(body).encode(), m.SubmitRequest)
    return e.value


@pytest.mark.parametrize("body,code,message,details", [
    ({"job": "j", "priority": 9}, "out_of_range", "priority must be between -3 and 3, got 9", {"path": "$.priority"}),
    ({"job": "j", "priority": -4}, "out_of_range", "priority must be between -3 and 3, got -4",
     {"path": "$.priority"}),
    ({"job": "j", "version": 0}, "out_of_range", "version must be between 1 and 2147483647, got 0",
     {"path": "$.version"}),
    ({"job": "j" * 201}, "too_long", "job is 201 characters; the limit is 200", {"path": "$.job", "limit": 200}),
    ({"job": "j", "idempotency_key": "k" * 256}, "too_long", "idempotency_key is 256 characters; the limit is 255",
     {"path": "$.idempotency_key", "limit": 255}),
])
def test_out_of_range_is_a_422_naming_the_path(body: dict, code: str, message: str, details: dict) -> None:
    e = refused(body)
    assert (e.status, e.code, e.message, e.details) == (422, code, message, details)


def test_malformed_stays_a_400() -> None:
    e = refused({"job": "j", "priority": "high"})
    assert e.status == 400 and "$.priority" in e.message
    assert refused({"job": "j", "extra": 1}).status == 400


def test_in_range_decodes() -> None:
    req = _decode(b'{"job": "j", "priority": -3, "version": 2147483647}', m.SubmitRequest)
    assert (req.priority, req.version) == (-3, 2147483647)


def test_a_bulk_item_out_of_range_is_that_item_s_answer() -> None:
    bad = _item(6, msgspec.Raw(b'{"job": "j", "priority": 7}'))
    assert isinstance(bad, ApiError) and bad.status == 422 and bad.details == {"path": "$.priority"}
    with pytest.raises(ApiError) as e:  # malformed: the whole request's 400, naming the item
        _item(3, msgspec.Raw(b'{"job": 5}'))
    assert e.value.status == 400 and "$.items[3].job" in e.value.message


def test_schedule_version_is_declared_the_same_way() -> None:
    with pytest.raises(ApiError) as e:
        _decode(b'{"id": "s", "job": "j", "every_seconds": 5, "version": 0}', m.ScheduleIn)
    assert e.value.status == 422 and e.value.details == {"path": "$.version"}
