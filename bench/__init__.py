"""Benchmarks, run by hand from the repository root (``python -m bench.<name>``); only the chaos run also
has a short version among the tests (``tests/test_chaos.py``).

- ``bench_export.py``  the default model as chained ONNX shards vs one whole-model ONNX graph exported by
                       optimum vs PyTorch: decode tokens/s and 128-token prefill side by side in one run,
                       and shard sizes and measured quality per dtype (fp32, fp16, q8, q4).
- ``bench_mesh.py``    the default model through 3 peers on loopback vs the same shards in one process vs
                       the whole model: time to first token and decode tokens/s; aggregate tokens/s with 1,
                       4 and 8 concurrent sessions; signaling relay latency and announcements per second.
                       Its parts: ``mesh_processes.py`` (the signaling nodes and peers it starts and
                       stops), ``mesh_contenders.py`` (mesh, local chain and whole model behind one
                       interface; single sessions), ``mesh_concurrency.py`` (concurrent sessions),
                       ``mesh_signaling.py`` (relay round trips, announcements), ``mesh_report.py``
                       (its tables).
- ``bench_big_model.py`` peak export memory vs model size and vs the largest span (1.45B and 7B-shaped
                       random Llamas), with the predicted peak of a whole 7B export.
- ``bench_big_mesh.py`` the 1.45B model served by peers sized by ``--memory-budget``: export peaks, q4/q8
                       size and agreement, each peer's resident memory vs its budget, decode tokens/s
                       through the mesh vs the in-process chain (parts in ``tests/support/big_mesh.py``).
- ``bench_browser.py`` one blocks span in Chromium (onnxruntime-web, WASM) vs native onnxruntime, per token.
- ``bench_ledger.py``  ledger entries verified and applied per second, balance computation, gossip
                       convergence of 10 nodes.
- ``chaos.py``         a chaos run: 3 signaling nodes and 6 peers under chat load (native clients and the
                       API) while a seeded schedule SIGKILLs and restarts them; requests served, wrong
                       replies, receipts on both sides, balances after quiescence, memory, recovery time.
                       Its parts: ``chaos_schedule.py`` (the seeded, bounded kill plan and its rules),
                       ``chaos_mesh.py`` (the processes, restartable, and their memory), ``chaos_load.py``
                       (native users and API workers, replies checked against the local chain),
                       ``chaos_user.py`` (a native user in its own process, driven by lines on its
                       stdin),
                       ``chaos_ledgers.py`` (receipts per side, convergence of the ledgers),
                       ``chaos_report.py`` (figures, goals, tables).
"""
