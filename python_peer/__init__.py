"""The native AI4All peer: runs ONNX shards with onnxruntime, never torch.

- ``core/``             stdlib-only rules shared with the browser and the signaling node: spans, manifest,
                        wire format, canonical JSON and announcements, ledger, ICE settings, static files
                        (run under Pyodide there).
- ``errors.py``         the peer's exception hierarchy (``core/errors.py`` draws every package's tree).
- ``runner.py``         one shard in one onnxruntime session, with per-session KV caches (batched decode too).
- ``chain.py``          a local chain of runners: embed -> blocks ... -> head (the reference).
- ``tokenizer.py``      tokenizer.json and the chat template, without transformers.
- ``generate.py``       sampling and the generation loops (greedy, temperature, top-p, stop strings).
- ``tensors.py``        numpy <-> wire tensors.
- ``identity.py``       the node's persistent Ed25519 identity.
- ``signal_client.py``  the connection to signaling nodes: announce, lookup, signals, fail-over.
- ``registry_client.py``  the registry seen from a peer: records registered with each announcement,
                        ``manifests`` and model names looked up, every record verified.
- ``transport.py``      ``LinkManager`` and ``TransportConfig``: making WebRTC links (aiortc) through signaling.
- ``link.py``           one link: chunked frames with backpressure, PING answered.
- ``ice.py``            aiortc and aioice configured for ICE: STUN/TURN servers, gathering on loopback.
- ``hop.py``            the seam of one hop: ``FrameHandler`` (answers frames for a span), ``HopClient``
                        (calls one), ``LocalHop`` (in-process), ``FrameLink``/``LinkConnector``.
- ``rpc.py``            request/response over links, with liveness probes (the remote ``HopClient``).
- ``server.py``         serving a span: sessions, KV memory budget, idle eviction.
- ``batching.py``       decode steps of a span's sessions gathered into one batched onnxruntime call;
                        a client's heads likewise.
- ``span_gate.py``      the peer's links -> its span servers: pause, swap to a new span without cutting sessions.
- ``relay.py``          push routing, serving side: a step's output pushed on to the route's next peer over a
                        kept link, the client answered on its own link (``PushRelay``, a ``hop.LinkHandler``).
- ``model_router.py``   a peer serving several models: each session to its model's span gate.
- ``routing.py``        choosing the cheapest route over peers; bans after failures.
- ``block_selection.py`` which span a peer serves when not told (the least-served run that fits its memory
                        budget), one budget shared by several models, and the check that a span fits.
- ``mesh_client.py``    the mesh client: routes, links, holds, the embedding and the heads kept local.
- ``mesh_session.py``   one generation along a route: steps, fail-over and replay, spot checks and receipts at close.
- ``push_client.py``    push routing, client side: one step pushed peer to peer along a run of hops, every
                        hop's signed answer awaited on its own link, push trouble resent directly.
- ``spot_check.py``     verifying answers: signatures checked on every hop, spot checks replayed to other
                        peers, disagreements settled by a third, evidence written (docs/trust.md).
- ``link_ledger.py``    the ledger exchange, one object per side: ``ClientExchange`` (a hold and a push
                        before OPEN, countersign, gossip cadence), ``ServerExchange`` (OPEN admitted on a
                        hold, receipts once, gossip answers), and
                        ``SignalingExchange`` (ledger gossip through signaling).
- ``node.py``           a mesh node (identity + ledger + signaling + links), a serving ``Peer`` (owning its
                        ``SpanGate`` from construction), a client.
- ``heap.py``           freed heap given back to the OS (glibc ``malloc_trim``), every few seconds in a node;
                        glibc's mmap threshold fixed and its arenas capped.
- ``memory_probe.py``   where a process's memory goes (``tracemalloc``, heap, objects): benchmarks only, opt-in.
- ``ledger_store.py``   the ledger in SQLite (WAL): append, merge, heads, balances, payment checks.
- ``ledger_service.py`` a node's ledger at work: entries pushed, receipts signed and recorded, gossip sessions.
- ``ledger_cli.py``     ``ai4all ledger balance|show``.
- ``publish_cli.py``    ``ai4all publish DIR``: sign an export's manifest and files as its publisher.
- ``seeding.py``       answering the chunk protocol (``core/chunks.py``) for the verified files a node holds,
                        within an upload rate and bounds on requests in flight.
- ``download.py``      a signed manifest's files fetched from seeders in parallel, each chunk checked before
                        it is written, liars banned, resumable from a record re-verified on start.
- ``http_seed.py``     a signaling node's ``--model-dir`` over HTTP as one more chunk source for the downloader.
- ``model_fetch.py``   a model NAME turned into ``<data dir>/models/NAME``: the manifest from its seeders,
                        checked and trusted, the span chosen, its files and the client's downloaded.
- ``models_cli.py``    ``ai4all models --signal URL``: the models a node's registry knows, by publisher.
- ``model_trust.py``    the check ``peer`` and ``chat`` make before using a model directory: signed by a
                        trusted publisher, or an unsigned export they were told to use.
- ``benchmark.py``      this machine's measured block-tokens/s for a span, saved in the data dir, and the
                        figure a peer announces (a saved one that matches, else measured at start).
- ``status.py``         a running peer's status on a Unix socket in its data dir, and the caller's side.
- ``status_cli.py``, ``benchmark_cli.py``, ``calibrate_cli.py``  ``ai4all status``, ``benchmark`` and
                        ``calibrate``, the operator's commands (``docs/operating.md``).
- ``api/``              the OpenAI-compatible API of a peer (types, translation, service, app, pages).
- ``chat.py``           one chat reply, through the mesh or local shards (``ChatOptions``).
- ``serving.py``        a serving peer as a process, with its API (``PeerOptions``).
- ``cli.py``            the ``ai4all`` command; ``chat_cli.py``, ``peer_cli.py``, ``ledger_cli.py`` and ``up.py``
                        add ``chat``, ``peer``, ``ledger`` and ``up``. They only parse flags into options.
"""
