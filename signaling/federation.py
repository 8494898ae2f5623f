"""Federation: websockets to sibling signaling nodes, gossip of announcements, relay of signals.

A node dials each configured sibling and redials with exponential backoff when the link drops; a link
works both ways whoever dialed it. When two nodes list each other both dial, so each keeps **one live
link per sibling node id**, by a rule both ends compute alike: the link dialed by the node with the
smaller node id wins, and between two links dialed the same way the newer wins (it is the dialer's
current attempt; a dialer never opens a second link to a node it is linked to). The loser is closed
with a reason saying so, and a dialer whose node is already linked waits until that link drops.

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
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from python_peer.core.canonical import MAX_MESSAGE_BYTES
from python_peer.core.errors import MessageError, SignalingError

from .connection import Connection, WebsocketsTransport
from .messages import Federate, Gone, Gossip, Hello, decode_json
from .outbox import Rank
from .ratelimit import TokenBucket

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 10.0
MAX_INCOMING_LINKS = 32
DUPLICATE_CLOSE_CODE = 1000  # a normal closure: the pair goes on over the other link

ServeLink = Callable[[Connection], Awaitable[None]]


def state_rank(seq: int, message: Gossip | Gone) -> Rank:
    """Orders the states of one peer: by ``seq``, and a withdrawal after the announcement it withdraws."""
    return (seq, 1 if isinstance(message, Gone) else 0)


class Federation:
    """The sibling links of one node (one per sibling node), the routes learned over them, the dialers."""

    def __init__(
        self,
        node_id: str,
        own_url: str,
        sibling_urls: tuple[str, ...],
        serve_link: ServeLink,
        make_bucket: Callable[[], TokenBucket],
        max_entries: int = 10_000,
    ) -> None:
        self.node_id = node_id
        self.own_url = own_url
        self.sibling_urls = sibling_urls
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
        for url in self.sibling_urls:
            self._spawn(self._dial_forever(url), f"dial-{url}")

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

    async def _dial_forever(self, url: str) -> None:
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
                            log.error("sibling %s is this node itself; not dialing it", url)
                            return
                        held = self.links.get(node)
                        if held is not None and not self._better(link, held):
                            reason = self._duplicate(held)
                            log.info("sibling %s (%s): not federating: %s (%s)", url, node, reason, held.id)
                            await link.close(DUPLICATE_CLOSE_CODE, reason)
                            continue
                        link.send(Federate(type="federate", node_id=self.node_id, url=self.own_url))
                        backoff = BACKOFF_INITIAL_S
                        await self._serve_link(link)
                    finally:
                        await link.close(1001)
                if websocket.close_reason:
                    log.info("link to sibling %s closed: %s", url, websocket.close_reason)
            except (OSError, TimeoutError, WebSocketException, MessageError, ValidationError) as exc:
                log.debug("sibling %s: %s", url, exc)
            delay = backoff * (0.5 + random.random())
            log.info("sibling %s: dialing again in %.2f s", url, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _hello(self, link: Connection, url: str) -> str:
        """Read the sibling's hello; note its node id and URL on ``link`` and return the node id."""
        raw = await asyncio.wait_for(link.receive(), HELLO_TIMEOUT_S)
        if raw is None:
            raise MessageError(f"{url} closed before its hello")
        hello = Hello.model_validate(decode_json(raw))
        link.node_id, link.url = hello.node_id, url
        return hello.node_id
