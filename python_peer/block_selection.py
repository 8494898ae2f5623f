"""Which span a peer serves when it is not told: the least-served run of block shards that fits its
memory budget, as in Petals; and the check that an explicit span fits.

A peer can only serve whole block shards of the manifest (each shard is one ONNX graph), so the choice
is among runs of consecutive shards; the rule and its figures (weights plus KV room for a useful number
of sessions) live in ``core/memory_budget.py``, shared with the browser.
"""

from __future__ import annotations

from collections import Counter

from python_peer.core.canonical import Announcement
from python_peer.core.errors import SpanError
from python_peer.core.manifest import Manifest
from python_peer.core.memory_budget import SpanNeed, choose_span
from python_peer.core.spans import Span

from .errors import PeerError


def served_counts(manifest: Manifest, announcements: list[Announcement]) -> Counter[Span]:
    """How many distinct peers serve each of the manifest's block shards (a wider span counts for each)."""
    counts: Counter[Span] = Counter({shard.span: 0 for shard in manifest.blocks})
    for shard in manifest.blocks:
        servers = {
            a.peer_id
            for a in announcements
            for s in a.serves
            if s.model == manifest.name and s.start <= shard.start and shard.end <= s.end
        }
        counts[shard.span] = len(servers)
    return counts


def least_served_choice(manifest: Manifest, announcements: list[Announcement], budget_bytes: int) -> SpanNeed:
    """The least-served run of block shards that fits ``budget_bytes``, with what it needs."""
    counts = served_counts(manifest, announcements)
    spans = [shard.span for shard in manifest.blocks]
    try:
        return choose_span(spans, [counts[s] for s in spans], manifest.memory, budget_bytes, manifest.name)
    except SpanError as exc:
        raise PeerError(str(exc)) from None


def least_served_span(manifest: Manifest, announcements: list[Announcement], budget_bytes: int) -> Span:
    """The span of ``least_served_choice``."""
    return least_served_choice(manifest, announcements, budget_bytes).span


def checked_span(manifest: Manifest, span: Span, budget_bytes: int) -> SpanNeed:
    """What ``span`` needs; ``PeerError`` in one line when it is over ``budget_bytes`` or outside the model."""
    if span.end > manifest.num_layers:
        raise PeerError(f"span {span} runs past the last layer of {manifest.name} (0-{manifest.num_layers})")
    need = manifest.memory.need(span)
    try:
        need.check(budget_bytes)
    except SpanError as exc:
        raise PeerError(str(exc)) from None
    return need


def shared_spans(
    models: list[tuple[Manifest, Span | None, list[Announcement]]], budget_bytes: int
) -> list[SpanNeed]:
    """The span of each model a peer serves within one memory budget, in the order given.

    Explicit spans are taken first (``checked_span`` against what is left); each model without one then
    gets the least-served run that fits an equal share of what remains (the remainder divided by the
    models still to place), and what it does not use passes on to the next. ``PeerError`` names the
    model that does not fit."""
    needs: dict[int, SpanNeed] = {}
    left = budget_bytes
    for index, (manifest, span, _) in enumerate(models):
        if span is not None:
            try:
                needs[index] = checked_span(manifest, span, left)
            except PeerError as exc:
                if len(models) == 1:
                    raise
                raise PeerError(f"{manifest.name}: {exc} (after the other models' spans)") from None
            left -= needs[index].total
    chosen = [i for i, (_, span, _) in enumerate(models) if span is None]
    for place, index in enumerate(chosen):
        manifest, _, announcements = models[index]
        share = left // (len(chosen) - place)
        needs[index] = least_served_choice(manifest, announcements, share)
        left -= needs[index].total
    return [needs[i] for i in range(len(models))]
