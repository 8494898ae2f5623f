"""Regenerate the golden span-choice vectors: ``python tests/vectors/generate_span_choice.py [--out FILE]``.

The cases are the contract between ``python_peer/core/memory_budget.py`` and its browser twin
``web/src/node/span_choice.js``: for each (manifest, served counts, budget) the span chosen with its
figures, or the exact one-line refusal; for each (manifest, span, budget) the need or the refusal; for each
bad ``memory`` object the refusal. Both test suites read ``span_choice.json`` (``tests/fast/
test_memory_budget.py`` also checks that the file on disk is what this script writes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from python_peer.core.errors import AI4AllError
from python_peer.core.memory_budget import BlockFigures, choose_span, memory_field
from python_peer.core.spans import Span

OUT = Path(__file__).resolve().parent / "span_choice.json"
MIB = 2**20


def manifest(
    name: str,
    spans: list[tuple[int, int, int]],
    *,
    layers: int,
    kv_heads: int = 4,
    head_dim: int = 64,
    context: int | None = 4096,
    memory: Any = "derived",
) -> dict[str, Any]:
    """The part of a manifest the span choice reads: model name and config, block shards, ``memory``."""
    config: dict[str, Any] = {"num_layers": layers, "num_key_value_heads": kv_heads, "head_dim": head_dim}
    if context is not None:
        config["max_position_embeddings"] = context
    data: dict[str, Any] = {
        "model": {"name": name, "config": config},
        "shards": [{"kind": "blocks", "start": a, "end": b, "bytes": n} for a, b, n in spans],
    }
    if memory == "derived":
        data["memory"] = memory_field(config, spans, layers)
    elif memory is not None:
        data["memory"] = memory
    return data


def figures(data: dict[str, Any]) -> BlockFigures:
    config = data["model"]["config"]
    shards = [(s["start"], s["end"], s["bytes"]) for s in data["shards"]]
    return BlockFigures.from_manifest(data, config, shards, config["num_layers"])


def need_dict(need: Any) -> dict[str, Any]:
    return {
        "span": {"start": need.span.start, "end": need.span.end},
        "weights": need.weights,
        "kv": need.kv,
        "sessions": need.sessions,
        "context": need.context,
        "total": need.total,
        "describe": need.describe(),
    }


def choose_case(data: dict[str, Any], counts: list[int], budget: int) -> dict[str, Any]:
    case: dict[str, Any] = {"manifest": data, "counts": counts, "budget": budget}
    spans = [Span(s["start"], s["end"]) for s in data["shards"]]
    try:
        case["expect"] = need_dict(choose_span(spans, counts, figures(data), budget, data["model"]["name"]))
    except AI4AllError as exc:
        case["error"] = str(exc)
    return case


def check_case(data: dict[str, Any], span: tuple[int, int], budget: int) -> dict[str, Any]:
    case: dict[str, Any] = {"manifest": data, "span": {"start": span[0], "end": span[1]}, "budget": budget}
    need = figures(data).need(Span(*span))
    case["expect"] = need_dict(need)
    try:
        need.check(budget)
    except AI4AllError as exc:
        case["error"] = str(exc)
    return case


def figures_case(data: dict[str, Any]) -> dict[str, Any]:
    case: dict[str, Any] = {"manifest": data}
    try:
        f = figures(data)
        case["expect"] = {
            "weights": list(f.weight_bytes),
            "kv": list(f.kv_bytes_per_token),
            "context": f.context,
        }
    except AI4AllError as exc:
        case["error"] = str(exc)
    return case


def vectors() -> dict[str, Any]:
    # 12 blocks of 100 MiB in four shards; KV 2048 B per token per block, so 8 x 2048 tokens of three
    # blocks are 96 MiB.
    even = manifest(
        "even-12", [(0, 3, 300 * MIB), (3, 6, 300 * MIB), (6, 9, 300 * MIB), (9, 12, 300 * MIB)], layers=12
    )
    # Uneven shards with odd byte counts, no memory object (figures derived), a short context.
    uneven = manifest(
        "uneven-7",
        [(0, 1, 1_000_003), (1, 4, 3_000_001), (4, 7, 2_999_999)],
        layers=7,
        kv_heads=2,
        head_dim=32,
        context=256,
        memory=None,
    )
    # The brief's example: 20 of 40 blocks are 2.6 GiB, KV for 8 x 2048 tokens 0.5 GiB.
    big = manifest(
        "big-40",
        [(0, 20, int(2.6 * 2**30)), (20, 40, int(2.6 * 2**30))],
        layers=40,
        kv_heads=1,
        head_dim=200,
        context=None,
    )
    quarter = 3 * 100 * MIB + 96 * MIB  # one shard of ``even`` with its KV room
    choose = [
        choose_case(even, [0, 0, 0, 0], 10 * 2**30),  # the whole model fits: all of it
        choose_case(even, [0, 0, 0, 0], 2 * quarter),  # two shards fit: the first two
        choose_case(even, [1, 1, 0, 0], 2 * quarter),  # the other half
        choose_case(even, [1, 0, 1, 0], 2 * quarter),  # the unserved shards alone, 3-6 or 9-12: the earlier
        choose_case(even, [2, 1, 1, 2], 3 * quarter),  # 3-9: both least-served shards, nothing better served
        choose_case(even, [0, 0, 0, 0], quarter),  # exactly one shard
        choose_case(even, [0, 0, 0, 0], quarter - 1),  # nothing fits: names the smallest shard
        choose_case(even, [3, 0, 5, 0], quarter),
        choose_case(even, [1, 0, 0, 1], 10 * 2**30),  # room for all, takes only what is least served: 3-9
        choose_case(even, [1, 1, 1, 0], 10 * 2**30),  # 9-12, not the whole model
        choose_case(uneven, [0, 0, 0], 10**9),
        choose_case(uneven, [0, 1, 1], 4_500_000),
        choose_case(uneven, [5, 0, 0], 4_500_000),
        choose_case(uneven, [0, 0, 0], 1_000_000),
        choose_case(big, [0, 0], 2 * 2**30),
        choose_case(big, [0, 0], 4 * 2**30),
    ]
    check = [
        check_case(big, (0, 20), 2 * 2**30),  # "span 0-20 needs 3.1 GiB (2.6 GiB weights + 0.5 GiB KV ...)"
        check_case(big, (0, 40), 8 * 2**30),
        check_case(even, (3, 9), 2 * quarter),
        check_case(even, (3, 9), 2 * quarter - 1),
        check_case(uneven, (1, 7), 6_500_000),
    ]
    bad_memory = [
        figures_case(uneven),
        figures_case(
            manifest(
                "kv-lies",
                [(0, 2, 1000)],
                layers=2,
                memory={"block_weight_bytes": [500, 500], "kv_bytes_per_token": [1, 1]},
            )
        ),
        figures_case(
            manifest(
                "short",
                [(0, 2, 1000)],
                layers=2,
                memory={"block_weight_bytes": [1000], "kv_bytes_per_token": [2048, 2048]},
            )
        ),
        figures_case(
            manifest(
                "understated",
                [(0, 2, 1000)],
                layers=2,
                memory={"block_weight_bytes": [1, 1], "kv_bytes_per_token": [2048, 2048]},
            )
        ),
        figures_case(
            manifest(
                "negative",
                [(0, 2, 1000)],
                layers=2,
                memory={"block_weight_bytes": [-1, 2000], "kv_bytes_per_token": [2048, 2048]},
            )
        ),
        figures_case(
            manifest(
                "float",
                [(0, 2, 1000)],
                layers=2,
                memory={"block_weight_bytes": [500.5, 600], "kv_bytes_per_token": [2048, 2048]},
            )
        ),
        figures_case(manifest("not-object", [(0, 2, 1000)], layers=2, memory=[1, 2])),
    ]
    return {"choose": choose, "check": check, "figures": bad_memory}


def render() -> str:
    return json.dumps(vectors(), indent=1, sort_keys=True) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.out.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
