"""The signaling node: what it does with each message, on peer connections and on sibling links.

Every connection gets a ``hello`` with a fresh nonce, then its messages are decoded, rate limited,
validated and handled one at a time. Anything wrong with a message is answered with an ``error``
(code and message) on a peer connection, or dropped with a log line on a sibling link (where replying
could start an error ping-pong); either way only that message is lost, and other connections never
notice. A connection is closed only when it floods (``rate_limited`` over and over).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from python_peer.core.canonical import (
    ANNOUNCE_CONTEXT,
    AUTH_CONTEXT,
    BYE_CONTEXT,
    MAX_CLOCK_SKEW_MS,
    MAX_MESSAGE_BYTES,
    MAX_SEQ_AHEAD_MS,
    MAX_TTL_MS,
    PROTOCOL_VERSION,
    Announcement,
    SignalBody,
    bye_body,
    signing_bytes,
)
from python_peer.core.errors import SignalingError, SignatureError
from python_peer.core.model_summary import MAX_MODELS, ModelSummary, summarize
from python_peer.core.registry_record import RegistryRecord
from python_peer.identity import Identity, verify, verify_body

from .connection import FIRST_MESSAGE_TIMEOUT_S, IDLE_TIMEOUT_S, Connection, Role, Transport
from .directory import MAX_PEERS_PER_ADDRESS, Directory, Entry, PutResult, address_group
from .federation import Federation
from .messages import (
    MAX_HOPS,
    MAX_LOOKUP_RESULTS,
    MAX_RELAY_TTL,
    MAX_REPLY_BYTES,
    Ack,
    Announce,
    Announced,
    Bye,
    Delivered,
    Error,
    Federate,
    Gone,
    Gossip,
    Hello,
    Limits,
    Lookup,
    ManifestsQuery,
    ModelList,
    Models,
    PeerRequest,
    Peers,
    RecordGossip,
    Register,
    Relay,
    SiblingRequest,
    Signal,
    SignalFields,
    SignedAnnouncement,
    decode_json,
    parse_peer_message,
    parse_sibling_message,
    request_id,
)
from .ratelimit import KeyedBuckets, TokenBucket
from .record_table import RecordTable
from .registry import NodeRegistry

log = logging.getLogger(__name__)

MODELS_CACHE_MS = 1000  # a ``models`` answer is at most this old: the summary walks the whole directory


@dataclass(frozen=True)
class NodeConfig:
    """Everything a signaling node is configured with; the defaults suit a small public node."""

    host: str = "127.0.0.1"
    port: int = 8765
    siblings: tuple[str, ...] = ()  # URL#KEY: a sibling's URL and its node key
    url: str | None = None  # how peers and siblings reach this node; ws://host:port by default
    node_id: str | None = None  # a name; the start of the node key when not given
    identity: Identity | None = None  # the node key; a fresh one when not given
    accept: tuple[str, ...] = ()  # node keys of siblings that dial this node without being dialed
    max_connections: int = 1024
    max_entries: int = 10_000
    max_peers_per_address: int = MAX_PEERS_PER_ADDRESS  # directory entries announced from one IPv4 / IPv6 /64
    messages_per_s: float = 20.0  # per peer connection
    burst: int = 60
    sibling_messages_per_s: float = 2_000.0  # per sibling link: gossip of a whole network
    sibling_burst: int = 20_000
    announces_per_peer_s: float = 1.0  # per peer id, on every connection together
    announce_burst: int = 10
    signals_per_peer_s: float = 50.0
    signal_burst: int = 200
    max_limited_in_a_row: int = 100  # then the connection is closed (1008)
    sweep_interval_s: float = 0.5
    # time bounds of a peer connection (``connection.py``), advertised in ``hello.limits``
    first_message_timeout_s: float = FIRST_MESSAGE_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    # the registry (``registry.py``): publishers this node trusts (``--trust-publisher``; records of others
    # are kept too, fewer, and shown as untrusted) and the records of its own ``--model-dir``s
    trusted_publishers: frozenset[str] = frozenset()
    records: tuple[RegistryRecord, ...] = ()

    @property
    def public_url(self) -> str:
        return self.url or f"ws://{self.host}:{self.port}"

    @property
    def sibling_urls(self) -> tuple[str, ...]:
        """The siblings' URLs, without their keys."""
        return tuple(spec.partition("#")[0] for spec in self.siblings)


def check_bye_seq(seq: int, now: int) -> None:
    """Refuse a bye whose seq runs further ahead of ``now`` than any announcement's seq can (a peer
    announces with seq = max(previous + 1, now in ms), bounded by ``MAX_SEQ_AHEAD_MS`` past an issue time
    itself at most ``MAX_CLOCK_SKEW_MS`` ahead): it would make the peer's own later announcements stale."""
    if seq > now + MAX_SEQ_AHEAD_MS + MAX_CLOCK_SKEW_MS:
        raise SignalingError(
            f"bye seq {seq} runs {seq - now} ms ahead of this node's clock: say bye with seq = "
            "max(last announced seq + 1, now in ms)",
            code="bad_message",
        )


def now_ms() -> int:
    """Wall-clock milliseconds: announcements carry absolute times, so expiry needs the wall clock."""
    return time.time_ns() // 1_000_000


class SignalingNode:
    """A rendezvous for peers: directory, local connections, sibling links. Started and closed by the app."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.identity = config.identity or Identity.generate()
        self.node_id = config.node_id or self.identity.peer_id[:16]
        self.directory = Directory(config.max_entries, config.max_peers_per_address)
        self.local: dict[str, Connection] = {}  # peer id -> the connection it announced on
        self.connections: set[Connection] = set()
        self._announce_buckets = KeyedBuckets(
            config.announces_per_peer_s, config.announce_burst, config.max_entries
        )
        self._signal_buckets = KeyedBuckets(
            config.signals_per_peer_s, config.signal_burst, config.max_entries
        )
        self.federation = Federation(
            self.node_id,
            config.public_url,
            config.siblings,
            self.serve_link,
            lambda: TokenBucket(config.sibling_messages_per_s, config.sibling_burst),
            config.max_entries,
            identity=self.identity,
            accept=config.accept,
        )
        self.registry = NodeRegistry(
            RecordTable(config.trusted_publishers), self.directory, self.federation, config.records, now_ms
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._dumps: dict[str, asyncio.Task[None]] = {}
        self._models: tuple[int, list[ModelSummary], bool] | None = None  # (when, summaries, truncated)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start(self) -> None:
        self.federation.start()
        self._spawn(self._sweep_forever(), "sweep")
        log.info(
            "signaling node %s (node key %s) at %s",
            self.node_id,
            self.identity.peer_id,
            self.config.public_url,
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        await self.federation.close()
        for conn in list(self.connections):
            await conn.close(1001, "signaling node stopping")

    async def _sweep_forever(self) -> None:
        while True:
            self.registry.sweep()
            await asyncio.sleep(self.config.sweep_interval_s)
            for peer_id in self.directory.expire(now_ms()):
                self.federation.forget_route(peer_id)
                log.debug("announcement of %s expired", peer_id[:12])

    # --- connections ----------------------------------------------------------------------------------

    async def serve_incoming(self, transport: Transport, host: str | None = None) -> None:
        """Serve one accepted websocket until it closes: a peer, or a sibling once it sends ``federate``.

        ``host`` is the client's address: the peers announced over this websocket count toward its bound.
        """
        conn = Connection(
            transport,
            TokenBucket(self.config.messages_per_s, self.config.burst),
            max_states=self.config.max_entries,
        )
        conn.address = address_group(host)
        conn.first_message_timeout_s = self.config.first_message_timeout_s
        conn.idle_timeout_s = self.config.idle_timeout_s
        if len(self.connections) >= self.config.max_connections:
            conn.send(Error(id=None, code="table_full", message="this signaling node is full; try another"))
            await conn.close(1013, "signaling node full", flush=True)
            return
        self.connections.add(conn)
        conn.send(self._hello(conn))
        await self._serve(conn)

    async def serve_link(self, link: Connection) -> None:
        """Serve a sibling link this node dialed (called by ``Federation``)."""
        self.connections.add(link)
        if self._link_up(link):
            await self._serve(link)
        else:
            self._forget(link)

    async def _serve(self, conn: Connection) -> None:
        try:
            await self._receive_loop(conn)
        except Exception:
            log.exception("%r failed; closing it", conn)
            self._refuse(conn, None, "internal", "the signaling node failed on this connection; reconnect")
            await conn.close(1011, "internal error", flush=True)
        finally:
            self._forget(conn)
            await conn.close()

    def _forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if conn.peer_id is not None and self.local.get(conn.peer_id) is conn:
            del self.local[conn.peer_id]
        if conn.role is Role.SIBLING:
            self.federation.remove_link(conn)
        dump = self._dumps.pop(conn.id, None)
        if dump is not None:
            dump.cancel()

    def _hello(self, conn: Connection) -> Hello:
        limits = Limits(
            max_message_bytes=MAX_MESSAGE_BYTES,
            messages_per_s=self.config.messages_per_s,
            burst=self.config.burst,
            max_ttl_ms=MAX_TTL_MS,
            max_lookup_results=MAX_LOOKUP_RESULTS,
            first_message_ms=round(conn.first_message_timeout_s * 1000),
            idle_ms=round(conn.idle_timeout_s * 1000),
        )
        return Hello(
            protocol=PROTOCOL_VERSION,
            node_id=self.node_id,
            nonce=conn.nonce,
            siblings=self.federation.known_urls(),
            limits=limits,
        )

    async def _receive_loop(self, conn: Connection) -> None:
        while (raw := await conn.receive()) is not None:
            rid: int | None = None
            allowed = conn.bucket.take()  # charged before anything else, garbage included
            try:
                data = decode_json(raw)
                rid = request_id(data)
                if not allowed:
                    conn.limited_in_a_row += 1
                    if conn.limited_in_a_row > self.config.max_limited_in_a_row:
                        self._refuse(conn, rid, "rate_limited", "too many messages; closing the connection")
                        await conn.close(1008, "rate limit exceeded", flush=True)
                        return
                    raise SignalingError(
                        f"over {self.config.messages_per_s:g} messages/s on this connection",
                        code="rate_limited",
                    )
                conn.limited_in_a_row = 0
                if conn.role is Role.PEER:
                    self._on_peer_message(conn, parse_peer_message(data))
                else:
                    self._on_sibling_message(conn, parse_sibling_message(data))
                conn.took_message()  # its time bounds restart (connection.py)
            except SignalingError as exc:
                self._refuse(conn, rid, exc.code, str(exc))
            except SignatureError as exc:
                self._refuse(conn, rid, "bad_signature", str(exc))

    def _refuse(self, conn: Connection, rid: int | None, code: str, message: str) -> None:
        if conn.role is Role.PEER:
            conn.send(Error(id=rid, code=code, message=message))
        else:
            log.debug("%r: dropped a sibling message: %s: %s", conn, code, message)

    # --- peer messages --------------------------------------------------------------------------------

    def _on_peer_message(self, conn: Connection, msg: PeerRequest) -> None:
        if isinstance(msg, Register):
            conn.send(self.registry.on_register(conn, msg))
        elif isinstance(msg, ManifestsQuery):
            conn.send(self.registry.on_query(msg))
        elif isinstance(msg, Announce):
            self._on_announce(conn, msg)
        elif isinstance(msg, Lookup):
            self._on_lookup(conn, msg)
        elif isinstance(msg, Models):
            self._on_models(conn, msg)
        elif isinstance(msg, Signal):
            self._on_signal(conn, msg)
        elif isinstance(msg, Bye):
            self._on_bye(conn, msg)
        else:
            self._on_federate(conn, msg)

    def _on_announce(self, conn: Connection, msg: Announce) -> None:
        ann = Announcement.from_dict(msg.body)
        if conn.peer_id is not None and conn.peer_id != ann.peer_id:
            raise SignalingError(
                f"this connection speaks for peer {conn.peer_id[:12]}…; open another for a new one"
            )
        now = now_ms()
        ann.check_fresh(now)
        verify_body(ann.peer_id, ANNOUNCE_CONTEXT, msg.body, msg.sig)
        try:
            verify(
                ann.peer_id,
                signing_bytes(AUTH_CONTEXT, {"node_id": self.node_id, "nonce": conn.nonce}),
                msg.proof,
            )
        except SignatureError as exc:
            raise SignatureError(f"proof does not sign this connection's hello nonce: {exc}") from exc
        # Charged only once the signatures hold, so forgeries cannot spend a victim's tokens.
        if not self._announce_buckets.take(ann.peer_id):
            raise SignalingError("announcing too often; once a minute is plenty", code="rate_limited")
        result = self.directory.put(Entry(ann, msg.body, msg.sig, "local", conn.address), now)
        if result is PutResult.STALE:
            held = self.directory.get(ann.peer_id)
            newest = held.announcement.seq if held else "a withdrawn"
            raise SignalingError(f"seq {ann.seq} is not newer than seq {newest} held here", code="stale")
        conn.peer_id = ann.peer_id
        self.local[ann.peer_id] = conn
        self.federation.forget_route(ann.peer_id)
        if result is not PutResult.SAME:
            gossip = Gossip(type="gossip", hops=1, body=msg.body, sig=msg.sig)
            self.federation.broadcast(ann.peer_id, ann.seq, gossip)
        conn.send(Announced(id=msg.id, peer_id=ann.peer_id, seq=ann.seq, expires_ms=ann.expires_ms))

    def _on_lookup(self, conn: Connection, msg: Lookup) -> None:
        found, size, truncated = [], 0, False
        for entry in self.directory.lookup(msg.model, msg.start, msg.end, now_ms(), msg.limit):
            item = SignedAnnouncement(body=entry.body, sig=entry.sig)
            size += len(item.encode()) + 1
            if size > MAX_REPLY_BYTES:
                truncated = True
                break
            found.append(item)
        conn.send(Peers(id=msg.id, peers=found, truncated=truncated))

    def _on_models(self, conn: Connection, msg: Models) -> None:
        # The summary walks the whole directory: computed at most once per MODELS_CACHE_MS for everyone.
        now = now_ms()
        if self._models is None or now - self._models[0] >= MODELS_CACHE_MS:
            live = (e.announcement for e in self.directory if e.announcement.expires_ms > now)
            self._models = (now, *summarize(live, MAX_MODELS))
        _, summaries, truncated = self._models
        items = [s.to_dict() for s in summaries[: msg.limit]]
        conn.send(ModelList(id=msg.id, models=items, truncated=truncated or len(summaries) > msg.limit))

    def _on_signal(self, conn: Connection, msg: Signal) -> None:
        if conn.peer_id is None:
            raise SignalingError("announce before sending signals, so peers can answer", code="not_announced")
        if msg.from_ != conn.peer_id:
            raise SignalingError("from must be the peer id this connection announced")
        body = SignalBody(msg.from_, msg.to, msg.ts_ms, msg.payload)  # payload bound, canonical form
        body.check_fresh(now_ms())
        if not self._signal_buckets.take(conn.peer_id):
            raise SignalingError(
                f"over {self.config.signals_per_peer_s:g} signals/s from this peer", code="rate_limited"
            )
        if not self._deliver(msg, MAX_RELAY_TTL, came_from=None):
            raise SignalingError(
                f"peer {msg.to[:12]}… is not connected here nor known to a sibling", code="unknown_peer"
            )
        conn.send(Ack(id=msg.id))

    def _on_bye(self, conn: Connection, msg: Bye) -> None:
        peer_id = conn.peer_id
        if peer_id is not None:
            if msg.seq is not None and msg.sig is not None:
                # Signed: withdrawn here and, as a ``gone`` carrying the peer's signature, on siblings;
                # every announcement up to its seq (the peer's next seq when it said bye) goes.
                check_bye_seq(msg.seq, now_ms())
                verify_body(peer_id, BYE_CONTEXT, bye_body(peer_id, msg.seq), msg.sig)
                held = self.directory.get(peer_id)
                if held is not None and held.announcement.seq > msg.seq:
                    raise SignalingError(
                        f"bye seq {msg.seq} is older than the announcement held ({held.announcement.seq}): "
                        "say bye with seq = max(last announced seq + 1, now in ms)",
                        code="stale",
                    )
                self.directory.withdraw(peer_id, msg.seq)
                gone = Gone(type="gone", hops=1, peer_id=peer_id, seq=msg.seq, sig=msg.sig)
                self.federation.broadcast(peer_id, msg.seq, gone)
            else:
                # Unsigned (an older client): the connection proved the key, so it is withdrawn here;
                # siblings cannot check it and keep the announcement until it expires.
                held = self.directory.get(peer_id)
                if held is not None:
                    self.directory.withdraw(peer_id, held.announcement.seq)
            if self.local.get(peer_id) is conn:
                del self.local[peer_id]
            conn.peer_id = None
            log.debug("peer %s said bye", peer_id[:12])
        conn.send(Ack(id=msg.id))

    def _on_federate(self, conn: Connection, msg: Federate) -> None:
        if conn.peer_id is not None:
            raise SignalingError("a connection that announced a peer cannot become a sibling link")
        if msg.node_id == self.node_id:
            raise SignalingError("federate names this very node")
        try:
            answer = self.federation.accept(conn, msg)
        except (SignalingError, SignatureError) as exc:
            # Refused: say why, then close, so an unauthenticated connection learns nothing more.
            code = exc.code if isinstance(exc, SignalingError) else "bad_signature"
            self._refuse(conn, msg.id, code, str(exc))
            self._spawn(conn.close(1008, "federation refused", flush=True), f"refuse-{conn.id}")
            log.warning("%r: federate refused: %s", conn, exc)
            return
        conn.send(answer)
        conn.role, conn.node_id, conn.url = Role.SIBLING, msg.node_id, msg.url
        conn.bucket = TokenBucket(self.config.sibling_messages_per_s, self.config.sibling_burst)
        try:
            self._link_up(conn)  # when another link to that node is kept, this one is being closed
        except SignalingError:
            conn.role, conn.node_id, conn.url = Role.PEER, None, None
            raise

    # --- sibling messages -----------------------------------------------------------------------------

    def _link_up(self, link: Connection) -> bool:
        """Register a sibling link and send it the whole directory; ``False`` if another link is kept."""
        if not self.federation.add_link(link):
            return False
        self._dumps[link.id] = self._spawn(self._dump(link), f"dump-{link.id}")
        return True

    async def _dump(self, link: Connection) -> None:
        """Queue every entry on a new link, pausing now and then so a big directory does not stall the node.

        The link's outbox keeps one state per peer, so this fits, and a newer announcement broadcast
        meanwhile is never overwritten by the older copy taken here.
        """
        for i, entry in enumerate(self.directory):
            gossip = Gossip(type="gossip", hops=1, body=entry.body, sig=entry.sig)
            self.federation.offer(link, entry.peer_id, entry.announcement.seq, gossip)
            if i % 256 == 255:
                await asyncio.sleep(0)
        await asyncio.sleep(0)  # the federated answer goes out first
        self.registry.dump(link)  # and every registry record (``registry.py``)
        self._dumps.pop(link.id, None)

    def _on_sibling_message(self, link: Connection, msg: SiblingRequest) -> None:
        if isinstance(msg, RecordGossip):
            self.registry.on_gossip(link, msg)
        elif isinstance(msg, Gossip):
            self._on_gossip(link, msg)
        elif isinstance(msg, Gone):
            if msg.peer_id in self.local:
                return  # the peer is connected here and said no bye here: a sibling cannot unlist it
            held = self.directory.get(msg.peer_id)
            if held is None or held.announcement.seq > msg.seq:
                return  # no announcement held here up to its seq: changes nothing (checked before the signature)
            check_bye_seq(msg.seq, now_ms())  # else dropped, like a bad signature
            verify_body(msg.peer_id, BYE_CONTEXT, bye_body(msg.peer_id, msg.seq), msg.sig)  # else dropped
            if self.directory.withdraw(msg.peer_id, msg.seq):
                self.federation.forget_route(msg.peer_id)
                if msg.hops < MAX_HOPS:
                    forward = msg.model_copy(update={"hops": msg.hops + 1})
                    self.federation.broadcast(msg.peer_id, msg.seq, forward, skip=link.node_id)
        elif not self._deliver(msg, msg.ttl, came_from=link):
            log.debug("relay for %s dropped: no route", msg.to[:12])

    def _on_gossip(self, link: Connection, msg: Gossip) -> None:
        ann = Announcement.from_dict(msg.body)
        now = now_ms()
        ann.check_fresh(now)
        held = self.directory.get(ann.peer_id)
        if held is not None and held.announcement.seq >= ann.seq:
            return  # an echo: checked before the signature, which costs more
        verify_body(ann.peer_id, ANNOUNCE_CONTEXT, msg.body, msg.sig)
        if not self._announce_buckets.take(ann.peer_id):
            raise SignalingError(f"gossip of {ann.peer_id[:12]}… too often", code="rate_limited")
        result = self.directory.put(Entry(ann, msg.body, msg.sig, link.id), now)
        if result in (PutResult.NEW, PutResult.REPLACED):
            if ann.peer_id not in self.local:
                self.federation.learn_route(ann.peer_id, link)
            if msg.hops < MAX_HOPS:
                forward = Gossip(type="gossip", hops=msg.hops + 1, body=msg.body, sig=msg.sig)
                self.federation.broadcast(ann.peer_id, ann.seq, forward, skip=link.node_id)

    def _deliver(self, msg: SignalFields, ttl: int, came_from: Connection | None) -> bool:
        """Hand a signal to its target if connected here, else relay it toward the target's node."""
        fields = {"from": msg.from_, "to": msg.to, "ts_ms": msg.ts_ms, "payload": msg.payload, "sig": msg.sig}
        target = self.local.get(msg.to)
        if target is not None:
            return target.send(Delivered.model_validate(fields))
        link = self.federation.route(msg.to)
        if link is None or ttl <= 0 or (came_from is not None and link.node_id == came_from.node_id):
            return False
        return link.send(Relay.model_validate({"type": "relay", "ttl": ttl - 1, **fields}))

    # --- views for dashboards -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "node_id": self.node_id,
            "key": self.identity.peer_id,
            "url": self.config.public_url,
            "peers": len(self.directory),
            "records": len(self.registry.table),
            "local_peers": len(self.local),
            "connections": len(self.connections),
            "siblings": [
                {
                    "node_id": c.node_id,
                    "url": c.url,
                    "dialed": c.dialed,
                    "link": c.id,
                    "sent": c.sent,
                    "queued": len(c.outbox),
                    "dropped": c.outbox.dropped,
                }
                for c in self.federation.links.values()
            ],
        }

    def directory_view(self) -> dict[str, Any]:
        now = now_ms()
        entries = []
        for entry in self.directory:
            ann = entry.announcement
            entries.append(
                {
                    "peer_id": ann.peer_id,
                    "kind": ann.kind,
                    "seq": ann.seq,
                    "serves": [s.to_dict() for s in ann.serves],
                    "throughput_milli": ann.throughput_milli,
                    "kv_free_tokens": ann.kv_free_tokens,
                    "expires_in_ms": ann.expires_ms - now,
                    "connected_here": ann.peer_id in self.local,
                    "via": entry.source,
                }
            )
        return {"node_id": self.node_id, "count": len(entries), "entries": entries}
