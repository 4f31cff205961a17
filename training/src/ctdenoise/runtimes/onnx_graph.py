"""Check an ONNX inference graph before ONNX Runtime sees it: standard operators only, bounded size.

A model file carries its graph as bytes (see :mod:`ctdenoise.modelfile`). Before a session is
created the bytes must match the checksum in the validated metadata, and the graph is walked at
the protobuf level: every node must be a standard ONNX operator (default domain, no control flow
with subgraphs, no model-local functions), no tensor may point at external data files, and the
size, node count, inputs and outputs are bounded. The walk is hand-written (a few dozen lines of
protobuf wire format) rather than done with the ``onnx`` package, which would add a large
dependency to every CPU install only to list operator names.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from ctdenoise.errors import CTDenoiseError

MAX_GRAPH_BYTES = 256 << 20
MAX_NODES = 10_000
STANDARD_DOMAINS = ("", "ai.onnx")
SUBGRAPH_OPS = ("If", "Loop", "Scan")
_MODEL_OPSET, _MODEL_GRAPH, _MODEL_FUNCTIONS = 8, 7, 25
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_SPARSE = 1, 5, 11, 12, 15
_NODE_OP_TYPE, _NODE_DOMAIN = 4, 7
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 13, 14
_OPSET_DOMAIN, _OPSET_VERSION = 1, 2


@dataclass
class GraphFacts:
    """What the walk found: operator counts, opset versions, inputs, outputs, initializers."""

    ops: Counter = field(default_factory=Counter)
    opsets: dict[str, int] = field(default_factory=dict)
    inputs: int = 0
    outputs: int = 0
    initializers: int = 0


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, int value or memoryview payload) of one protobuf message."""
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
                raise ValueError("field runs past the end")
            yield number, wire, data[pos : pos + length]
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(data):
                raise ValueError("field runs past the end")
            pos += size
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _text(payload: object) -> str:
    return bytes(payload).decode("utf-8")  # type: ignore[call-overload]


def inspect_graph(data: bytes) -> GraphFacts:
    """Walk a serialised ``ModelProto``; raises ValueError on anything it cannot accept."""
    facts = GraphFacts()
    graphs = 0
    for number, wire, value in _fields(memoryview(data)):
        if number == _MODEL_FUNCTIONS:
            raise ValueError("the graph defines its own functions")
        if number == _MODEL_OPSET and wire == 2:
            domain, version = "", 0
            for n, _, v in _fields(value):  # type: ignore[arg-type]
                domain = _text(v) if n == _OPSET_DOMAIN else domain
                version = int(v) if n == _OPSET_VERSION else version  # type: ignore[call-overload]
            facts.opsets[domain] = version
        if number == _MODEL_GRAPH and wire == 2:
            graphs += 1
            _walk_graph(value, facts)  # type: ignore[arg-type]
    if graphs != 1:
        raise ValueError(f"{graphs} graphs instead of one")
    return facts


def _walk_graph(graph: memoryview, facts: GraphFacts) -> None:
    for number, wire, value in _fields(graph):
        if wire != 2:
            continue
        if number == _GRAPH_NODE:
            op, domain = "", ""
            for n, w, v in _fields(value):  # type: ignore[arg-type]
                if w == 2 and n == _NODE_OP_TYPE:
                    op = _text(v)
                elif w == 2 and n == _NODE_DOMAIN:
                    domain = _text(v)
            if domain not in STANDARD_DOMAINS:
                raise ValueError(f"custom operator {domain}.{op}")
            if op in SUBGRAPH_OPS:
                raise ValueError(f"control-flow operator {op}")
            facts.ops[op] += 1
            if sum(facts.ops.values()) > MAX_NODES:
                raise ValueError(f"more than {MAX_NODES} nodes")
        elif number in (_GRAPH_INITIALIZER, _GRAPH_SPARSE):
            facts.initializers += 1
            for n, w, v in _fields(value):  # type: ignore[arg-type]
                if n == _TENSOR_EXTERNAL_DATA or (n == _TENSOR_DATA_LOCATION and w == 0 and v == 1):
                    raise ValueError("a tensor points at external data")
        elif number == _GRAPH_INPUT:
            facts.inputs += 1
        elif number == _GRAPH_OUTPUT:
            facts.outputs += 1


def validate_graph(data: bytes, sha256: str, where: str) -> GraphFacts:
    """Check graph bytes against their recorded checksum and the rules above; one line on failure."""
    if len(data) > MAX_GRAPH_BYTES:
        raise CTDenoiseError(f"{where}: the inference graph has {len(data):,} bytes, more than {MAX_GRAPH_BYTES:,}")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CTDenoiseError(f"{where}: the inference graph does not match its checksum: re-export the model")
    try:
        facts = inspect_graph(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CTDenoiseError(f"{where}: the inference graph was refused ({exc}): re-export the model") from None
    if facts.inputs != 1 or facts.outputs != 1 or not facts.ops:
        raise CTDenoiseError(
            f"{where}: the inference graph has {facts.inputs} inputs, {facts.outputs} outputs and "
            f"{sum(facts.ops.values())} nodes; one slice batch in and out is expected: re-export the model"
        )
    return facts
