"""Benchmarks, run by hand from the repository root (``python -m bench.<name>``); never by the tests.

- ``bench_export.py``  the default model as chained ONNX shards vs one whole-model ONNX graph exported by
                       optimum vs PyTorch: decode tokens/s and 128-token prefill side by side in one run,
                       and shard sizes and measured quality per dtype (fp32, fp16, q8, q4).
"""
