"""Signaling's ``models`` answer (``core/model_summary.py``): bounded, ranked by distinct peers, parsed
strictly on the client."""

from __future__ import annotations

import time
from typing import Any

import pytest

from python_peer.core.canonical import Announcement, ServedSpan
from python_peer.core.errors import MessageError
from python_peer.core.model_summary import MAX_MODEL_SPANS, ModelSummary, parse_model_list, summarize
from python_peer.identity import Identity


def announcement(*serves: tuple[str, int, int]) -> Announcement:
    now = time.time_ns() // 1_000_000
    return Announcement(
        peer_id=Identity.generate().peer_id,
        kind="native",
        seq=now,
        issued_ms=now,
        expires_ms=now + 60_000,
        serves=tuple(ServedSpan(*s) for s in serves),
    )


def test_models_with_more_peers_come_first_and_the_list_is_bounded() -> None:
    real = [announcement(("real", 0, 2)), announcement(("real", 2, 4)), announcement(("real", 0, 2))]
    junk = [announcement(*((f"junk-{i}-{n}", 0, 4) for n in range(32))) for i in range(3)]
    summaries, truncated = summarize([*junk, *real], limit=10)
    assert truncated and len(summaries) == 10
    first = summaries[0]
    assert (first.model, first.peers) == ("real", 3)
    assert [(s.start, s.end, s.peers) for s in first.spans] == [(0, 2, 2), (2, 4, 1)]
    assert all(s.peers == 1 for s in summaries[1:])


def test_spans_per_model_are_bounded() -> None:
    many = [
        announcement(*(("m", i, i + 1) for i in range(32))),
        announcement(*(("m", i, i + 2) for i in range(32))),
    ]
    (summary,), truncated = summarize(many)
    assert not truncated and len(summary.spans) == MAX_MODEL_SPANS and summary.peers == 2


@pytest.mark.parametrize(
    "item",
    [
        "m",
        {"model": "m", "peers": 1},
        {"model": "m", "peers": 1, "spans": [], "extra": 1},
        {"model": "bad name!", "peers": 1, "spans": []},
        {"model": "m", "peers": -1, "spans": []},
        {"model": "m", "peers": True, "spans": []},
        {"model": "m", "peers": 1, "spans": [{"start": 2, "end": 1, "peers": 1}]},
        {"model": "m", "peers": 1, "spans": [{"start": 0, "end": 1}]},
        {"model": "m", "peers": 1, "spans": [{"start": 0, "end": 1, "peers": 1}] * (MAX_MODEL_SPANS + 1)},
    ],
)
def test_a_malformed_summary_is_refused_and_dropped(item: Any) -> None:
    with pytest.raises(MessageError):
        ModelSummary.from_dict(item)
    good = {"model": "ok", "peers": 1, "spans": [{"start": 0, "end": 4, "peers": 1}]}
    found, truncated = parse_model_list({"models": [item, good]}, 64)
    assert [s.model for s in found] == ["ok"] and not truncated
    with pytest.raises(MessageError):
        parse_model_list({"models": "nope"}, 64)
