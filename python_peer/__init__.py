"""The native AI4All peer: runs ONNX shards with onnxruntime, never torch.

- ``core/``       stdlib-only protocol and ledger rules (also run in the browser under Pyodide).
- ``errors.py``   the peer's exception hierarchy.
- ``runner.py``   one shard in one onnxruntime session, with per-session KV caches.
- ``chain.py``    a local chain of runners: embed -> blocks ... -> head.
- ``tokenizer.py`` tokenizer.json and the chat template, without transformers.
- ``generate.py`` sampling and the generation loop (greedy, temperature, top-p, stop strings).
- ``cli.py``      the ``ai4all`` command and its subcommands.
"""
