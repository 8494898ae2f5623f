"""The pure-Python core of AI4All: protocol and ledger rules, standard library only.

This package must import nothing outside the standard library: the browser node runs it under
Pyodide (``tests/test_layering.py`` checks every import). It is also all that the signaling node shares
with peers, besides ``python_peer/identity.py``. Files:

- ``errors.py``    the exception hierarchy of the core, and the drawing of every package's tree.
- ``spans.py``     block spans ``[start, end)``: parsing, validation, covering a model's layers.
- ``manifest.py``  the shard manifest: typed, validated view of ``manifest.json`` and the wire names.
- ``memory_budget.py``  per-block weight and KV bytes, what a span needs, the least-served run that fits a
                   budget (the browser's twin: ``web/src/node/span_choice.js``).
- ``onnx_external.py``  which external-data files an ``.onnx`` reads (a stdlib protobuf walk), checked
                   against the files the manifest lists before a session is created.
- ``onnx_summary.py``  what an ``.onnx`` declares (IR and opset versions, operators, graph inputs and
                   outputs), read strictly from its protobuf bytes.
- ``admission.py`` the admission rules of a shard (ONNX only, operator allow-lists per kind, versions,
                   declared inputs and outputs), and ``admit_model_dir``.
- ``publication.py``  signed manifests (``manifest.sig.json``): the body, its chunk hashes, the checks.
- ``registry_record.py``  the registry record (``manifest.record.json``): the small publisher-signed
                      summary of a signed manifest that signaling nodes gossip, and its checks.
- ``publisher_trust.py``  which publishers a node trusts, ``--trust-publisher``/``--allow-unsigned``,
                   and the check of a model directory against them.
- ``chunks.py``    the chunk protocol: model files asked of and answered by peers in CHUNK frames, its
                   refusals and bounds (docs/chunks.md).
- ``wire.py``      the binary frame format of data channels, chunking and reassembly.
- ``canonical.py`` canonical JSON for signatures, and the signed announcement and signal bodies.
- ``push_route.py`` the route a FORWARD carries for push routing, its metadata keys and its one check.
- ``model_summary.py``  which models the mesh serves and which blocks of each: signaling's bounded
                   ``models`` answer, built and parsed.
- ``protocol.py``  the session protocol's constants (sessions, receipts, push size, gossip budgets, probes).
- ``spot_policy.py``  the spot-check policy's numbers: check rate by passes, floor, tolerances by dtype.
- ``js_constants.py``  writes ``web/src/protocol/constants.js``, the browser's copy of those constants.
- ``ledger_fields.py``  what ledger records are built from: checked fields, canonical bytes, ``Rejection``.
- ``receipts.py``  co-signed receipts: the receipt, its two signatures, the checks before countersigning.
- ``answers.py``   signed answers: a peer's commitment to one FORWARD (input chain, output hash).
- ``evidence.py``  the ``evidence`` entry body: a settled disagreement between serving peers, and its check.
- ``entries.py``   the signed, hash-chained log entry and its bodies (grant, receipt, hold, fork proof,
                   evidence).
- ``holds.py``     holds: credits a client promises a peer for one session, and the check at OPEN.
- ``proof_of_work.py``  the starter grant's proof of work: checking and mining it.
- ``rules.py``     validators of one entry and of its link to the previous one, returning rejections.
- ``counting.py``  which entries and which receipts count, before any credit moves (``count``).
- ``balances.py``  balances as a pure function of the set of valid entries (``compute``).
- ``rarity.py``    the rarity bonus of one model's UTC day, kept up to date receipt by receipt.
- ``running.py``   ``compute``'s result kept up to date entry by entry as a store writes (``RunningReport``).
- ``sweep_journal.py`` the last steps of the balance sweep, undoable: late receipts swept in their place.
- ``reputation.py``  a peer's reputation (good, suspect, excluded) from the evidence against it.
- ``signature_claims.py``  signatures listed ahead of time, for a caller that verifies asynchronously.
- ``chain_store.py``  ``ChainStore``: what a ledger store keeps and decides, whatever holds its rows.
- ``economics.py`` the ledger's constants and prices, with the reasoning next to them; ``network_rules``.
- ``gossip.py``    anti-entropy messages between two ledgers, bounded and rate-limited.
- ``ledger_exchange.py``  the ledger requests on a session link (push, receipt, gossip) and their answers.
- ``memory_store.py``  the ledger store in memory (the browser's), same decisions as the SQLite one.
- ``browser_ledger.py``  what the browser calls under Pyodide: the store behind JSON calls.
- ``browser_signing.py``  signatures across the Pyodide boundary: claims for WebCrypto, two-step signing.
- ``browser_persistence.py``  the browser's IndexedDB copy: the journal of each write, and its replay.
- ``ice.py``       ICE settings (STUN/TURN servers, loopback only) and the ``--ice-*`` flags, defined once.
- ``static_files.py``  strict resolution of static file paths, and their MIME types.
- ``http_limits.py``  time bounds of every HTTP and websocket server (headers, bodies, keep-alive).
"""
