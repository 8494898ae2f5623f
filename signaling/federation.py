"""Federation: websockets to sibling signaling nodes, gossip of announcements, relay of signals.

A node dials each configured sibling and redials with exponential backoff when the link drops; a link
works both ways whoever dialed it. Announcements travel as ``gossip`` (de-duplicated by the directory:
only an announcement newer than the one held goes further, and ``hops`` bounds the flood). The link an
announcement arrived over is the route to its peer, so a ``signal`` for a peer connected elsewhere is
sent there as ``relay``. No node is special: when one stops, its links close, its routes are dropped,
and peers re-announce on the nodes they fail over to.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from python_peer.core.canonical import MAX_MESSAGE_BYTES
from python_peer.core.errors import MessageError

from .connection import Connection, WebsocketsTransport
from .messages import Federate, Hello, Message, decode_json
from .ratelimit import TokenBucket

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 5.0
BACKOFF_INITIAL_S = 0.25
BACKOFF_MAX_S = 10.0
MAX_INCOMING_LINKS = 32

ServeLink = Callable[[Connection], Awaitable[None]]


class Federation:
    """The sibling links of one node, the routes learned over them, and the dialers that keep them up."""

    def __init__(
        self,
        node_id: str,
        own_url: str,
        sibling_urls: tuple[str, ...],
        serve_link: ServeLink,
        make_bucket: Callable[[], TokenBucket],
        max_routes: int = 10_000,
    ) -> None:
        self.node_id = node_id
        self.own_url = own_url
        self.sibling_urls = sibling_urls
        self._serve_link = serve_link
        self._make_bucket = make_bucket
        self._max_routes = max_routes
        self.links: dict[str, Connection] = {}
        self._routes: OrderedDict[str, str] = OrderedDict()  # peer id -> link id
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Start one dialer per configured sibling."""
        for url in self.sibling_urls:
            task = asyncio.get_running_loop().create_task(self._dial_forever(url), name=f"dial-{url}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

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
        """Register a sibling link; refuse past the bound on incoming links."""
        incoming = sum(1 for c in self.links.values() if not c.dialed)
        if not link.dialed and incoming >= MAX_INCOMING_LINKS:
            return False
        self.links[link.id] = link
        log.info("sibling link %s to %s (%s) is up", link.id, link.node_id, link.url or "incoming")
        return True

    def remove_link(self, link: Connection) -> None:
        if self.links.pop(link.id, None) is None:
            return
        dropped = [peer for peer, via in self._routes.items() if via == link.id]
        for peer in dropped:
            del self._routes[peer]
        log.info("sibling link %s to %s is down (%d routes dropped)", link.id, link.node_id, len(dropped))

    def learn_route(self, peer_id: str, link: Connection) -> None:
        """``peer_id`` is reached over ``link`` (its newest announcement came that way)."""
        self._routes[peer_id] = link.id
        self._routes.move_to_end(peer_id)
        while len(self._routes) > self._max_routes:
            self._routes.popitem(last=False)

    def forget_route(self, peer_id: str) -> None:
        self._routes.pop(peer_id, None)

    def route(self, peer_id: str) -> Connection | None:
        link_id = self._routes.get(peer_id)
        return self.links.get(link_id) if link_id is not None else None

    def broadcast(self, message: Message, *, skip: Connection | None = None) -> None:
        """Send to every sibling but ``skip`` (the link the message came from)."""
        text = message.encode()
        for link in list(self.links.values()):
            if link is not skip:
                link.send(text)

    def known_urls(self) -> list[str]:
        """Signaling URLs a peer may fail over to: configured siblings and those that dialed us."""
        urls = list(self.sibling_urls)
        urls += [c.url for c in self.links.values() if c.url and c.url not in urls]
        return urls[:16]

    # --- dialing --------------------------------------------------------------------------------------

    async def _dial_forever(self, url: str) -> None:
        """Keep a link to ``url`` up: dial, serve until it drops, back off, dial again."""
        backoff = BACKOFF_INITIAL_S
        while True:
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
                    link = Connection(WebsocketsTransport(websocket), self._make_bucket(), dialed=True)
                    try:
                        if not await self._handshake(link, url):
                            return
                        backoff = BACKOFF_INITIAL_S
                        await self._serve_link(link)
                    finally:
                        await link.close(1001)
            except (OSError, TimeoutError, WebSocketException, MessageError, ValidationError) as exc:
                log.debug("sibling %s: %s", url, exc)
            delay = backoff * (0.5 + random.random())
            log.info("sibling %s unreachable; redialing in %.2f s", url, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _handshake(self, link: Connection, url: str) -> bool:
        """Read the sibling's hello, send ``federate``; ``False`` when ``url`` is this very node."""
        raw = await asyncio.wait_for(link.receive(), HELLO_TIMEOUT_S)
        if raw is None:
            raise MessageError(f"{url} closed before its hello")
        hello = Hello.model_validate(decode_json(raw))
        if hello.node_id == self.node_id:
            log.error("sibling %s is this node itself; not dialing it", url)
            return False
        link.node_id, link.url = hello.node_id, url
        link.send(Federate(type="federate", node_id=self.node_id, url=self.own_url))
        return True
