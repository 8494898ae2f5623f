"""Federation: websockets to sibling signaling nodes, gossip of announcements, relay of signals.

A node dials each configured sibling and redials with exponential backoff when the link drops; a link
works both ways whoever dialed it. When two nodes list each other both dial, so each keeps **one live
link per sibling node id**, by a rule both ends compute alike: the link dialed by the node with the
smaller node id wins, and between two links dialed the same way the newer wins (it is the dialer's
current attempt; a dialer never opens a second link to a node it is linked to). The loser is closed
with a reason saying so, and a dialer whose node is already linked waits until that link drops.

Federation is authenticated: every node has an Ed25519 node key, and a sibling is configured by its URL
and its key (``URL#KEY``). The dialer reads the hello, sends ``federate`` with its key, a signature of
the hello's nonce and a nonce of its own; the accepting node takes it only from a key it has configured
(``--sibling`` or ``--accept-sibling``) whose signature holds, and answers ``federated`` signing the
dialer's nonce, which the dialer checks against the key its ``--sibling`` names before it reads any
gossip. Anything else is refused with an error and the link is closed.

Announcements travel as ``gossip`` (de-duplicated by the directory: only an announcement newer than
the one held goes further, never back to the node it came from, and ``hops`` bounds the flood). The
node an announcement arrived from is the route to its peer, so a ``signal`` for a peer connected
elsewhere is sent there as ``relay``. No node is special: when one stops, its links close, its routes
are dropped, and peers re-announce on the nodes they fail over to.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from python_peer.core.canonical import MAX_MESSAGE_BYTES, signing_bytes
from python_peer.core.errors import MessageError, SignalingError, SignatureError
from python_peer.identity import Identity, verify

from .connection import Connection, WebsocketsTransport
from .messages import (
    FEDERATE_CONTEXT,
    Error,
    Federate,
    Federated,
    Gone,
    Gossip,
    Hello,
    decode_json,
    federate_claim,
)
from .outbox import Rank
from .ratelimit import TokenBucket

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 10.0
MAX_INCOMING_LINKS = 32
DUPLICATE_CLOSE_CODE = 1000  # a normal closure: the pair goes on over the other link

ServeLink = Callable[[Connection], Awaitable[None]]


def split_sibling(spec: str) -> tuple[str, str | None]:
    """``URL#KEY`` -> (URL, KEY); a spec with no ``#`` has no key (such a sibling is never dialed)."""
    url, _, key = spec.partition("#")
    return url, key or None


def state_rank(seq: int, message: Gossip | Gone) -> Rank:
    """Orders the states of one peer: by ``seq``, and a withdrawal after the announcement it withdraws."""
    return (seq, 1 if isinstance(message, Gone) else 0)


class Federation:
    """The sibling links of one node (one per sibling node), the routes learned over them, the dialers."""

    def __init__(
        self,
        node_id: str,
        own_url: str,
        siblings: tuple[str, ...],
        serve_link: ServeLink,
        make_bucket: Callable[[], TokenBucket],
        max_entries: int = 10_000,
        *,
        identity: Identity | None = None,
        accept: tuple[str, ...] = (),
    ) -> None:
        self.node_id = node_id
        self.own_url = own_url
        self.identity = identity or Identity.generate()  # the node key
        self.sibling_keys = dict(split_sibling(spec) for spec in siblings)  # URL -> its node key
        self.sibling_urls = tuple(self.sibling_keys)
        # The node keys a federate is accepted from: configured siblings and --accept-sibling.
        self.trusted = {key for key in self.sibling_keys.values() if key} | set(accept)
        self._serve_link = serve_link
        self._make_bucket = make_bucket
        self._max_entries = max_entries  # bounds the routes, and the states queued on each link
        self.links: dict[str, Connection] = {}  # sibling node id -> its one live link
        self._routes: OrderedDict[str, str] = OrderedDict()  # peer id -> sibling node id
        self._link_dropped = asyncio.Event()  # set, then replaced, whenever a link leaves ``links``
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        """Start one dialer per configured sibling."""
        for url, key in self.sibling_keys.items():
            if key is None:
                log.error("sibling %s has no node key (give URL#KEY): not dialing it", url)
                continue
            self._spawn(self._dial_forever(url, key), f"dial-{url}")

    def accept(self, link: Connection, msg: Federate) -> Federated:
        """Check a ``federate`` on ``link`` (its key configured, its proof of the hello's nonce) and
        return the ``federated`` answer; ``SignalingError`` (``not_sibling``) or ``SignatureError`` if not.
        """
        if msg.key not in self.trusted:
            raise SignalingError(
                f"node key {msg.key[:12]}… is not a sibling of this node: federation is refused "
                "(configure it with --sibling URL#KEY or --accept-sibling KEY)",
                code="not_sibling",
            )
        claim = federate_claim(msg.node_id, msg.key, self.node_id, link.nonce)
        try:
            verify(msg.key, signing_bytes(FEDERATE_CONTEXT, claim), msg.proof)
        except SignatureError as exc:
            raise SignatureError(f"federate proof does not sign this connection's nonce: {exc}") from exc
        proof = self.identity.sign_body(
            FEDERATE_CONTEXT, federate_claim(self.node_id, self.key, msg.node_id, msg.nonce)
        )
        return Federated(node_id=self.node_id, key=self.key, proof=proof)

    @property
    def key(self) -> str:
        """This node's key: the Ed25519 public key its siblings configure, 64 hex digits."""
        return self.identity.peer_id

    async def close(self) -> None:
        """Stop dialing and close every link."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        for link in list(self.links.values()):
            await link.close(1001, "signaling node stopping")

    # --- links and routes -----------------------------------------------------------------------------

    def add_link(self, link: Connection) -> bool:
        """Make ``link`` the link to its node, closing the one it replaces; ``False`` if another is kept.

        Raises ``SignalingError`` (``table_full``) past the bound on incoming links.
        """
        node = link.node_id
        if node is None:
            raise RuntimeError(f"{link!r} has no node id: a sibling link is added after its federate")
        held = self.links.get(node)
        if held is not None and not self._better(link, held):
            self._retire(link, kept=held)
            return False
        incoming = sum(1 for n, c in self.links.items() if not c.dialed and n != node)
        if not link.dialed and incoming >= MAX_INCOMING_LINKS:
            raise SignalingError(
                f"this node has the {MAX_INCOMING_LINKS} incoming sibling links it accepts", code="table_full"
            )
        self.links[node] = link
        if held is not None:
            self._retire(held, kept=link)
        log.info("sibling link %s to %s (dialed by %s) is up", link.id, node, self._dialer(link))
        return True

    def remove_link(self, link: Connection) -> None:
        """Forget a link that closed; the routes through its node go too, unless another link replaced it."""
        node = link.node_id
        if node is None or self.links.get(node) is not link:
            return
        del self.links[node]
        dropped = [peer for peer, via in self._routes.items() if via == node]
        for peer in dropped:
            del self._routes[peer]
        self._link_dropped.set()
        self._link_dropped = asyncio.Event()
        log.info("sibling link %s to %s is down (%d routes dropped)", link.id, node, len(dropped))

    def _dialer(self, link: Connection) -> str:
        return self.node_id if link.dialed else str(link.node_id)

    def _better(self, new: Connection, held: Connection) -> bool:
        """Whether ``new`` should replace ``held`` as the link to the same node; both ends agree.

        The link dialed by the smaller node id wins. Two links dialed the same way: an incoming one is
        the dialer's newer attempt (the old one may be half-open), and a dialed one loses (this node's
        own dialer already holds a link to that node: two ``--sibling`` URLs name it).
        """
        new_wins, held_wins = self._dialed_by_smaller(new), self._dialed_by_smaller(held)
        if new_wins != held_wins:
            return new_wins
        return not new.dialed

    def _dialed_by_smaller(self, link: Connection) -> bool:
        return link.dialed == (self.node_id < str(link.node_id))

    def _retire(self, link: Connection, *, kept: Connection) -> None:
        """Close a duplicate link to a node, with a reason that names the link kept."""
        reason = self._duplicate(kept)
        log.info("sibling link %s to %s closed: %s (%s)", link.id, link.node_id, reason, kept.id)
        self._spawn(link.close(DUPLICATE_CLOSE_CODE, reason), f"retire-{link.id}")

    def _duplicate(self, kept: Connection) -> str:
        """The close reason of a duplicate link, naming the link kept the way both ends see it."""
        return f"duplicate sibling link; keeping the one {self._dialer(kept)} dialed"

    def learn_route(self, peer_id: str, link: Connection) -> None:
        """``peer_id`` is reached through ``link``'s node (its newest announcement came that way)."""
        if link.node_id is None:
            return
        self._routes[peer_id] = link.node_id
        self._routes.move_to_end(peer_id)
        while len(self._routes) > self._max_entries:
            self._routes.popitem(last=False)

    def forget_route(self, peer_id: str) -> None:
        self._routes.pop(peer_id, None)

    def route(self, peer_id: str) -> Connection | None:
        node = self._routes.get(peer_id)
        return self.links.get(node) if node is not None else None

    def offer(self, link: Connection, peer_id: str, seq: int, message: Gossip | Gone) -> None:
        """Queue one peer's state on ``link``, replacing an older state of that peer still waiting there."""
        link.send_latest(peer_id, state_rank(seq, message), message)

    def broadcast(self, peer_id: str, seq: int, message: Gossip | Gone, *, skip: str | None = None) -> None:
        """Offer one peer's newest state to every sibling node but ``skip`` (the node it came from)."""
        rank, text = state_rank(seq, message), message.encode()
        for node, link in list(self.links.items()):
            if node != skip:
                link.send_latest(peer_id, rank, text)

    def known_urls(self) -> list[str]:
        """Signaling URLs a peer may fail over to: configured siblings and those that dialed us."""
        urls = list(self.sibling_urls)
        urls += [c.url for c in self.links.values() if c.url and c.url not in urls]
        return urls[:16]

    # --- dialing --------------------------------------------------------------------------------------

    async def _dial_forever(self, url: str, key: str) -> None:
        """Keep a link to ``url``'s node up: dial, serve until it drops, back off, dial again.

        Once a hello said which node ``url`` is, dial only while no other link to that node is up.
        """
        backoff = BACKOFF_INITIAL_S
        node: str | None = None
        while True:
            if node is not None and node in self.links:
                log.info(
                    "sibling %s (%s) is linked over another link; dialing again once it drops", url, node
                )
                while node in self.links:
                    await self._link_dropped.wait()
                backoff = BACKOFF_INITIAL_S
            try:
                async with connect(
                    url,
                    open_timeout=HELLO_TIMEOUT_S,
                    max_size=2 * MAX_MESSAGE_BYTES,
                    proxy=None,
                    ping_interval=10,
                    ping_timeout=10,
                    close_timeout=2,
                ) as websocket:
                    link = Connection(
                        WebsocketsTransport(websocket),
                        self._make_bucket(),
                        dialed=True,
                        max_states=self._max_entries,
                    )
                    try:
                        node = await self._hello(link, url)
                        if node == self.node_id:
                            # A hello proves no key: whatever answers at ``url`` may say so, and the real
                            # sibling may be back later. A URL that is really this node costs a dial now
                            # and then.
                            raise SignalingError(
                                f"its hello says it is this node itself ({node}); check the URL. "
                                "Dialing it again later"
                            )
                        held = self.links.get(node)
                        if held is not None and not self._better(link, held):
                            reason = self._duplicate(held)
                            log.info("sibling %s (%s): not federating: %s (%s)", url, node, reason, held.id)
                            await link.close(DUPLICATE_CLOSE_CODE, reason)
                            continue
                        await self._federate(link, url, key)
                        backoff = BACKOFF_INITIAL_S
                        await self._serve_link(link)
                    finally:
                        await link.close(1001)
                if websocket.close_reason:
                    log.info("link to sibling %s closed: %s", url, websocket.close_reason)
            except (OSError, TimeoutError, WebSocketException, MessageError, ValidationError) as exc:
                log.debug("sibling %s: %s", url, exc)
            except (SignalingError, SignatureError) as exc:
                log.error("sibling %s: federation failed: %s", url, exc)
            delay = backoff * (0.5 + random.random())
            log.info("sibling %s: dialing again in %.2f s", url, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _hello(self, link: Connection, url: str) -> str:
        """Read the sibling's hello; note its node id and URL on ``link`` and return the node id."""
        async with asyncio.timeout(HELLO_TIMEOUT_S):
            raw = await link.receive()
        if raw is None:
            raise MessageError(f"{url} closed before its hello")
        hello = Hello.model_validate(decode_json(raw))
        link.node_id, link.url, link.peer_nonce = hello.node_id, url, hello.nonce
        return hello.node_id

    async def _federate(self, link: Connection, url: str, key: str) -> None:
        """Prove this node's key to the sibling and check its proof of ``key``, before any gossip is read.

        Raises ``SignalingError`` when the sibling refuses, ``SignatureError`` when it does not prove
        ``key``, ``MessageError`` or ``TimeoutError`` when it answers nothing useful.
        """
        nonce = secrets.token_hex(16)
        claim = federate_claim(self.node_id, self.key, str(link.node_id), link.peer_nonce)
        proof = self.identity.sign_body(FEDERATE_CONTEXT, claim)
        link.send(
            Federate(
                type="federate",
                node_id=self.node_id,
                url=self.own_url,
                key=self.key,
                nonce=nonce,
                proof=proof,
            )
        )
        async with asyncio.timeout(HELLO_TIMEOUT_S):
            raw = await link.receive()
        if raw is None:
            raise MessageError(f"{url} closed before answering federate")
        data = decode_json(raw)
        if data.get("type") == "error":
            error = Error.model_validate(data)
            raise SignalingError(f"{url} refused federation: {error.code}: {error.message}", code=error.code)
        answer = Federated.model_validate(data)
        if answer.key != key or answer.node_id != link.node_id:
            raise SignatureError(
                f"{url} answered with node key {answer.key[:12]}… ({answer.node_id}); --sibling names {key[:12]}…"
            )
        verify(
            key,
            signing_bytes(FEDERATE_CONTEXT, federate_claim(answer.node_id, key, self.node_id, nonce)),
            answer.proof,
        )
