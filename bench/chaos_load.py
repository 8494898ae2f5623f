"""The chaos run's load: native mesh clients and OpenAI-compatible API requests, every reply checked.

A **native user** is a ``MeshClient`` on a node of its own (identity and SQLite ledger in its data
directory), as ``ai4all chat`` runs one, kept open across chats, in a process of its own
(``chaos_user``, which speaks to the harness by lines); it lists every signaling node, its own first.
It chats back to back, greedy, and compares the tokens with the reference. A user's starter grant pays
for a few dozen chats of the tiny model; when what it can spend, less what its open holds promise,
falls under three chats' price (a chat and a spot check of each of its hops) it leaves and a new user (a fresh identity, a new data directory) takes its place, so the load never
turns into payment refusals. The new identity starts from a copy of the departed one's ledger (as a
client on the same machine would), and the departed user's ledger stays on disk for the receipt count.

An **API worker** posts ``/v1/chat/completions`` (``temperature`` 0) to the API peers in turn, one
request every ``api_interval_s``, and compares the text with the reference; a request that cannot
connect (that API peer is dead) goes to the other API peer, as a client with two endpoints would, and
is counted as redirected. The API peers pay for the other spans from their own balance, hence the pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.mesh_concurrency import wait_for_route
from python_peer.chat import prompt_ids
from python_peer.core.economics import network_rules
from python_peer.core.errors import AI4AllError
from python_peer.core.holds import held_units, route_hold
from python_peer.core.http_limits import KEEP_ALIVE_S
from python_peer.core.manifest import Manifest
from python_peer.generate import Generation, SamplingParams, agenerate
from python_peer.ledger_store import LEDGER_FILE
from python_peer.mesh_client import ClientConfig, MeshClient
from python_peer.node import MeshNode, NodeConfig, open_client
from python_peer.tokenizer import ModelTokenizer

PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "What are the three primary colours?",
    "def fibonacci(n):",
    "hello world",
    "The quick brown fox",
)
_IDS = re.compile(r"\b[0-9a-f]{8,}\b…?")
_NUMBERS = re.compile(r"\b\d+(\.\d+)?\b")


def reason(text: str) -> str:
    """A failure's message with peer ids and numbers blanked, so alike failures count together."""
    return _NUMBERS.sub("N", _IDS.sub("<id>", text))[:160]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: who made it, when (seconds into the run), and whether its reply was served and right.

    The run keeps one per request in the harness's process, whose memory is judged: slotted, with
    ``who`` interned (about 100 bytes a request, not the 400 of a dict-backed one)."""

    kind: str  # "native" or "api"
    who: str
    prompt: int
    start: float
    end: float
    served: bool
    correct: bool = False
    error: str = ""


@dataclass
class Load:
    """What the load did; ``t0`` is the monotonic time the run's clock starts at."""

    t0: float
    outcomes: list[Outcome] = field(default_factory=list)
    users: list[Path] = field(default_factory=list)  # data dirs of every native identity, departed ones too
    api_redirects: int = 0  # API requests sent to the other API peer because the first refused to connect
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        return time.monotonic() - self.t0


class References:
    """The greedy reply to each prompt, from the shards chained in the harness (``compute``, ``LocalChain``),
    handed to each user process as a JSON file (``write``, ``read``): the chain runs once, and the users'
    processes never load it."""

    def __init__(
        self,
        tokenizer: ModelTokenizer,
        params: SamplingParams,
        ids: list[list[int]],
        replies: list[Generation],
    ) -> None:
        self.tokenizer = tokenizer
        self.params = params
        self.ids = ids
        self.replies = replies

    @classmethod
    def compute(cls, model_dir: Path, max_tokens: int) -> References:
        from python_peer.chain import LocalChain
        from python_peer.generate import generate

        chain = LocalChain(model_dir)
        tokenizer = ModelTokenizer(model_dir, chain.manifest)
        params = SamplingParams(max_tokens=max_tokens)
        ids = [prompt_ids(tokenizer, p) for p in PROMPTS]
        return cls(tokenizer, params, ids, [generate(chain, tokenizer, i, params) for i in ids])

    def write(self, path: Path) -> None:
        replies = [{"text": r.text, "token_ids": list(r.token_ids)} for r in self.replies]
        body = {"max_tokens": self.params.max_tokens, "ids": self.ids, "replies": replies}
        path.write_text(json.dumps(body))

    @classmethod
    def read(cls, path: Path, model_dir: Path, manifest: Manifest) -> References:
        try:
            body = json.loads(path.read_text())
            params = SamplingParams(max_tokens=int(body["max_tokens"]))
            ids = [[int(t) for t in prompt] for prompt in body["ids"]]
            replies = [
                Generation(text=str(r["text"]), token_ids=tuple(int(t) for t in r["token_ids"]))
                for r in body["replies"]
            ]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AI4AllError(f"cannot read the reference replies in {path}: {_describe(exc)}") from exc
        if len(ids) != len(PROMPTS) or len(replies) != len(PROMPTS):
            raise AI4AllError(f"{path} holds {len(replies)} reference replies, not {len(PROMPTS)}")
        return cls(ModelTokenizer(model_dir, manifest), params, ids, replies)


class NativeUser:
    """One mesh client after another (a new identity when the last one's credit runs low)."""

    def __init__(
        self,
        index: int,
        urls: Sequence[str],
        model_dir: Path,
        manifest: Manifest,
        refs: References,
        data_root: Path,
    ) -> None:
        self.index = index
        self.urls = tuple(urls[index % len(urls) :]) + tuple(urls[: index % len(urls)])
        self.model_dir = model_dir
        self.manifest = manifest
        self.refs = refs
        self.data_root = data_root
        self.generation = 0
        self.node: MeshNode | None = None
        self.data_dir: Path | None = None
        self.client: MeshClient | None = None
        max_length = max(len(ids) for ids in refs.ids) + refs.params.max_tokens
        self.chat_price = route_hold([s.end - s.start for s in manifest.blocks], max_length, network_rules())

    @property
    def name(self) -> str:
        return sys.intern(f"user{self.index}.{self.generation}")

    async def open(self, load: Load) -> None:
        await self.close()
        departed = self.data_dir
        self.generation += 1
        self.data_dir = data_dir = self.data_root / self.name
        load.users.append(data_dir)
        if departed is not None:
            await asyncio.to_thread(copy_ledger, departed, data_dir)
        self.node, self.client = await open_client(
            NodeConfig(signal_urls=self.urls, data_dir=data_dir), self.model_dir, ClientConfig(threads=1)
        )
        await wait_for_route(self.client, self.manifest, timeout=60)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
        if self.node is not None:
            await self.node.aclose()
        self.node = self.client = None

    async def _low(self) -> bool:
        ledger = self.client.ledger if self.client is not None else None
        if ledger is None:
            return False

        def free() -> int:
            # what it can spend less what its open holds already promise (a hop that failed, or a session
            # closed unused, binds its hold until it expires: docs/trust.md)
            report, now = ledger.store.report(), _now_ms()
            return report.spendable(ledger.peer_id, now) - held_units(report, ledger.peer_id, now)

        # a chat holds its price once per hop, and a spot check of each hop as much again
        return await asyncio.to_thread(free) < 3 * self.chat_price

    async def chat(self, load: Load, prompt: int, timeout: float) -> Outcome:
        start = load.now()
        try:
            if self.client is None or await self._low():
                await self.open(load)
            if self.client is None:
                raise AI4AllError(f"{self.name} has no mesh client")
            async with asyncio.timeout(timeout):
                reply = await agenerate(
                    self.client, self.refs.tokenizer, self.refs.ids[prompt], self.refs.params
                )
        except (AI4AllError, OSError, TimeoutError) as exc:
            return Outcome("native", self.name, prompt, start, load.now(), False, error=_describe(exc))
        right = reply.token_ids == self.refs.replies[prompt].token_ids
        wrong = (
            "" if right else f"tokens {list(reply.token_ids)} != {list(self.refs.replies[prompt].token_ids)}"
        )
        return Outcome("native", self.name, prompt, start, load.now(), True, right, wrong)

    async def run(self, load: Load, seed: int, timeout: float, report: Callable[[Outcome], None]) -> None:
        """Chat back to back until ``load.stop``, each outcome to ``report`` (``chaos_user`` writes it out)."""
        rng = _Rng(seed)
        while not load.stop.is_set():
            outcome = await self.chat(load, rng.pick(len(PROMPTS)), timeout)
            report(outcome)
            if not outcome.served:
                await asyncio.sleep(0.5)  # a failing mesh is not hammered


class ApiWorker:
    """Chat completions through the API peers, in turn, paced."""

    def __init__(
        self, index: int, api_urls: Sequence[str], model_id: str, refs: References, interval_s: float
    ):
        self.index = index
        self.api_urls = list(api_urls)
        self.model_id = model_id
        self.refs = refs
        self.interval_s = interval_s

    async def chat(self, http: httpx.AsyncClient, load: Load, url: str, prompt: int) -> Outcome:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [{"role": "user", "content": PROMPTS[prompt]}],
            "max_tokens": self.refs.params.max_tokens,
            "temperature": 0,
        }
        who = sys.intern(f"api{self.index}@{url.split(':')[-1].split('/')[0]}")
        start = load.now()
        try:
            response = await http.post(f"{url}/chat/completions", json=body)
        except httpx.HTTPError as exc:
            return Outcome("api", who, prompt, start, load.now(), False, error=_describe(exc))
        end = load.now()
        if response.status_code != 200:
            try:
                message = str(response.json()["error"]["message"])
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            return Outcome(
                "api", who, prompt, start, end, False, error=f"HTTP {response.status_code}: {message}"
            )
        try:
            answer = response.json()
            text = str(answer["choices"][0]["message"]["content"])
            tokens = int(answer["usage"]["completion_tokens"])
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            return Outcome("api", who, prompt, start, end, False, error=f"bad answer: {_describe(exc)}")
        ref = self.refs.replies[prompt]
        right = text == ref.text and tokens == len(ref.token_ids)
        wrong = "" if right else f"text {text!r} ({tokens} tokens) != {ref.text!r} ({len(ref.token_ids)})"
        return Outcome("api", who, prompt, start, end, True, right, wrong)

    async def run(self, load: Load, seed: int, timeout: float) -> None:
        rng = _Rng(seed)
        turn = self.index
        # A kept-alive connection is dropped here before the API peer drops it (``KEEP_ALIVE_S`` idle): at
        # one request every 2 x ``interval_s`` per API peer, the two clocks would otherwise race, and a
        # request sent on a connection the server is closing fails with nothing to do with chaos.
        limits = httpx.Limits(keepalive_expiry=KEEP_ALIVE_S / 2)
        async with httpx.AsyncClient(trust_env=False, timeout=timeout, limits=limits) as http:
            while not load.stop.is_set():
                began = time.monotonic()
                url = self.api_urls[turn % len(self.api_urls)]
                turn += 1
                prompt = rng.pick(len(PROMPTS))
                outcome = await self.chat(http, load, url, prompt)
                if outcome.error.startswith("ConnectError") and len(self.api_urls) > 1:
                    # Nothing listens there (that API peer is dead): a client with two endpoints tries the
                    # other, as it would after "connection refused". A request cut mid-reply is a failure.
                    load.api_redirects += 1
                    url = self.api_urls[turn % len(self.api_urls)]
                    outcome = await self.chat(http, load, url, prompt)
                load.outcomes.append(outcome)
                rest = self.interval_s - (time.monotonic() - began)
                if rest > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(rest):
                            await load.stop.wait()


async def model_id(api_url: str) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        models = (await http.get(f"{api_url}/models")).json()
    return str(models["data"][0]["id"])


class _Rng:
    """A seeded choice of prompts per worker (the schedule has its own generator)."""

    def __init__(self, seed: int) -> None:
        import random

        self._random = random.Random(seed)

    def pick(self, n: int) -> int:
        return self._random.randrange(n)


def copy_ledger(departed: Path, data_dir: Path) -> None:
    """The departed identity's ledger, copied (SQLite's backup) into the new identity's data directory.

    A real client keeps its identity and its ledger; replacing identities here is the run's own device
    (payment never refused). A fresh identity starting from an empty ledger would re-fetch the whole
    ledger by gossip each time, 20-odd times a run, which no real client does; starting from the
    ledger this machine already holds, it reopens it as a restarted client would and gossips only what
    is new. The departed identity's own directory stays as it was, for the receipt count."""
    data_dir.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(departed / LEDGER_FILE)
    target = sqlite3.connect(data_dir / LEDGER_FILE)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def _describe(exc: BaseException) -> str:
    text = str(exc) or "(no message)"
    return f"{type(exc).__name__}: {text}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
