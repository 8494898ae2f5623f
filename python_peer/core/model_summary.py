"""Which models the mesh serves, and which blocks of each: the answer to a signaling ``models`` request.

A signaling node summarises its live directory (announcements of its own peers and of its siblings'):
per model, how many distinct peers serve a span of it and, per announced ``[start, end)``, how many
peers announce exactly that span. The reply is bounded whatever the peers announce: at most
``MAX_MODELS`` models, those with the most peers first (a peer announcing 32 throwaway names counts
one peer for each, so it cannot push a model served by several peers out), and at most
``MAX_MODEL_SPANS`` spans per model (the most announced). A summary is only what peers claim; the
API marks a model chat-able only when it holds the model's files (docs/api.md). Wire format:
docs/signaling.md, ``models`` and ``model_list``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .canonical import MAX_LAYER, MODEL_RE, Announcement
from .errors import MessageError

log = logging.getLogger(__name__)

MAX_MODELS = 64  # models in one ``model_list`` reply
MAX_MODEL_SPANS = 32  # distinct spans listed per model


@dataclass(frozen=True)
class SpanCount:
    """Blocks ``[start, end)`` of a model, announced by ``peers`` distinct peers."""

    start: int
    end: int
    peers: int

    def to_dict(self) -> dict[str, int]:
        return {"start": self.start, "end": self.end, "peers": self.peers}


@dataclass(frozen=True)
class ModelSummary:
    """One model on the mesh: distinct peers serving any of it, and its announced spans."""

    model: str
    peers: int
    spans: tuple[SpanCount, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "peers": self.peers, "spans": [s.to_dict() for s in self.spans]}

    @classmethod
    def from_dict(cls, data: object) -> ModelSummary:
        """A summary item of a ``model_list`` reply, checked; ``MessageError`` names what is wrong."""
        if not isinstance(data, dict) or set(data) != {"model", "peers", "spans"}:
            raise MessageError("a model summary is an object with exactly model, peers and spans")
        model, peers, spans = data["model"], data["peers"], data["spans"]
        if not isinstance(model, str) or MODEL_RE.match(model) is None:
            raise MessageError(f"model {model!r} is not a model name")
        if not _count(peers):
            raise MessageError(f"peers {peers!r} of {model} is not a count")
        if not isinstance(spans, list) or len(spans) > MAX_MODEL_SPANS:
            raise MessageError(f"spans of {model} must be a list of at most {MAX_MODEL_SPANS}")
        parsed = []
        for span in spans:
            if not isinstance(span, dict) or set(span) != {"start", "end", "peers"}:
                raise MessageError(f"a span of {model} is an object with exactly start, end and peers")
            start, end, count = span["start"], span["end"], span["peers"]
            if not (_count(start) and _count(end) and _count(count)) or not 0 <= start < end <= MAX_LAYER:
                raise MessageError(f"span {start!r}-{end!r} of {model} is not a span of blocks")
            parsed.append(SpanCount(start, end, count))
        return cls(model, peers, tuple(parsed))


def parse_model_list(reply: dict[str, Any], limit: int) -> tuple[list[ModelSummary], bool]:
    """The summaries of a ``model_list`` reply, at most ``limit``, and whether models were left out;
    a malformed item is dropped with a warning, a reply without a list is a ``MessageError``."""
    items = reply.get("models")
    if not isinstance(items, list):
        raise MessageError("a model_list reply without a models list")
    found: list[ModelSummary] = []
    for item in items[:limit]:
        try:
            found.append(ModelSummary.from_dict(item))
        except MessageError as exc:
            log.warning("dropping a model from a model_list reply: %s", exc)
    return found, reply.get("truncated") is True or len(items) > limit


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**31


def summarize(
    announcements: Iterable[Announcement], limit: int = MAX_MODELS
) -> tuple[list[ModelSummary], bool]:
    """The models of ``announcements`` (live ones; the caller filters), most peers first, at most
    ``limit``; and whether some were left out."""
    peers: dict[str, set[str]] = {}
    spans: dict[str, dict[tuple[int, int], set[str]]] = {}
    for ann in announcements:
        for served in ann.serves:
            peers.setdefault(served.model, set()).add(ann.peer_id)
            spans.setdefault(served.model, {}).setdefault((served.start, served.end), set()).add(ann.peer_id)
    ranked = sorted(peers, key=lambda model: (-len(peers[model]), model))
    summaries = []
    for model in ranked[:limit]:
        counts = Counter({span: len(ids) for span, ids in spans[model].items()})
        top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:MAX_MODEL_SPANS]
        summaries.append(
            ModelSummary(model, len(peers[model]), tuple(SpanCount(s, e, n) for (s, e), n in sorted(top)))
        )
    return summaries, len(ranked) > limit


__all__ = ["MAX_MODELS", "MAX_MODEL_SPANS", "ModelSummary", "SpanCount", "parse_model_list", "summarize"]
