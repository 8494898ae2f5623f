"""The OpenAI-compatible HTTP API of a native node: point any OpenAI client at ``http://HOST:PORT/v1``.

The prompt, the tokenizer and the logits stay on the node that runs the API; only hidden states go
through the mesh. Layered so that each part can be read and tested alone:

- ``types.py``      the wire types: pydantic request, response, chunk, error and status models, with the
                    bounds every request is checked against. Imports nothing of the mesh.
- ``errors.py``     the API's own errors (``ApiError`` and its subclasses), each with its HTTP status.
- ``translate.py``  the boundary between the mesh and OpenAI's shapes: messages -> prompt ids through
                    the chat template, request -> ``SamplingParams``, ``Generation`` -> response and
                    chunks, and every exception -> (HTTP status, OpenAI error body).
- ``service.py``    ``NodeService`` (the protocol the app needs) and ``MeshNodeService``, which holds a
                    mesh client per model, the tokenizers, the generation slots and the node's status.
- ``ledger.py``     ``ApiLedger``: the node's ledger as the API sees it (admission, ``TokenBalance``).
- ``control.py``    ``NodeControl``: pausing, the KV budget and the span, changed while the peer runs.
- ``pages.py``      the node's pages (chat, dashboard, settings): the router, templates, static files.
- ``page_types.py`` the JSON the pages read and send (snapshots, earnings, settings).
- ``node_view.py``  the node as the pages see it, cached, and the server-sent event stream.
- ``hosts.py``      ``is_loopback``: the host names that stay on this machine.
- ``app.py``        the thin FastAPI app: routes, the API key, a per-client token-bucket rate limit, a
                    body size limit, error handlers; and ``ApiServer`` to run it inside a peer's event loop.

The token balance (``GET /v1/tokens/balance``) and the 402 status come from the ledger: until a node has
one, ``MeshNodeService.balance()`` raises ``LedgerUnavailableError`` (503).
"""
