import itertools

import pytest

from storage import sql
from storage.states import (
    CHUNK_MOVES,
    CHUNK_TERMINAL,
    INSTANCE_MOVES,
    INSTANCE_TERMINAL,
    C,
    I,
    chunk_allowed_from,
    instance_allowed_from,
)

LEGAL_CHUNK = {
    (C.GATE_WAITING, C.READY), (C.GATE_WAITING, C.COMPLETED), (C.GATE_WAITING, C.CANCELLED),
    (C.READY, C.IN_PROGRESS), (C.READY, C.CANCELLED),
    (C.IN_PROGRESS, C.COMPLETED), (C.IN_PROGRESS, C.ERRORED), (C.IN_PROGRESS, C.FAILED),
    (C.IN_PROGRESS, C.POLL_WAITING), (C.IN_PROGRESS, C.READY), (C.IN_PROGRESS, C.CANCELLED),
    (C.POLL_WAITING, C.READY), (C.POLL_WAITING, C.CANCELLED),
    (C.ERRORED, C.READY), (C.ERRORED, C.CANCELLED),
    (C.FAILED, C.READY), (C.FAILED, C.GATE_WAITING), (C.CANCELLED, C.READY), (C.CANCELLED, C.GATE_WAITING),
}


@pytest.mark.parametrize("a,b", list(itertools.product(C, C)))
def test_every_chunk_pair_is_decided_by_the_table(a: C, b: C) -> None:
    assert ((a, b) in CHUNK_MOVES) == ((a, b) in LEGAL_CHUNK)
    assert (int(a) in chunk_allowed_from(b)) == ((a, b) in LEGAL_CHUNK)


def test_terminal_states_are_left_only_by_a_restart() -> None:
    for (a, b), why in CHUNK_MOVES.items():
        assert a not in CHUNK_TERMINAL or "restarted" in why
        assert a is not C.COMPLETED  # completed work is never redone
    for (a, b), why in INSTANCE_MOVES.items():
        assert a not in INSTANCE_TERMINAL or (b is I.IN_PROGRESS and "restarted" in why)
        assert a is not I.COMPLETED


@pytest.mark.parametrize("a,b", list(itertools.product(I, I)))
def test_every_instance_pair(a: I, b: I) -> None:
    legal = (a, b) in INSTANCE_MOVES
    assert (a.value in instance_allowed_from(b)) == legal
    if b is I.FINALIZE:
        assert legal == (a in (I.IN_PROGRESS, I.ERRORED))
    if a == b or a is I.COMPLETED:
        assert not legal


def test_claim_and_complete_guards_come_from_the_table() -> None:
    # the claim may only start from READY, completion only from IN_PROGRESS
    assert f"k.state + 0 IN ({int(C.READY)})" in sql.CHUNK_CLAIM  # + 0: see CHUNK_CLAIM
    for complete in (sql.CHUNK_COMPLETE, sql.CHUNK_COMPLETE_COUNTED):
        assert f"k.state IN ({int(C.IN_PROGRESS)})" in complete
        assert "k.attempt = ($2::int[])[width_bucket(k.id, $1::bigint[])]" in complete  # the fencing token
    assert "k.attempt = d.attempt" in sql.CHUNK_SETBACK
