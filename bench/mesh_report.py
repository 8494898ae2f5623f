"""The mesh benchmark's tables: single sessions, speed ratios, token agreement, concurrency, signaling."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from bench.bench_export import first_difference
from bench.mesh_concurrency import SESSION_COUNTS, Aggregate
from bench.mesh_contenders import (
    CHAIN,
    MESH,
    MESH_BACK_COPIES,
    MESH_HOP_BY_HOP,
    MESH_ONE_BY_ONE,
    PROMPT,
    Samples,
)
from bench.mesh_signaling import (
    ANNOUNCE_CONNECTIONS,
    ANNOUNCES_PER_CONNECTION,
    RELAY_SAMPLES,
    RELAY_WARMUP,
    SignalingResults,
)
from python_peer.tokenizer import ModelTokenizer


def _spread(values: Sequence[float], scale: float, digits: int) -> str:
    median, low, high = (
        f"{v * scale:.{digits}f}" for v in (statistics.median(values), min(values), max(values))
    )
    return f"{median} ({low}-{high})"


def _ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median of per-repeat ratios (each repeat's values were measured back to back)."""
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def speed_ratios(samples: dict[str, Samples], whole_name: str) -> dict[str, dict[str, float]]:
    mesh = samples[MESH]
    result = {}
    others = {
        CHAIN: "local chain",
        whole_name: "whole model",
        MESH_HOP_BY_HOP: "mesh hop by hop",
        MESH_ONE_BY_ONE: "mesh, hops opened one by one",
        MESH_BACK_COPIES: "mesh, outputs sent back",
    }
    for other, label in others.items():
        if other not in samples:
            continue
        s = samples[other]
        result[f"mesh/{label}"] = {
            "decode_tok_s": _ratio(mesh.decode_tok_s, s.decode_tok_s),
            "ttft_s": _ratio(mesh.ttft_s, s.ttft_s),
        }
    return result


def single_table(samples: dict[str, Samples], steps: int, prompt_tokens: int) -> Table:
    table = Table(title=f"One session: {prompt_tokens}-token chat prompt, then {steps} greedy decode steps")
    table.add_column("contender")
    table.add_column("time to first token, ms", justify="right")
    table.add_column("decode tok/s", justify="right")
    table.add_column("ms per token", justify="right")
    for name, s in samples.items():
        per_token = [1 / v for v in s.decode_tok_s]
        table.add_row(
            name, _spread(s.ttft_s, 1e3, 0), _spread(s.decode_tok_s, 1, 1), _spread(per_token, 1e3, 1)
        )
    table.caption = "median (min-max) over repeats"
    return table


def ratio_table(ratios: dict[str, dict[str, float]], overhead_ms: float) -> Table:
    table = Table(title="Ratios (median of per-repeat ratios)")
    table.add_column("ratio")
    table.add_column("decode tok/s (<1: mesh slower)", justify="right")
    table.add_column("time to first token (>1: mesh slower)", justify="right")
    for key, value in ratios.items():
        table.add_row(key, f"{value['decode_tok_s']:.2f}", f"{value['ttft_s']:.2f}")
    table.caption = f"the mesh adds {overhead_ms:.1f} ms per decoded token over the local chain (medians)"
    return table


def agreement_table(
    samples: dict[str, Samples], tokenizer: ModelTokenizer
) -> tuple[Table, dict[str, dict[str, Any]]]:
    table = Table(title=f"Greedy tokens on {PROMPT!r} (chat template), first repeat")
    table.add_column("contender")
    table.add_column(f"same as {CHAIN}", justify="center")
    table.add_column("reply (to the first end-of-sequence)")
    summary: dict[str, dict[str, Any]] = {}
    reference = samples[CHAIN].tokens
    for name, s in samples.items():
        diff = first_difference(s.tokens, reference)
        cut = next((i for i, t in enumerate(s.tokens) if t in tokenizer.eos_token_ids), len(s.tokens))
        text = tokenizer.decode(s.tokens[:cut]) + (" <eos>" if cut < len(s.tokens) else " ...")
        if not s.deterministic:
            text += " (tokens varied between repeats!)"
        table.add_row(name, "yes" if diff is None else f"NO: from token {diff}", escape(text))
        summary[name] = {"same_as_local_chain": diff is None, "first_difference": diff}
        summary[name]["deterministic"] = s.deterministic
    return table, summary


def paired_ratio(num: Sequence[float | None], den: Sequence[float | None]) -> float | None:
    """Median of per-repeat ratios over the repeats where both runs succeeded."""
    pairs = [a / b for a, b in zip(num, den, strict=True) if a is not None and b is not None]
    return statistics.median(pairs) if pairs else None


def ok_values(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None]


def concurrency_table(aggregate: dict[int, Aggregate], steps: int) -> Table:
    table = Table(title=f"Concurrent mesh sessions, each decoding {steps} tokens")
    table.add_column("sessions", justify="right")
    table.add_column("aggregate tok/s", justify="right")
    table.add_column("per session tok/s", justify="right")
    table.add_column("vs 1 session", justify="right")
    table.add_column("tokens as 1 session's", justify="center")
    table.add_column("failed runs", justify="right")
    table.add_column("UDP drops: mesh / host", justify="right")
    base = aggregate[SESSION_COUNTS[0]].tok_s
    for n, a in aggregate.items():
        ok = ok_values(a.tok_s)
        ratio = paired_ratio(a.tok_s, base)
        drops = [
            f"{'?' if m is None else m} / {'?' if h is None else h}"
            for m, h in zip(a.mesh_udp_drops, a.udp_drops, strict=True)
        ]
        table.add_row(
            str(n),
            _spread(ok, 1, 1) if ok else "-",
            f"{statistics.median(ok) / n:.1f}" if ok else "-",
            "-" if ratio is None else f"{ratio:.2f}x",
            ("yes" if a.same_tokens else "NO") if ok else "-",
            f"{len(a.failures)} of {len(a.tok_s)}",
            ", ".join(drops),
        )
    failures = [f"{n} sessions: {f}" for n, a in aggregate.items() for f in a.failures]
    table.caption = (
        "aggregate = sessions x steps / (last session done - decoding started); median (min-max) of the runs "
        "that finished; UDP drops: datagrams the kernel dropped for full receive buffers during each run, "
        "at the sockets of this benchmark's processes (ss -uampn) / on the whole host (/proc/net/snmp)"
    )
    if failures:
        table.caption += "\nfailures: " + escape("; ".join(dict.fromkeys(failures)))
    return table


def ms_summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered) * 1e3, 3),
        "p90": round(ordered[int(0.9 * (len(ordered) - 1))] * 1e3, 3),
        "min": round(ordered[0] * 1e3, 3),
        "max": round(ordered[-1] * 1e3, 3),
    }


def signaling_table(sig: SignalingResults) -> Table:
    table = Table(title="Signaling")
    table.add_column("measure")
    table.add_column("median", justify="right")
    table.add_column("range / detail", justify="right")
    for what, values in (
        ("signal round trip, 2 federated nodes, ms", sig.relay_two_nodes),
        ("signal round trip, 1 node, ms", sig.relay_one_node),
    ):
        ms = ms_summary(values)
        table.add_row(what, f"{ms['median']:.2f}", f"p90 {ms['p90']:.2f}, {ms['min']:.2f}-{ms['max']:.2f}")
    for name, runs in sig.announce.items():
        rates = [r.accepted / r.seconds for r in runs]
        refused = Counter[str]()
        for r in runs:
            refused.update({k: v for k, v in r.replies.items() if k != "announced"})
        detail = f"{min(rates):.0f}-{max(rates):.0f}; accepted {sum(r.accepted for r in runs)}"
        detail += f" of {len(runs) * ANNOUNCE_CONNECTIONS * ANNOUNCES_PER_CONNECTION}"
        if refused:
            detail += ", refused " + ", ".join(f"{k} x{v}" for k, v in refused.items())
        table.add_row(f"announcements accepted/s, {name}", f"{statistics.median(rates):.0f}", detail)
    if sig.gossip_reached:
        table.add_row(
            "  ...of which node B holds the last one",
            f"{statistics.median(sig.gossip_reached):.0f} of {ANNOUNCE_CONNECTIONS} peers",
            "per repeat: " + ", ".join(str(n) for n in sig.gossip_reached),
        )
    table.caption = (
        f"round trip: {RELAY_SAMPLES} signals a -> b echoed b -> a (after {RELAY_WARMUP} warm-up); "
        f"announcements: {ANNOUNCE_CONNECTIONS} connections x {ANNOUNCES_PER_CONNECTION} pre-signed, "
        "sent at once, default node limits (a peer id's burst is 10)"
    )
    return table
