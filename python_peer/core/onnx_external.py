"""Which external-data files an ONNX model refers to, read from its protobuf bytes with the stdlib alone.

A shard's ``.onnx`` may keep its weights in another file (``TensorProto.external_data``: ``location``,
``offset``, ``length``). onnxruntime opens whatever file a location names, so before a session is created
a peer checks that every location is a file the manifest lists and hashes: a shard cannot pull in an
unlisted, unverified file. The peer does not install ``onnx`` (a Raspberry Pi runs onnxruntime alone) and
the browser runs this core under Pyodide, so this module walks the few ONNX messages that can hold a
tensor by their field numbers (onnx.proto3, stable since IR version 3).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ManifestError

# Field numbers from onnx/onnx.proto3 of the messages that can hold a tensor, directly or nested.
_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto.initialization, .algorithm
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NODE = 7
_NODE_ATTRIBUTE = 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2
_LOCATION_EXTERNAL = 1
_MAX_DEPTH = 64  # subgraphs nest (If/Loop bodies); a hostile file must not exhaust the stack


@dataclass(frozen=True)
class ExternalTensor:
    """One tensor whose bytes live outside the ``.onnx``: where, at which offset, how many bytes."""

    name: str
    location: str
    offset: int
    length: int | None


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ManifestError("the ONNX file ends inside a number: truncated or not an ONNX model")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ManifestError("the ONNX file holds a malformed number: not an ONNX model")


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of one message: an int, or the bytes of a length-delimited field."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ManifestError("the ONNX file ends inside a field: truncated or not an ONNX model")
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(data):
                raise ManifestError("the ONNX file ends inside a field: truncated or not an ONNX model")
        else:
            raise ManifestError(f"the ONNX file uses protobuf wire type {wire}: not an ONNX model")


def _messages(data: memoryview, numbers: tuple[int, ...]) -> Iterator[memoryview]:
    for number, wire, value in _fields(data):
        if number in numbers and wire == 2 and isinstance(value, memoryview):
            yield value


def _tensor(data: memoryview) -> ExternalTensor | None:
    name, location, external = "", None, False
    offset, length = 0, None
    for number, wire, value in _fields(data):
        if number == _TENSOR_NAME and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "replace")
        elif number == _TENSOR_DATA_LOCATION and wire == 0:
            external = value == _LOCATION_EXTERNAL
        elif number == _TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            key = entry = ""
            for n, _w, v in _fields(value):
                if isinstance(v, memoryview) and n in (_ENTRY_KEY, _ENTRY_VALUE):
                    text = bytes(v).decode("utf-8", "replace")
                    key, entry = (text, entry) if n == _ENTRY_KEY else (key, text)
            if key == "location":
                location = entry
            elif key in ("offset", "length"):
                if not entry.isdigit():
                    raise ManifestError(
                        f"tensor {name or '?'}: external-data {key} {entry!r} is not a number"
                    )
                offset, length = (int(entry), length) if key == "offset" else (offset, int(entry))
    if not external:
        return None
    if location is None:
        raise ManifestError(f"tensor {name or '?'} is stored externally but names no location")
    return ExternalTensor(name, location, offset, length)


def _graph(data: memoryview, depth: int) -> Iterator[ExternalTensor]:
    if depth > _MAX_DEPTH:
        raise ManifestError(f"the ONNX file nests graphs deeper than {_MAX_DEPTH}: refused")
    for number, _wire, value in _fields(data):
        if not isinstance(value, memoryview):
            continue
        if number == _GRAPH_INITIALIZER:
            found = _tensor(value)
            if found is not None:
                yield found
        elif number == _GRAPH_SPARSE_INITIALIZER:
            yield from _sparse(value)
        elif number == _GRAPH_NODE:
            yield from _node(value, depth)


def _sparse(data: memoryview) -> Iterator[ExternalTensor]:
    for value in _messages(data, (_SPARSE_VALUES, _SPARSE_INDICES)):
        found = _tensor(value)
        if found is not None:
            yield found


def _node(data: memoryview, depth: int) -> Iterator[ExternalTensor]:
    for attribute in _messages(data, (_NODE_ATTRIBUTE,)):
        for number, _wire, value in _fields(attribute):
            if not isinstance(value, memoryview):
                continue
            if number in (_ATTR_TENSOR, _ATTR_TENSORS):
                found = _tensor(value)
                if found is not None:
                    yield found
            elif number in (_ATTR_GRAPH, _ATTR_GRAPHS):
                yield from _graph(value, depth + 1)
            elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
                yield from _sparse(value)


def external_tensors(model: bytes | bytearray | memoryview) -> list[ExternalTensor]:
    """Every tensor of the serialized ONNX ``model`` whose data is external, in file order."""
    data = memoryview(model)
    found: list[ExternalTensor] = []
    for number, _wire, value in _fields(data):
        if not isinstance(value, memoryview):
            continue
        if number == _MODEL_GRAPH:
            found += _graph(value, 0)
        elif number == _MODEL_FUNCTIONS:
            for node in _messages(value, (_FUNCTION_NODE,)):
                found += _node(node, 0)
        elif number == _MODEL_TRAINING_INFO:
            for graph in _messages(value, _TRAINING_GRAPHS):
                found += _graph(graph, 0)
    return found


def check_external_data(model: bytes | bytearray | memoryview, shard: str, listed: dict[str, int]) -> None:
    """Refuse a shard whose ``.onnx`` refers to a file not in ``listed`` (name -> size) or past its end."""
    for tensor in external_tensors(model):
        if tensor.location not in listed:
            raise ManifestError(
                f"shard {shard}: tensor {tensor.name} is stored in {tensor.location!r}, which the manifest "
                "does not list for this shard: refused (every file a shard reads must be listed and hashed)"
            )
        end = tensor.offset + (tensor.length or 0)
        if end > listed[tensor.location]:
            raise ManifestError(
                f"shard {shard}: tensor {tensor.name} reads bytes {tensor.offset}-{end} of "
                f"{tensor.location}, which holds {listed[tensor.location]}: refused"
            )
