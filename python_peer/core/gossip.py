"""Anti-entropy for the ledger: two nodes compare log heads and pull the entries they miss.

Standard library only, and transport-agnostic: messages are JSON-able dicts that a native peer carries
as the metadata of a GOSSIP frame on a data channel (``core/wire.py``: at most 64 KiB) and a browser
may send through a signaling node (use a smaller ``max_message_bytes`` there: a signal payload holds
32 KiB). One ``GossipSession`` per neighbour; both sides run the same code. A round::

    A -> B  summary   a digest of A's heads per bucket (first two hex digits of the author)
    B -> A  heads     B's heads in the buckets whose digests differ         (reply: false)
    A -> B  heads     A's heads in the same buckets                          (reply: true)
    A -> B  want      the (author, from seq) ranges A lacks, and forks A has not seen
    B -> A  want      likewise, computed from A's heads
    each    entries   up to max_message_bytes of entries, in seq order; ``more`` asks for another want

Every message is bounded (lists, sizes, counts), incoming traffic is rate-limited per session (token
buckets of messages and of entries), and a message that is malformed or over a bound is dropped with a
reason, never answered. Pulling is idempotent, so lost or repeated messages only cost a round.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .canonical import canonical_bytes, is_peer_id
from .chain_store import Outcome
from .entries import HASH_RE, MAX_FORK_PROOF_BYTES, Entry, ForkProof
from .errors import CanonicalError, LedgerError
from .ledger_fields import Rejection

GOSSIP_VERSION = 1
MAX_GOSSIP_MESSAGE_BYTES = 64 * 1024 - 1024  # what a receiver accepts, whatever the sender's budget
MAX_HEADS = 1024  # authors in one heads message
MAX_BATCH_ENTRIES = 256
MAX_PROOFS = 16
MAX_REJECTIONS_KEPT = 64
MAX_WALKED = 4096  # (author, seq) predecessors one session remembers having asked for
BUCKETS = tuple(f"{i:02x}" for i in range(256))
_ENVELOPE_BYTES = 256  # room for the type, version and flags around a batch


class GossipStore(Protocol):
    """What gossip needs from a ledger store (``python_peer.ledger_store.LedgerStore`` is one)."""

    def heads(self) -> dict[str, tuple[int, str]]: ...

    def forks(self) -> dict[str, int]: ...

    def hash_at(self, author: str, seq: int) -> str | None: ...

    def entries_from(self, author: str, from_seq: int, limit: int) -> list[Entry]: ...

    def fork_proof(self, author: str) -> ForkProof | None: ...

    def insert_many(self, entries: Sequence[Entry], now: int | None = None) -> list[Outcome]: ...

    def add_fork_proofs(self, proofs: Sequence[ForkProof], now: int | None = None) -> list[Outcome]: ...


@dataclass(frozen=True)
class GossipConfig:
    """Bounds of one gossip session. Both sides must accept what the other sends: keep budgets <= 63 KiB."""

    max_message_bytes: int = 60 * 1024  # canonical JSON of one outgoing message
    max_batch_entries: int = MAX_BATCH_ENTRIES
    max_wants: int = 128
    round_interval_ms: int = 2_000  # a new round starts at most this often
    message_rate: float = 20.0  # incoming messages per second ...
    message_burst: float = 60.0  # ... and how many may come at once
    entry_rate: float = 1_000.0  # incoming entries per second (each costs up to three signature checks)
    entry_burst: float = 4_000.0

    def __post_init__(self) -> None:
        if not 4096 <= self.max_message_bytes <= MAX_GOSSIP_MESSAGE_BYTES:
            raise LedgerError(f"max_message_bytes must be in [4096, {MAX_GOSSIP_MESSAGE_BYTES}]")
        if self.max_message_bytes < MAX_FORK_PROOF_BYTES + _ENVELOPE_BYTES:
            raise LedgerError("max_message_bytes must hold at least one fork proof")


class _Bucket:
    """A token bucket on the caller's clock (milliseconds), so tests and replays are deterministic."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp: int | None = None

    def take(self, cost: float, now_ms: int) -> bool:
        if self.stamp is not None:
            self.tokens = min(self.burst, self.tokens + max(0, now_ms - self.stamp) * self.rate / 1000)
        self.stamp = now_ms
        if cost > self.tokens:
            return False
        self.tokens -= cost
        return True


@dataclass
class Received:
    """What handling one incoming message did: replies to send back, and what was learned or refused."""

    replies: list[dict[str, Any]] = field(default_factory=list)
    stored: int = 0
    duplicates: int = 0
    forks: int = 0
    rejected: list[tuple[str, Rejection]] = field(default_factory=list)  # at most MAX_REJECTIONS_KEPT
    problem: str | None = None  # why the message was dropped whole


def bucket_of(author: str) -> str:
    return author[:2]


def bucket_digests(heads: dict[str, tuple[int, str]], forks: dict[str, int]) -> dict[str, str]:
    """Bucket -> 16 hex digits summarising every head and fork in it; empty buckets are left out."""
    lines: dict[str, list[str]] = {}
    for author in sorted(set(heads) | set(forks)):
        seq, h = heads.get(author, (0, ""))
        lines.setdefault(bucket_of(author), []).append(f"{author}:{seq}:{h}:{forks.get(author, 0)}\n")
    return {b: hashlib.sha256("".join(ls).encode()).hexdigest()[:16] for b, ls in lines.items()}


def _size(value: object) -> int:
    return len(canonical_bytes(value))


# --- parsing incoming messages --------------------------------------------------------------------------


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise LedgerError(f"gossip message: {what}")


def _int_field(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _parse_heads(msg: dict[str, Any]) -> tuple[list[str], dict[str, tuple[int, str]], dict[str, int]]:
    buckets, heads, forks = msg["buckets"], msg["heads"], msg["forks"]
    _expect(isinstance(buckets, list) and len(buckets) <= 256, "buckets must be a list of at most 256")
    _expect(
        all(isinstance(b, str) and b in _BUCKET_SET for b in buckets), "a bucket is two lowercase hex digits"
    )
    _expect(
        isinstance(heads, dict) and len(heads) <= MAX_HEADS, f"heads must map at most {MAX_HEADS} authors"
    )
    _expect(
        isinstance(forks, dict) and len(forks) <= MAX_HEADS, f"forks must map at most {MAX_HEADS} authors"
    )
    _expect(isinstance(msg.get("reply"), bool), "reply must be true or false")
    parsed: dict[str, tuple[int, str]] = {}
    for author, head in heads.items():
        _expect(is_peer_id(author), "heads keys are peer ids")
        _expect(isinstance(head, list) and len(head) == 2, "a head is [seq, hash]")
        seq, h = head
        _expect(
            _int_field(seq, 1, 2**53 - 1) and isinstance(h, str) and HASH_RE.match(h) is not None, "bad head"
        )
        parsed[author] = (seq, h)
    fork_seqs: dict[str, int] = {}
    for author, seq in forks.items():
        _expect(is_peer_id(author) and _int_field(seq, 1, 2**53 - 1), "forks map peer ids to seqs")
        fork_seqs[author] = seq
    return list(dict.fromkeys(buckets)), parsed, fork_seqs


_BUCKET_SET = frozenset(BUCKETS)
_KEYS = {
    "summary": frozenset({"type", "v", "buckets"}),
    "heads": frozenset({"type", "v", "buckets", "heads", "forks", "reply"}),
    "want": frozenset({"type", "v", "want", "forks"}),
    "entries": frozenset({"type", "v", "entries", "proofs", "more"}),
}


class GossipSession:
    """Anti-entropy with one neighbour over any transport that carries JSON objects.

    Call ``start(now)`` on a timer and send what it returns; pass every message from the neighbour to
    ``receive(message, now)`` and send its ``replies``. Not thread-safe: one session, one task.
    """

    def __init__(self, store: GossipStore, config: GossipConfig | None = None, peer: str = "") -> None:
        self.store = store
        self.config = config or GossipConfig()
        self.peer = peer
        self._messages = _Bucket(self.config.message_rate, self.config.message_burst)
        self._entries = _Bucket(self.config.entry_rate, self.config.entry_burst)
        self._last_round: int | None = None
        self._remote_heads: dict[str, tuple[int, str]] = {}  # from the last heads message, <= MAX_HEADS
        self._remote_forks: dict[str, int] = {}
        self._round = 0
        self._walked: set[tuple[str, int]] = set()  # predecessors already asked for, <= MAX_WALKED

    # --- outgoing ---------------------------------------------------------------------------------------

    def start(self, now_ms: int, *, force: bool = False) -> dict[str, Any] | None:
        """A ``summary`` opening a round, if ``round_interval_ms`` has passed since the last one."""
        if (
            not force
            and self._last_round is not None
            and now_ms - self._last_round < self.config.round_interval_ms
        ):
            return None
        self._last_round = now_ms
        self._round += 1
        return {
            "type": "summary",
            "v": GOSSIP_VERSION,
            "buckets": bucket_digests(self.store.heads(), self.store.forks()),
        }

    def _heads_message(self, buckets: Sequence[str], reply: bool) -> dict[str, Any]:
        """Own heads and forks in ``buckets``, as many as fit the budget (rotating which come first)."""
        heads, forks = self.store.heads(), self.store.forks()
        wanted = set(buckets)
        authors = sorted(a for a in set(heads) | set(forks) if bucket_of(a) in wanted)
        if authors:
            shift = self._round % len(authors)
            authors = authors[shift:] + authors[:shift]
        out_heads: dict[str, list[Any]] = {}
        out_forks: dict[str, int] = {}
        budget = self.config.max_message_bytes - _ENVELOPE_BYTES - _size(list(buckets))
        for author in authors[:MAX_HEADS]:
            cost = 160 if author in heads else 0
            cost += 90 if author in forks else 0
            if cost > budget:
                break
            budget -= cost
            if author in heads:
                out_heads[author] = list(heads[author])
            if author in forks:
                out_forks[author] = forks[author]
        return {
            "type": "heads",
            "v": GOSSIP_VERSION,
            "buckets": list(buckets),
            "heads": out_heads,
            "forks": out_forks,
            "reply": reply,
        }

    def _want_message(self, extra: Sequence[tuple[str, int]] = ()) -> dict[str, Any] | None:
        """The ranges to pull, from the neighbour's last heads (after ``extra``); None when nothing is missing."""
        mine, my_forks = self.store.heads(), self.store.forks()
        wants: list[list[Any]] = [[author, seq] for author, seq in extra][: self.config.max_wants]
        for author, (seq, h) in sorted(self._remote_heads.items()):
            if len(wants) >= self.config.max_wants:
                break
            fork = my_forks.get(author)
            have = mine.get(author, (0, ""))[0]
            limit = seq if fork is None else min(seq, fork - 1)
            if have < limit:
                wants.append([author, have + 1])
            elif fork is None and have >= seq and self.store.hash_at(author, seq) != h:
                wants.append([author, seq])  # same seq, other content: fetch it as fork evidence
        fork_wants = [
            author
            for author, seq in sorted(self._remote_forks.items())
            if my_forks.get(author, seq + 1) > seq
        ][: self.config.max_wants]
        if not wants and not fork_wants:
            return None
        return {"type": "want", "v": GOSSIP_VERSION, "want": wants, "forks": fork_wants}

    def _entries_message(self, wants: list[tuple[str, int]], fork_wants: list[str]) -> dict[str, Any]:
        """Entries answering ``wants`` in order, until the byte or count budget runs out."""
        budget = self.config.max_message_bytes - _ENVELOPE_BYTES
        count_left = self.config.max_batch_entries
        proofs: list[dict[str, Any]] = []
        more = False
        for author in fork_wants:
            proof = self.store.fork_proof(author)
            if proof is None:
                continue
            data = {"a": proof.a.to_dict(), "b": proof.b.to_dict()}
            cost = _size(data) + 1
            if cost > budget or len(proofs) >= MAX_PROOFS:
                more = True
                break
            proofs.append(data)
            budget -= cost
        batch: list[dict[str, Any]] = []
        for author, from_seq in wants:
            if more or count_left <= 0:
                more = True
                break
            found = self.store.entries_from(author, from_seq, count_left)
            for entry in found:
                cost = len(entry.encoded) + 1
                if cost > budget:
                    more = True
                    break
                batch.append(entry.to_dict())
                budget -= cost
                count_left -= 1
            if count_left <= 0:
                more = True
        return {"type": "entries", "v": GOSSIP_VERSION, "entries": batch, "proofs": proofs, "more": more}

    # --- incoming ---------------------------------------------------------------------------------------

    def admit_entries(self, count: int, now_ms: int) -> None:
        """Take ``count`` entries the neighbour sends outside gossip (a push of its log) from the entry
        budget its gossip messages draw on, each costing the same checks either way; a push over it is
        refused whole (``LedgerError``, ``rate_limited``), as a gossip message would be dropped."""
        if count and not self._entries.take(count, now_ms):
            raise LedgerError(
                f"rate_limited: {self.peer[:12]}… pushed more entries than its budget; try again later",
                code="rate_limited",
            )

    def receive(self, message: object, now_ms: int) -> Received:
        """Handle one message from the neighbour; a bad or rate-limited one is dropped with a reason."""
        result = Received()
        if not self._messages.take(1, now_ms):
            result.problem = "rate_limited: too many gossip messages from this peer"
            return result
        try:
            kind, body = self._check_envelope(message)
            if kind == "summary":
                self._on_summary(body, result)
            elif kind == "heads":
                self._on_heads(body, result)
            elif kind == "want":
                self._on_want(body, result)
            else:
                self._on_entries(body, now_ms, result)
        except (LedgerError, CanonicalError) as exc:
            result.problem = f"malformed: {exc}"
        return result

    @staticmethod
    def _check_envelope(message: object) -> tuple[str, dict[str, Any]]:
        if not isinstance(message, dict):
            raise LedgerError("gossip message: not a JSON object")
        kind = message.get("type")
        if not isinstance(kind, str) or kind not in _KEYS:
            raise LedgerError(f"gossip message: unknown type {kind!r:.40}")
        _expect(set(message) == _KEYS[kind], f"{kind} must have exactly the fields {sorted(_KEYS[kind])}")
        _expect(
            message.get("v") == GOSSIP_VERSION, f"version {message.get('v')!r:.20} is not {GOSSIP_VERSION}"
        )
        size = _size(message)
        _expect(size <= MAX_GOSSIP_MESSAGE_BYTES, f"{size} bytes is over {MAX_GOSSIP_MESSAGE_BYTES}")
        return kind, message

    def _on_summary(self, msg: dict[str, Any], result: Received) -> None:
        theirs = msg["buckets"]
        _expect(isinstance(theirs, dict) and len(theirs) <= 256, "buckets must map at most 256 buckets")
        for bucket, digest in theirs.items():
            _expect(
                bucket in _BUCKET_SET and isinstance(digest, str) and len(digest) == 16, "bad bucket digest"
            )
        mine = bucket_digests(self.store.heads(), self.store.forks())
        differ = sorted(b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b))
        if differ:
            result.replies.append(self._heads_message(differ, reply=False))

    def _on_heads(self, msg: dict[str, Any], result: Received) -> None:
        buckets, heads, forks = _parse_heads(msg)
        self._remote_heads, self._remote_forks = heads, forks
        if not msg["reply"]:
            result.replies.append(self._heads_message(buckets, reply=True))
        want = self._want_message()
        if want is not None:
            result.replies.append(want)

    def _on_want(self, msg: dict[str, Any], result: Received) -> None:
        wants, forks = msg["want"], msg["forks"]
        limit = self.config.max_wants
        _expect(isinstance(wants, list) and len(wants) <= limit, f"want must be a list of at most {limit}")
        _expect(isinstance(forks, list) and len(forks) <= limit, f"forks must be a list of at most {limit}")
        ranges: list[tuple[str, int]] = []
        for item in wants:
            _expect(isinstance(item, list) and len(item) == 2, "a want is [author, from_seq]")
            _expect(is_peer_id(item[0]) and _int_field(item[1], 1, 2**53 - 1), "a want is [author, from_seq]")
            ranges.append((item[0], item[1]))
        _expect(all(is_peer_id(a) for a in forks), "forks must list peer ids")
        result.replies.append(self._entries_message(ranges, list(dict.fromkeys(forks))))

    def _on_entries(self, msg: dict[str, Any], now_ms: int, result: Received) -> None:
        raw_entries, raw_proofs, more = msg["entries"], msg["proofs"], msg["more"]
        _expect(
            isinstance(raw_entries, list) and len(raw_entries) <= 4 * MAX_BATCH_ENTRIES, "too many entries"
        )
        _expect(isinstance(raw_proofs, list) and len(raw_proofs) <= MAX_PROOFS, "too many proofs")
        _expect(isinstance(more, bool), "more must be true or false")
        if not self._entries.take(len(raw_entries) + 2 * len(raw_proofs), now_ms):
            result.problem = "rate_limited: too many gossip entries from this peer"
            return
        entries: list[Entry] = []
        for data in raw_entries:
            try:
                entries.append(Entry.from_dict(data))
            except (LedgerError, CanonicalError) as exc:
                self._reject(result, "?", Rejection("malformed", f"malformed entry: {exc}"))
        proofs: list[ForkProof] = []
        for data in raw_proofs:
            try:
                _expect(isinstance(data, dict) and set(data) == {"a", "b"}, "a proof is {a, b}")
                proofs.append(
                    ForkProof(
                        Entry.from_dict(data["a"], nested=True), Entry.from_dict(data["b"], nested=True)
                    )
                )
            except (LedgerError, CanonicalError) as exc:
                self._reject(result, "?", Rejection("malformed", f"malformed fork proof: {exc}"))
        outcomes = (self.store.add_fork_proofs(proofs, now_ms) if proofs else []) + (
            self.store.insert_many(entries, now_ms) if entries else []
        )
        by_hash = {entry.hash: entry for entry in entries}
        diverged: list[tuple[str, int]] = []  # an entry that does not extend ours: fetch its predecessor
        for outcome in outcomes:
            entry = by_hash.get(outcome.hash)
            if entry is not None and self._parts_below(entry, outcome):
                below = (entry.author, entry.seq - 1)
                if below not in self._walked:  # asked once per session: a peer cannot make us loop
                    if len(self._walked) >= MAX_WALKED:
                        self._walked.clear()
                    self._walked.add(below)
                    diverged.append(below)
            if outcome.status == "stored":
                result.stored += 1
            elif outcome.status == "duplicate":
                result.duplicates += 1
            elif outcome.status == "fork":
                result.forks += 1
            elif outcome.rejection is not None:
                self._reject(result, outcome.hash, outcome.rejection)
        if more or diverged:
            want = self._want_message(diverged)
            if want is not None:
                result.replies.append(want)

    def _parts_below(self, entry: Entry, outcome: Outcome) -> bool:
        """Whether the neighbour's branch and ours part below ``entry``: then fetch its predecessor too,
        walking toward the first seq where they differ (the fork that counts)."""
        if entry.seq == 1:
            return False
        if outcome.rejection is not None and outcome.rejection.code == "bad_link":
            return True
        return outcome.status == "fork" and self.store.hash_at(entry.author, entry.seq - 1) not in (
            None,
            entry.prev,
        )

    @staticmethod
    def _reject(result: Received, entry_hash: str, rejection: Rejection) -> None:
        if len(result.rejected) < MAX_REJECTIONS_KEPT:
            result.rejected.append((entry_hash, rejection))
