"""Several models share one peer's memory budget (``block_selection.shared_spans``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from python_peer.block_selection import shared_spans
from python_peer.core.manifest import load_manifest
from python_peer.core.spans import Span
from python_peer.errors import PeerError


def test_explicit_spans_first_then_equal_shares_of_the_rest(toy: Path) -> None:
    manifest = load_manifest(toy)
    whole = manifest.memory.need(Span(0, 4)).total
    shard = manifest.memory.need(Span(1, 3)).total
    # an explicit span, and two models choosing within what is left: each gets half of the remainder
    needs = shared_spans(
        [(manifest, None, []), (manifest, Span(1, 3), []), (manifest, None, [])], shard + 2 * whole
    )
    assert [n.span for n in needs] == [Span(0, 4), Span(1, 3), Span(0, 4)]
    # with less, the choosers fall back to smaller runs, and the total stays within the budget
    budget = shard + whole
    needs = shared_spans([(manifest, None, []), (manifest, Span(1, 3), []), (manifest, None, [])], budget)
    assert sum(n.total for n in needs) <= budget
    assert needs[1].span == Span(1, 3)


def test_a_model_that_does_not_fit_is_named(toy: Path) -> None:
    manifest = load_manifest(toy)
    whole = manifest.memory.need(Span(0, 4)).total
    with pytest.raises(PeerError, match="after the other models' spans"):
        shared_spans([(manifest, Span(0, 4), []), (manifest, Span(0, 4), [])], whole + 1)
    with pytest.raises(PeerError, match="no span of toy-model fits"):
        shared_spans([(manifest, Span(0, 4), []), (manifest, None, [])], whole + 1)
