"""The AI4All signaling node: a rendezvous for peers that federates with other signaling nodes.

The protocol is described in ``docs/signaling.md``. Files:

- ``messages.py``   every message as a strict pydantic model; the one parser, turning bad input into
                    ``MessageError`` with a wire error code.
- ``directory.py``  the soft-state table of signed announcements: newest ``seq`` wins, expiry,
                    withdrawal, lookup by model and block range; bounded.
- ``ratelimit.py``  token buckets per connection, and a bounded LRU of them per peer id.
- ``outbox.py``     what a connection still has to send: a bounded FIFO (replies, signals) and the
                    newest state per peer (gossip, ``gone``), coalesced so a burst loses nothing current.
- ``connection.py`` one websocket (incoming or dialed) behind one interface, with its role, state,
                    bound peer id and outbox drained by its own writer task.
- ``federation.py`` sibling links, one per sibling node: the authenticated handshake (node keys,
                    ``federate``/``federated`` proofs), dialing with backoff, the rule that picks
                    between two links to one node, routes learned from gossip, broadcast.
- ``record_table.py`` the registry's table of publisher-signed records: highest version per (publisher,
                    model), soft state with expiry, bounded per publisher, per model and in all.
- ``registry.py``   the registry's messages: ``register`` from serving peers, ``manifests`` lookups,
                    ``record`` gossip between siblings, the node's own ``--model-dir`` records.
- ``node.py``       ``SignalingNode`` and ``NodeConfig``: what the node does with each message.
- ``app.py``        the FastAPI app (websocket at ``/``, ``/healthz``, ``/v1/directory``, the browser
                    node's pages), ``serve()``, which runs it under uvicorn until SIGINT or SIGTERM, and
                    ``run_node(SignalOptions)``.
- ``web.py``        the browser node served by every node: the contribute page at ``/``, ``/chat``,
                    ``/embed.js``, the modules, the browser dependencies, the ledger's Python core, the
                    model files of ``--model-dir`` (admitted first, with their signed manifest) and
                    ``/v1/config`` (``docs/browser.md``).
- ``errors.py``     what only a signaling node raises (``SiteError``); the protocol's errors are in
                    ``python_peer/core/errors.py``.
- ``cli.py``        the ``ai4all signal`` subcommand: its flags into ``app.SignalOptions``.

A signaling node imports from ``python_peer`` only the stdlib core (signed bodies and canonical JSON in
``core/canonical.py``, ICE settings in ``core/ice.py``, static files in ``core/static_files.py``, the
ledger rules) and the keys of ``python_peer/identity.py`` (``tests/test_layering.py`` checks it); the
peer side is ``python_peer/signal_client.py``.
"""
