"""Helpers the test modules share; fixtures live in the conftest files, tests never import each other.

- ``procs.py``: ``run_cli`` (the ``ai4all`` CLI in a fresh interpreter), ``Node`` and ``PeerProc``
  (``ai4all signal`` and ``ai4all peer`` subprocesses on free loopback ports), ``free_port``, ``ProcMesh``
  (a node and the peers a test module shares), ``budget_mesh`` (peers sized by ``--memory-budget``, no
  ``--span``), ``vm_rss``, ``ledger_balance`` (``ai4all ledger balance`` of a peer).
- ``waiting.py``: ``wait_for`` / ``wait_for_async``, polls for a condition with a deadline (never a
  fixed sleep for background work).
- ``loop_thread.py``: ``LoopThread``, one asyncio program in a thread beside Playwright's sync API.
- ``tiny_models.py``: tiny random Llama, Qwen2 and GPT-2 models with a real tokenizer, built offline.
- ``big_models.py``: seeded random Llamas of 1.45B and 7B shape (a small one, one with a 2 GB span) written layer by layer,
  and ``measure_export`` (an export's peak memory per step, in a child process).
- ``big_mesh.py``: the 1.5B demonstration's parts: exports in a child (one measured fp32 export shared by
  the slow tests), greedy decoding through the mesh and the in-process chain, timed.
- ``transport_peer.py``: the other process of ``test_transport.py``'s cross-process link
  (``python -m tests.support.transport_peer``).
- ``ledger.py``: ledger data: fixed identities, mined grants, co-signed receipts, hand-built logs,
  random histories (hypothesis) and the in-memory gossip ``Wire``.
- ``mesh.py``: short timeouts, prompts and greedy runs of the mesh tests, and ``reference_greedy`` (the
  same shards chained in this process: the tokens a mesh must give).
- ``static_server.py``: the browser tests' static server (``web/``, ``tests/vectors/``, mounts a test
  adds) with the cross-origin isolation headers, and its harness page.
- ``browser.py``: Chromium's launch settings (``playwright.config.py``), the ``Harness`` page, and
  ``script(name)``: the page scripts in ``tests/browser/js/``.
- ``browser_node.py``: a tab serving blocks (``browser_peer``) and native generations through the mesh.
- ``browser_client.py``: the browser's mesh client on a harness page, set up and generating.
- ``node_page.py``: a ``Visit`` to a signaling node's contribute page: Start, serving.
- ``fakes.py``: the fast tier's in-memory network (``MemoryNetwork``): links, rpc and a signal client
  without sockets or processes, with switches for the faults the tests inject.
- ``raw_signaling.py``: ``RawPeer``/``raw_peer``, a hand-driven signaling websocket speaking
  ``docs/signaling.md`` only, for the attacks a correct client never sends.
- ``registry_records.py``: registry records as docs/manifest.md writes them (``record_body``, ``signed``,
  ``record``), honest or forged, for the registry's tests.
- ``openai_errors.py``: ``assert_openai_error``, OpenAI's error shape as the API tests check it.
- ``holds.py``: the hold protocol spoken raw (``write_hold`` without the honest client's balance check,
  ``open_meta``, ``push_frame``, the golden hold entry).
- ``liar_seeder.py``: ``LiarSeeder``, a seeder that lies about every chunk (corrupted, truncated,
  another file's, mislabelled) in raw CHUNK frames, and ``LiarProc``, a serving peer process with it.
- ``liars.py``: lying span servers (``Liar``: skip, noise, zeros, stale, another session's output, late,
  on some steps only), a model with altered weights, evidence built by hand (``accuse``).
"""
