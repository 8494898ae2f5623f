"""The pure-Python core of AI4All: protocol and ledger rules, standard library only.

This package must import nothing outside the standard library: the browser node runs it under
Pyodide. Files:

- ``errors.py``   the exception hierarchy shared by everything in the core.
- ``spans.py``    block spans ``[start, end)``: parsing, validation, covering a model's layers.
- ``manifest.py`` the shard manifest: typed, validated view of ``manifest.json``.
"""
