"""The JSON the pages of a native node read and send: pydantic models of the live endpoints.

``NodeSnapshot`` (``/v1/node/events``), ``MeshSnapshot`` (``/v1/mesh``), ``Earnings``
(``/v1/node/earnings``), and ``SettingsRequest`` / ``SettingsView`` (``/v1/node/settings``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from python_peer.core.economics import UNITS_PER_CREDIT

from .control import MAX_BUDGET_MB


class SettingsRequest(BaseModel):
    """``POST /v1/node/settings``: any of the three; what is left out stays as it is."""

    model_config = ConfigDict(extra="forbid")

    serving: StrictBool | None = None
    memory_budget_mb: (
        Annotated[float, Field(gt=0, le=MAX_BUDGET_MB, allow_inf_nan=False, strict=True)] | None
    ) = None
    span: Annotated[str, Field(min_length=1, max_length=32)] | None = None


class SettingsView(BaseModel):
    serving: bool
    state: Literal["serving", "paused"]
    model: str
    span: str
    memory_budget_mb: float
    kv_free_tokens: int
    spans: list[str]  # the spans this peer may serve
    changed: list[str] = []


class KvRoom(BaseModel):
    budget_bytes: int
    reserved_bytes: int
    bytes_per_token: int
    free_tokens: int


class NodeState(BaseModel):
    peer_id: str
    state: Literal["serving", "paused", "client"]  # client: the API runs on a node that serves nothing
    model: str | None
    span: str | None
    blocks: int | None
    tokens_served: int
    open_sessions: int
    api_running: int
    kv: KvRoom | None
    uptime_s: float


class BalanceView(BaseModel):
    """In ledger units (1000 units = 1 credit)."""

    balance: int
    granted: int
    earned: int
    bonuses: int
    spent: int


class SpanView(BaseModel):
    model: str
    start: int
    end: int


class PeerView(BaseModel):
    peer_id: str
    kind: str
    serves: list[SpanView]
    throughput: float  # block-tokens per second, as the peer measured and announced it
    kv_free_tokens: int
    signaling: list[str]  # the signaling node it announced through
    is_self: bool


class ModelCoverage(BaseModel):
    model: str
    blocks: int
    covered_blocks: int
    servable: bool
    per_block: list[int]  # peers serving each block
    health: Literal["healthy", "fragile", "broken"]  # every block by 2+ peers / by 1+ / some by none


class SignalingNodeView(BaseModel):
    url: str
    node_id: str | None
    connected: bool  # this node's signaling connection is to it
    healthy: bool | None  # its /healthz answered; None: not asked yet
    peers: int | None
    siblings: list[str]


class MeshSnapshot(BaseModel):
    at: float
    signaling: list[SignalingNodeView]
    peers: list[PeerView]
    models: list[ModelCoverage]
    error: str | None = None


class NodeSnapshot(BaseModel):
    """One event of ``GET /v1/node/events``."""

    at: float
    node: NodeState
    balance: BalanceView | None
    balance_error: str | None = None
    mesh: MeshSnapshot


class EarningsPoint(BaseModel):
    t: float  # seconds since the Unix epoch
    earned: int  # cumulative units earned by then


class Earnings(BaseModel):
    peer_id: str
    units_per_credit: int = UNITS_PER_CREDIT
    since: float
    now: float
    earned: int  # the base rate for block-tokens served, as the points sum it
    bonuses: int  # rarity and uptime bonuses, not itemised over time
    points: list[EarningsPoint]
