"""Constants of the session protocol between a client and a span server, shared by every implementation.

The native peer (``python_peer/server.py``, ``rpc.py``, ``ledger_service.py``) and the browser node
(``web/src/node/span_server.js``, ``web/src/client/rpc.js``, ``web/src/ledger/ledger.js``) both follow these
numbers; the browser's copies are generated from this module into ``web/src/protocol/constants.js`` by
``python -m python_peer.core.js_constants`` (a test fails when that file is stale).
"""

from __future__ import annotations

from .canonical import MAX_CLOCK_SKEW_MS, MAX_TTL_MS
from .wire import MAX_METADATA_BYTES

MAX_SESSIONS = 64  # open inference sessions a span server holds at once
MAX_PENDING_RECEIPTS = 1024  # receipts a server proposed and still waits to see countersigned
MAX_LENGTH_LIMIT = 32768  # the largest ``max_length`` an OPEN may ask for
MAX_BATCH = 64  # the most sequences an OPEN may ask for (``batch``)

PUSH_ENTRIES = 64  # own ledger entries a client pushes to a peer before opening sessions there
# The entries of one push (or of an OPEN's log) as canonical JSON, each counted with one byte more (a
# separator): a frame's metadata, less room for the rest of a push's or an OPEN's metadata.
PUSH_BYTES = MAX_METADATA_BYTES - 1024
CHANNEL_GOSSIP_BYTES = 60 * 1024  # a gossip message on a session link (its frame's metadata holds 64 KiB)
SIGNALING_GOSSIP_BYTES = 28 * 1024  # a gossip message through signaling (a signal payload holds 32 KiB)

WEBRTC_SIGNAL = "webrtc"  # signal payloads of this kind carry WebRTC descriptions (an offer or an answer)
LEDGER_SIGNAL = "ledger"  # signal payloads of this kind carry ledger gossip, not WebRTC descriptions
MAX_SDP_CHARS = 64 * 1024  # the longest session description an offer or an answer may carry

PROBE_EVERY_MS = 1_000  # while waiting for an answer, a client pings the peer this often
PROBE_TIMEOUT_MS = 3_000  # a ping unanswered this long is a miss
PROBE_MISSES = 2  # this many misses in a row mean the peer is gone
OPEN_TIMEOUT_MS = 10_000  # OPEN does no compute: a peer that leaves it unanswered this long is routed around

# Signaling's time bounds on a websocket, advertised in ``hello.limits`` (``first_message_ms``, ``idle_ms``)
# as the node applies them, so a client stays inside them: the first message the node takes must come
# this soon after the connection opens (clients announce or look up at once; a websocket that says
# nothing useful is closed), and a peer connection that sends none for this long is closed (a peer
# re-announces within its announcement's lifetime, at most MAX_TTL_MS; clients re-announce well within
# the advertised bound).
SIGNALING_FIRST_MESSAGE_MS = 10_000
SIGNALING_IDLE_MS = MAX_TTL_MS + MAX_CLOCK_SKEW_MS
