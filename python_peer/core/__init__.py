"""The pure-Python core of AI4All: protocol and ledger rules, standard library only.

This package must import nothing outside the standard library: the browser node runs it under
Pyodide (``tests/test_wire.py`` checks every import). Files:

- ``errors.py``    the exception hierarchy shared by everything in the core.
- ``spans.py``     block spans ``[start, end)``: parsing, validation, covering a model's layers.
- ``manifest.py``  the shard manifest: typed, validated view of ``manifest.json`` and the wire names.
- ``wire.py``      the binary frame format of data channels, chunking and reassembly.
- ``canonical.py`` canonical JSON for signatures, and the signed announcement and signal bodies.
- ``ledger.py``    ledger entries, co-signed receipts, fork proofs, validation with reasons, balances.
- ``economics.py`` the ledger's constants and prices, with the reasoning next to them.
- ``gossip.py``    anti-entropy messages between two ledgers, bounded and rate-limited.
- ``ledger_exchange.py``  the ledger requests on a session link (push, receipt, gossip) and their answers.
- ``memory_store.py``  the ledger store in memory (the browser's), same decisions as the SQLite one.
- ``browser_ledger.py``  what the browser calls under Pyodide: the store behind JSON calls.
"""
