"""``bench.mesh_profile`` refuses, before starting a mesh, a run one fresh identity cannot pay for."""

from __future__ import annotations

from bench.mesh_profile import unaffordable
from python_peer.core.economics import Rules, price

SPANS = [10, 10, 10]  # the default model's three shards
PROMPT = 37


def test_a_run_within_the_starter_grant_is_allowed() -> None:
    assert unaffordable(SPANS, PROMPT, 8, 32, Rules()) is None
    assert unaffordable(SPANS, PROMPT, 1, 600, Rules()) is None


def test_a_run_past_the_starter_grant_says_how_many_tokens_fit() -> None:
    rules = Rules()
    why = unaffordable(SPANS, PROMPT, 8, 48, rules)
    assert why is not None and "starter grant of 200.000" in why, why
    fits = int(why.rpartition("at most ")[2].split()[0])
    holds = lambda tokens: 8 * sum(price(b, PROMPT + tokens + 2, 0, rules) for b in SPANS)  # noqa: E731
    assert holds(fits) <= rules.starter_grant < holds(fits + 1)
    assert unaffordable(SPANS, PROMPT, 8, fits, rules) is None
