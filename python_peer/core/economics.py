"""The ledger's economics: every constant in one place, with the reasoning next to it, and the price.

Standard library only (the browser runs it under Pyodide). Amounts are integer **units**; one credit is
1000 units. Integers keep every node, Python or browser, computing the very same numbers: no float
ever enters a balance.

The unit of work is the **block-token**: one token position run through one transformer block. A
request through a 30-block model that processes 100 tokens is 3000 block-tokens, split among the peers
serving the blocks, each of which receives a co-signed receipt for its own span.

Two inequalities hold the economy together and ``Rules`` refuses constants that break them:

1. **Self-dealing never pays.** A peer can be its own client through a second identity. Whatever a
   receipt earns its server (base rate + the largest rarity bonus) must not exceed what it costs its
   client after the largest discount: ``(earn + max rarity) * 1000 <= cost * (1000 - max discount)``.
   The base fee per receipt is burnt, so a colluding pair always loses at least that much. This holds
   only because a client pays from what it holds, never into debt (``balances.compute`` settles each
   receipt for at most the client's balance, and credits its server in proportion): a throwaway
   identity's debt would be paid by no one (docs/trust.md).
2. **Uptime cannot be farmed.** An hour's uptime bonus needs at least one receipt in that hour, which
   burns a base fee; the bonus is at most the base fee (``uptime_bonus <= base_fee``).

Money enters through starter grants, rarity and uptime bonuses; it leaves through base fees and the
spread between price and earnings. The cap bounds any one hoard. Nothing decays: an identity that goes
quiet keeps its tokens.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import LedgerError

UNITS_PER_CREDIT = 1000

# --- work and its price --------------------------------------------------------------------------------

# What a client pays per block-token, before any discount. 10 units (0.01 credit) makes one token through
# a 30-block model cost 0.3 credit, so credit amounts read naturally in the UI.
COST_PER_BLOCK_TOKEN = 10

# What a server earns per block-token it serves. Below the cost (see inequality 1 above): the spread of
# 4 units, 40 %, is what keeps self-dealing from minting money even at the largest discount, and it is a
# sink that keeps the total supply from growing without bound as the network works.
EARN_PER_BLOCK_TOKEN = 6

# Extra units per block-token for blocks that few peers serve, counted per model per UTC day as the
# number of distinct servers with a counted receipt covering that block that day (the server itself
# included). Index 0 is "served by one peer", index 1 by two; three or more earn no bonus. Rare blocks
# are where the mesh breaks first, so serving them pays up to a third more. Per day, so a block that
# becomes popular stops paying the bonus the next day.
RARITY_BONUS_PER_BLOCK_TOKEN = (2, 1)

# Fixed fee per receipt (one span of one session), burnt. 100 block-tokens' worth: small next to a real
# request (10 blocks x 200 tokens = 2000 block-tokens), large enough that a flood of tiny sessions costs
# its sender, and the margin that keeps self-dealing and uptime farming unprofitable.
BASE_FEE = 1000

# Discount on the per-block-token part of the price for clients who serve a lot, as
# (lifetime block-tokens served, permille off). 1M block-tokens is a few hours of a small peer serving
# 10 blocks; 10M is a dedicated one. At most 20 % so that inequality 1 holds with the rarity bonus.
DISCOUNT_TIERS = ((1_000_000, 100), (10_000_000, 200))

# Uptime: a bonus for each UTC hour in which a server served at least UPTIME_MIN_BLOCK_TOKENS in counted
# receipts. Measured from co-signed receipts, the only uptime evidence another node can check. The
# threshold (one modest request) keeps an idle peer that serves one token an hour from collecting it.
UPTIME_BONUS = 1000
UPTIME_MIN_BLOCK_TOKENS = 10_000
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# --- new identities -------------------------------------------------------------------------------------

# Starter grant: 200 credits, 20,000 block-tokens at full price, roughly 650 tokens through a 30-block
# model: enough to try the network, not enough to live on; serving is how one earns more. Claimable once
# per identity, and only with a proof of work.
STARTER_GRANT = 200_000

# Leading zero bits the grant's proof of work needs: 2**22, about 4.2 million sha256 on average, which
# is about 5 s of one core in CPython (measured here: 0.77 M hashes/s) and a few seconds of a JS sha256
# loop in a browser worker, once per identity. Minting 1000 identities costs about 1.5 core-hours for
# grants that buy ~650,000 tokens through a 30-block model, which take ~8 core-hours to serve (~22 tok/s
# on one core): farming grants stays a few times cheaper than earning by serving, but is no longer free.
# Each extra bit doubles the cost for everyone, browsers included; servers still rate-limit per client.
GRANT_POW_BITS = 22

# --- bounds ---------------------------------------------------------------------------------------------

# No balance accrues beyond 1M credits (100M block-tokens at full price). Credits over the cap are not
# credited (the breakdown says how many were clipped); spending brings a balance back under it. The cap
# bounds hoarding and keeps every balance far inside 2**53, which JavaScript numbers hold exactly.
BALANCE_CAP = 1_000_000_000


@dataclass(frozen=True)
class Rules:
    """The constants a network agrees on; every node must use the same ones to compute the same balances.

    ``DEFAULT_RULES`` is the network's. Tests and local demos pass cheaper ones (a low
    ``grant_pow_bits``); the two inequalities of the module docstring are checked for any rules.
    """

    cost_per_block_token: int = COST_PER_BLOCK_TOKEN
    earn_per_block_token: int = EARN_PER_BLOCK_TOKEN
    rarity_bonus: tuple[int, ...] = RARITY_BONUS_PER_BLOCK_TOKEN
    base_fee: int = BASE_FEE
    discount_tiers: tuple[tuple[int, int], ...] = DISCOUNT_TIERS
    uptime_bonus: int = UPTIME_BONUS
    uptime_min_block_tokens: int = UPTIME_MIN_BLOCK_TOKENS
    starter_grant: int = STARTER_GRANT
    grant_pow_bits: int = GRANT_POW_BITS
    balance_cap: int = BALANCE_CAP

    def __post_init__(self) -> None:
        amounts = (
            self.cost_per_block_token,
            self.earn_per_block_token,
            self.base_fee,
            self.uptime_bonus,
            self.uptime_min_block_tokens,
            self.starter_grant,
            self.balance_cap,
            *self.rarity_bonus,
        )
        if any(isinstance(a, bool) or not isinstance(a, int) or a < 0 for a in amounts):
            raise LedgerError("every amount in the ledger rules is a non-negative integer")
        if not 0 <= self.grant_pow_bits <= 64:
            raise LedgerError(f"grant_pow_bits = {self.grant_pow_bits} is outside [0, 64]")
        thresholds = [t for t, _ in self.discount_tiers]
        if thresholds != sorted(thresholds) or any(not 0 <= p < 1000 for _, p in self.discount_tiers):
            raise LedgerError("discount tiers must be sorted by threshold with permille in [0, 1000)")
        best_earn = (self.earn_per_block_token + max(self.rarity_bonus, default=0)) * 1000
        if best_earn > self.cost_per_block_token * (1000 - self.max_discount_permille):
            raise LedgerError(
                "earnings plus the largest rarity bonus exceed the discounted cost per block-token: "
                "two colluding identities could mint credits by serving each other"
            )
        if self.uptime_bonus > self.base_fee:
            raise LedgerError("the uptime bonus exceeds the base fee: uptime could be farmed at a profit")

    @property
    def max_discount_permille(self) -> int:
        return max((p for _, p in self.discount_tiers), default=0)

    def discount_permille(self, standing: int) -> int:
        """Permille off the per-block-token price for a client that has served ``standing`` block-tokens."""
        off = 0
        for threshold, permille in self.discount_tiers:
            if standing >= threshold:
                off = permille
        return off

    def rarity_rate(self, servers: int) -> int:
        """Bonus units per block-token for a block served by ``servers`` distinct peers that day."""
        return self.rarity_bonus[servers - 1] if 1 <= servers <= len(self.rarity_bonus) else 0


DEFAULT_RULES = Rules()

# A private mesh (tests, ``ai4all up``) may lower the starter grant's proof of work; every node of one
# network must use the same value, or their balances disagree.
POW_BITS_ENV = "AI4ALL_LEDGER_POW_BITS"


def network_rules() -> Rules:
    """The ledger rules of this network: the defaults, with ``$AI4ALL_LEDGER_POW_BITS`` if set."""
    bits = os.environ.get(POW_BITS_ENV)
    if not bits:
        return DEFAULT_RULES
    try:
        return Rules(grant_pow_bits=int(bits))
    except ValueError as exc:
        raise LedgerError(f"${POW_BITS_ENV}={bits!r} is not a number of bits in 0..64") from exc


def price(blocks: int, tokens: int, contributor_standing: int = 0, rules: Rules = DEFAULT_RULES) -> int:
    """Units a client pays for ``tokens`` token positions through ``blocks`` blocks of one span.

    ``contributor_standing`` is the block-tokens the client has itself served (its lifetime total in
    counted receipts); it earns the discount. The per-block-token part is rounded up, so a discount can
    never make a request cheaper than the integer arithmetic allows in every language alike.
    """
    if blocks < 0 or tokens < 0 or contributor_standing < 0:
        raise LedgerError(f"price of {blocks} blocks x {tokens} tokens: counts must be non-negative")
    variable = (
        blocks * tokens * rules.cost_per_block_token * (1000 - rules.discount_permille(contributor_standing))
    )
    return rules.base_fee + -(-variable // 1000)


def earnings(blocks: int, tokens: int, rules: Rules = DEFAULT_RULES) -> int:
    """Units a server earns for serving ``tokens`` through ``blocks`` blocks, before rarity and uptime."""
    return blocks * tokens * rules.earn_per_block_token


def format_units(units: int) -> str:
    """Units as credits with three decimals (``-1.500``), exact: no float on the way."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), UNITS_PER_CREDIT)
    return f"{sign}{whole}.{frac:03d}"


def can_pay(balance: int, cost: int, outstanding: int = 0, pending: int = 0) -> str | None:
    """Why a client with ``balance`` (minus ``outstanding`` already promised, and minus ``pending``
    bonuses not yet credited at the time a request now would settle) cannot pay ``cost``, or None."""
    available = balance - outstanding - pending
    if available >= cost:
        return None
    held = f" ({format_units(outstanding)} held for open sessions)" if outstanding else ""
    later = (
        f" ({format_units(pending)} of bonuses credited only at the end of this hour or day)"
        if pending
        else ""
    )
    return (
        f"balance {format_units(balance)} credits{held}{later} does not cover the price of "
        f"{format_units(cost)} credits for this request; serve blocks to earn credits"
    )
