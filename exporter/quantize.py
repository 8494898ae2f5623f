"""Weight variants of an exported fp32 shard: fp16, and weight-only 8-bit and 4-bit MatMulNBits.

Inputs and outputs stay float32 in every variant, so any runner chains any mix of variants. On the
default model weight-only MatMulNBits with ``accuracy_level=4`` keeps quality (perplexity 12.96 vs 12.95
for 8-bit) where dynamic int8 quantization does not (17-25); without ``accuracy_level=4`` onnxruntime
has no fast 8-bit kernel. Gather (the embedding) stays fp32: quantizing it needs opset 21.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import ExportFailedError

log = logging.getLogger(__name__)

BLOCK_SIZE = 32
ACCURACY_LEVEL = 4  # int8 activations in MatMulNBits: the fast path on CPU
_BITS = {"q8": 8, "q4": 4}


def convert(src: Path, dst: Path, dtype: str) -> None:
    """Write the ``dtype`` variant of the fp32 shard ``src`` to ``dst``."""
    import onnx

    try:
        model = onnx.load(str(src))
        if dtype == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
            onnx.save(converted, str(dst))
        elif dtype in _BITS:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            # The quantizer logs every node at INFO through its own handler; keep our progress readable.
            logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)

            if not any(node.op_type == "MatMul" for node in model.graph.node):
                onnx.save(model, str(dst))  # nothing to quantize (the embed shard): keep fp32
                return
            quantizer = MatMulNBitsQuantizer(
                model,
                bits=_BITS[dtype],
                block_size=BLOCK_SIZE,
                is_symmetric=True,
                accuracy_level=ACCURACY_LEVEL,
            )
            quantizer.process()
            quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
        else:
            raise ExportFailedError(f"no conversion to {dtype!r}; choose fp16, q8 or q4")
    except ExportFailedError:
        raise
    except Exception as exc:
        raise ExportFailedError(f"converting {src.name} to {dtype} failed: {exc}") from exc
