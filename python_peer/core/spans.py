"""Block spans: the half-open layer ranges ``[start, end)`` that block shards and peers serve."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import SpanError

_SPAN_RE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class Span:
    """Layers ``start`` (inclusive) to ``end`` (exclusive) of a model."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end <= self.start:
            raise SpanError(
                f"span {self.start}-{self.end} is empty or negative: a span is START-END with END > START >= 0"
            )

    def __len__(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"

    @classmethod
    def parse(cls, text: str) -> Span:
        """Parse ``"A-B"`` into ``Span(A, B)``."""
        match = _SPAN_RE.match(text)
        if match is None:
            raise SpanError(f"span {text!r} is not of the form START-END (for example 0-10)")
        return cls(int(match.group(1)), int(match.group(2)))

    def layers(self) -> range:
        return range(self.start, self.end)


def parse_spans(text: str) -> list[Span]:
    """Parse a comma-separated list such as ``"0-10,10-20,20-30"``."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise SpanError(f"no spans in {text!r}: give a comma-separated list such as 0-10,10-20")
    return [Span.parse(p) for p in parts]


def validate_cover(spans: list[Span], num_layers: int) -> list[Span]:
    """Check that ``spans`` cover layers ``[0, num_layers)`` exactly once, in order; return them sorted.

    Overlaps, gaps and spans that run past the last layer are refused with a message naming them.
    """
    if not spans:
        raise SpanError("no spans given")
    ordered = sorted(spans)
    expected = 0
    for span in ordered:
        if span.end > num_layers:
            raise SpanError(
                f"span {span} runs past the last layer: the model has {num_layers} layers (0-{num_layers})"
            )
        if span.start < expected:
            raise SpanError(f"span {span} overlaps the span before it, which ends at layer {expected}")
        if span.start > expected:
            raise SpanError(f"layers {expected}-{span.start} are covered by no span")
        expected = span.end
    if expected != num_layers:
        raise SpanError(f"layers {expected}-{num_layers} are covered by no span")
    return ordered


def even_spans(num_layers: int, shards: int) -> list[Span]:
    """Cut ``num_layers`` into ``shards`` consecutive spans whose sizes differ by at most one."""
    if shards < 1:
        raise SpanError(f"--shards must be at least 1, not {shards}")
    if shards > num_layers:
        raise SpanError(f"cannot cut {num_layers} layers into {shards} shards: at most one shard per layer")
    base, extra = divmod(num_layers, shards)
    spans: list[Span] = []
    start = 0
    for i in range(shards):
        size = base + (1 if i < extra else 0)
        spans.append(Span(start, start + size))
        start += size
    return spans
