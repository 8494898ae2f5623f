"""What an ``.onnx`` file declares, read strictly from its protobuf bytes with the stdlib alone.

Admission (``admission.py``) decides on a shard from this summary before onnxruntime sees the file: its
IR version, the operator sets it imports, every node's operator (domain and type, nested graphs
included), and its graph's inputs and outputs with their element types and shapes. The walk reuses the
protobuf primitives of ``onnx_external.py`` (field numbers from onnx/onnx.proto3). It is strict where a
lenient reader would be fooled: the top-level message must be a ``ModelProto`` (known field numbers with
their wire types, an IR version, exactly one graph), so a pickle, a zip or a text file named ``.onnx``
is refused here, not handed to a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import AdmissionError
from .onnx_external import _MAX_DEPTH, _fields, _messages

# ModelProto: field number -> protobuf wire type (0 varint, 2 length-delimited).
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_IR_VERSION, _OPSET_IMPORT, _GRAPH, _TRAINING_INFO, _FUNCTIONS = 1, 8, 7, 20, 25
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT = 1, 5, 11, 12
_NODE_OP_TYPE, _NODE_ATTRIBUTE, _NODE_DOMAIN = 4, 5, 7
_ATTR_GRAPH, _ATTR_GRAPHS = 6, 11
_TENSOR_NAME = 8
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_ELEM_TYPE, _TENSOR_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2

# TensorProto.DataType numbers of the element types a shard's inputs and outputs may have.
ELEM_TYPES = {1: "float32", 7: "int64", 10: "float16"}


@dataclass(frozen=True)
class GraphValue:
    """One graph input or output: its name, element type (``None`` if not a tensor we know) and shape."""

    name: str
    dtype: str | None
    shape: tuple[int | str, ...] | None


@dataclass(frozen=True)
class OnnxSummary:
    """What admission needs of one model: versions, operators, graph inputs and outputs."""

    ir_version: int
    opsets: tuple[tuple[str, int], ...]  # (domain, version); the default domain is ""
    operators: frozenset[tuple[str, str]]  # (domain, op type) of every node, nested graphs included
    inputs: tuple[GraphValue, ...]
    outputs: tuple[GraphValue, ...]
    initializers: frozenset[str]
    has_functions: bool
    has_training_info: bool
    has_subgraphs: bool


def _text(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        raise AdmissionError("onnx_only", "a string field of the ONNX file holds a number: not an ONNX model")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise AdmissionError(
            "onnx_only", "a string field of the ONNX file is not UTF-8: not an ONNX model"
        ) from None


def _strict_fields(data: memoryview) -> list[tuple[int, int, int | memoryview]]:
    """The fields of a message, with truncation and unknown wire types translated into admission errors."""
    from .errors import ManifestError

    try:
        return list(_fields(data))
    except AdmissionError:
        raise
    except ManifestError as exc:
        raise AdmissionError("onnx_only", str(exc)) from None


def _value(data: memoryview) -> GraphValue:
    name, dtype, shape = "", None, None
    for number, _wire, value in _strict_fields(data):
        if number == _VALUE_NAME:
            name = _text(value)
        elif number == _VALUE_TYPE and isinstance(value, memoryview):
            for t_number, _w, tensor in _strict_fields(value):
                if t_number != _TYPE_TENSOR or not isinstance(tensor, memoryview):
                    continue
                for f_number, _w2, item in _strict_fields(tensor):
                    if f_number == _TENSOR_ELEM_TYPE and isinstance(item, int):
                        dtype = ELEM_TYPES.get(item, f"onnx type {item}")
                    elif f_number == _TENSOR_SHAPE and isinstance(item, memoryview):
                        shape = tuple(_dim(dim) for dim in _messages(item, (_SHAPE_DIM,)))
    return GraphValue(name, dtype, shape)


def _dim(data: memoryview) -> int | str:
    for number, _wire, value in _strict_fields(data):
        if number == _DIM_VALUE and isinstance(value, int):
            return value
        if number == _DIM_PARAM:
            return _text(value)
    return "?"


class _Walk:
    def __init__(self) -> None:
        self.operators: set[tuple[str, str]] = set()
        self.subgraphs = False

    def graph(self, data: memoryview, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise AdmissionError("onnx_only", f"the ONNX file nests graphs deeper than {_MAX_DEPTH}")
        for number, _wire, value in _strict_fields(data):
            if number == _GRAPH_NODE and isinstance(value, memoryview):
                self.node(value, depth)

    def node(self, data: memoryview, depth: int) -> None:
        op_type, domain = "", ""
        for number, _wire, value in _strict_fields(data):
            if number == _NODE_OP_TYPE:
                op_type = _text(value)
            elif number == _NODE_DOMAIN:
                domain = _text(value)
            elif number == _NODE_ATTRIBUTE and isinstance(value, memoryview):
                for a_number, _w, item in _strict_fields(value):
                    if a_number in (_ATTR_GRAPH, _ATTR_GRAPHS) and isinstance(item, memoryview):
                        self.subgraphs = True
                        self.graph(item, depth + 1)
        self.operators.add((domain, op_type))


def summarize(model: bytes | bytearray | memoryview) -> OnnxSummary:
    """The summary of a serialized ``ModelProto``; anything else is refused under rule ``onnx_only``."""
    data = memoryview(model)
    if len(data) == 0:
        raise AdmissionError("onnx_only", "the file is empty: not an ONNX model")
    ir_version: int | None = None
    graphs: list[memoryview] = []
    opsets: list[tuple[str, int]] = []
    functions = training = False
    for number, wire, value in _strict_fields(data):
        expected = _MODEL_FIELDS.get(number)
        if expected is None or expected != wire:
            raise AdmissionError(
                "onnx_only",
                f"the file holds protobuf field {number} (wire type {wire}), which an ONNX ModelProto "
                "does not have: not an ONNX model (a pickle, an archive or another format?)",
            )
        if number == _IR_VERSION and isinstance(value, int):
            ir_version = value
        elif number == _GRAPH and isinstance(value, memoryview):
            graphs.append(value)
        elif number == _OPSET_IMPORT and isinstance(value, memoryview):
            domain, version = "", 0
            for o_number, _w, item in _strict_fields(value):
                if o_number == _OPSET_DOMAIN:
                    domain = _text(item)
                elif o_number == _OPSET_VERSION and isinstance(item, int):
                    version = item
            opsets.append((domain, version))
        elif number == _FUNCTIONS:
            functions = True
        elif number == _TRAINING_INFO:
            training = True
    if ir_version is None:
        raise AdmissionError("onnx_only", "the file names no ONNX IR version: not an ONNX model")
    if len(graphs) != 1:
        raise AdmissionError("onnx_only", f"the file holds {len(graphs)} graphs, not one: not an ONNX model")
    walk = _Walk()
    walk.graph(graphs[0], 0)
    inputs, outputs, initializers = [], [], set()
    for number, _wire, value in _strict_fields(graphs[0]):
        if not isinstance(value, memoryview):
            continue
        if number == _GRAPH_INPUT:
            inputs.append(_value(value))
        elif number == _GRAPH_OUTPUT:
            outputs.append(_value(value))
        elif number == _GRAPH_INITIALIZER:
            for t_number, _w, item in _strict_fields(value):
                if t_number == _TENSOR_NAME:
                    initializers.add(_text(item))
    return OnnxSummary(
        ir_version=ir_version,
        opsets=tuple(opsets),
        operators=frozenset(walk.operators),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        initializers=frozenset(initializers),
        has_functions=functions,
        has_training_info=training,
        has_subgraphs=walk.subgraphs,
    )
