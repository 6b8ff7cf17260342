"""RowTracker: stop strings, hold-back and multi-byte characters, with a byte tokenizer."""

from __future__ import annotations

from llmvm_ray.engine.planning import RowPlan
from llmvm_ray.engine.sampling import RowSampling
from llmvm_ray.engine.tracking import RowTracker
from tests.engine.helpers import ByteTokenizer

EOS = 256


def plan(stop: tuple[str, ...] = (), max_tokens: int = 100, request_id: str = "r") -> RowPlan:
    return RowPlan(
        request_index=0,
        request_id=request_id,
        choice_index=0,
        prompt_ids=(1,),
        max_tokens=max_tokens,
        stop=stop,
        sampling=RowSampling(0.0, 1.0, 0),
        grammar=None,
        adapter=None,
    )


def feed(tracker: RowTracker, data: bytes | list[int]) -> list[str]:
    """Step one token at a time; return the streamed deltas (text) as they come."""
    out = []
    for token in data:
        tracker.step([0], [token])
        out.extend(d.text for d in tracker.take_deltas())
    return out


def test_stop_string_is_trimmed_and_never_streamed() -> None:
    tracker = RowTracker([plan(stop=("END",))], ByteTokenizer(), [EOS])
    deltas = feed(tracker, b"abcENDxyz")
    assert tracker.text(0) == "abc"
    assert tracker.finish_reason(0) == "stop"
    assert "".join(deltas) == "abc"
    assert tracker.completion_tokens(0) == 6  # a b c E N D; nothing after the stop


def test_partial_stop_is_held_back_then_released() -> None:
    tracker = RowTracker([plan(stop=("END",))], ByteTokenizer(), [EOS])
    assert feed(tracker, b"abE") == ["a", "b"]  # "E" may start "END"
    assert feed(tracker, b"Nx") == ["ENx"]  # "ENx" cannot: released at once
    tracker.finish_all("length")
    assert [d.finish_reason for d in tracker.take_deltas()] == ["length"]
    assert tracker.text(0) == "abENx"


def test_earliest_of_several_stops_wins() -> None:
    tracker = RowTracker([plan(stop=("zz", "b"))], ByteTokenizer(), [EOS])
    feed(tracker, b"abzz")
    assert tracker.text(0) == "a"


def test_multibyte_character_is_never_split() -> None:
    tracker = RowTracker([plan()], ByteTokenizer(), [EOS])
    deltas = feed(tracker, "añ€😀!".encode())
    assert "\ufffd" not in "".join(deltas)
    assert deltas == ["a", "ñ", "€", "😀", "!"]


def test_eos_and_max_tokens_finish_rows() -> None:
    rows = [plan(request_id="a"), plan(max_tokens=2, request_id="b")]
    tracker = RowTracker(rows, ByteTokenizer(), [EOS])
    tracker.step([0, 1], [ord("x"), ord("y")])
    tracker.step([0, 1], [EOS, ord("z")])
    assert tracker.is_finished(0) and tracker.is_finished(1)
    assert (tracker.text(0), tracker.finish_reason(0), tracker.completion_tokens(0)) == (
        "x",
        "stop",
        2,
    )
    assert (tracker.text(1), tracker.finish_reason(1), tracker.completion_tokens(1)) == (
        "yz",
        "length",
        2,
    )
    tracker.step([0, 1], [ord("q"), ord("q")])  # finished rows take no more tokens
    assert (tracker.text(0), tracker.text(1)) == ("x", "yz")


def test_abort_finishes_the_request_with_stop() -> None:
    tracker = RowTracker([plan(request_id="gone"), plan(request_id="kept")], ByteTokenizer(), [])
    tracker.step([0, 1], [ord("a"), ord("b")], aborted={"gone"})
    assert (tracker.is_finished(0), tracker.is_finished(1)) == (True, False)
    assert tracker.finish_reason(0) == "stop"
    assert tracker.live_request_ids() == {"kept"}


def test_rows_join_and_leave_with_stable_ids() -> None:
    tracker = RowTracker([plan(request_id="a")], ByteTokenizer(), [EOS])
    tracker.step([0], [ord("x")])
    late = tracker.add(plan(request_id="b"))
    assert late == 1
    tracker.step([late, 0], [ord("y"), EOS])  # any order, any subset of the rows
    assert (tracker.text(0), tracker.text(late)) == ("x", "y")
    assert tracker.live_request_ids() == {"b"}
    assert [(d.row, d.text, d.finish_reason) for d in tracker.take_deltas()] == [
        (0, "x", "stop"),
        (1, "y", None),
    ]
    tracker.drop(0)
    assert tracker.take_deltas() == []  # a dropped row is forgotten, nothing left unsent
    assert tracker.add(plan(request_id="c")) == 2  # ids are never reused
