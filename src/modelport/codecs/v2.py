"""Open Inference Protocol V2 over HTTP: JSON bodies plus the binary tensor extension.

This sits on the hot path of every V2 inference, so it works on plain dicts from ``orjson``
and numpy arrays, never pydantic models (``modelport.types.v2`` holds those, for docs only).

Wire format (the same as Triton's): a JSON header, optionally followed by raw tensor bytes.
When the ``Inference-Header-Content-Length`` HTTP header is present, only that many leading
bytes are JSON; the rest is the concatenation, in input (or output) order, of the tensors
whose ``parameters.binary_data_size`` is set. Fixed-size datatypes are little-endian,
row-major; ``BOOL`` is one byte per element; each ``BYTES`` element is a 4-byte
little-endian length followed by that many bytes.

Every failure is a ``modelport.errors`` subclass naming the offending tensor:
``MalformedRequest`` for framing/JSON/field problems, ``DtypeMismatch`` for datatypes and
values that do not fit them, ``ShapeMismatch`` for shapes that disagree with the data.

This module parses and frames requests and responses; converting each tensor's data to and
from numpy lives in ``modelport.codecs._v2_tensors``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from modelport.codecs._v2_tensors import decode_binary, decode_json_data, encode_output
from modelport.codecs.dtypes import V2_DATATYPES
from modelport.errors import DtypeMismatch, InvalidInput, MalformedRequest, ShapeMismatch

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
"""HTTP header carrying the byte length of the JSON part of a binary body."""
BINARY_CONTENT_TYPE = "application/octet-stream"
JSON_CONTENT_TYPE = "application/json"


@dataclass(slots=True)
class RequestedOutput:
    """One entry of the request's ``outputs``: which tensor, and whether binary."""

    name: str
    binary: bool | None = None
    """``parameters.binary_data``; None means "use the request's default"."""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """A decoded V2 inference request.

    Arrays are C-contiguous, writable and own their memory (never views of the body), so they
    can be handed to any runtime or sent to a worker process as they are. ``BYTES`` inputs are
    object arrays of ``bytes``; ``input_datatypes`` keeps the declared V2 names because an
    object array alone does not say it was ``BYTES``.
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    input_datatypes: dict[str, str]
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_output_default: bool = False


def parse_header_length(value: str | None) -> int | None:
    """Parse the ``Inference-Header-Content-Length`` header value (None when absent)."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise MalformedRequest(
            f"{HEADER_LENGTH_HEADER} must be a non-negative integer, got {value!r}",
            param=HEADER_LENGTH_HEADER,
        )
    return int(text)


def decode_request(body: bytes, header_length: int | None) -> InferRequest:
    """Decode a V2 inference request body into named numpy arrays.

    ``header_length`` is the ``Inference-Header-Content-Length`` value; None means the whole
    body is JSON (no binary tensors allowed).
    """
    header, reader = _split_body(body, header_length)
    doc = _parse_json(header)
    if not isinstance(doc, dict):
        raise MalformedRequest("the request body must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise MalformedRequest("'id' must be a string", param="id")
    parameters = _parameters(doc.get("parameters"), "request 'parameters'")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise MalformedRequest("parameter 'binary_data_output' must be true or false")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise MalformedRequest("'inputs' must be a non-empty array", param="inputs")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for index, raw in enumerate(raw_inputs):
        name, array, datatype = _decode_input(raw, index, reader, inputs)
        inputs[name] = array
        datatypes[name] = datatype
    reader.finish()
    return InferRequest(
        id=request_id,
        inputs=inputs,
        input_datatypes=datatypes,
        parameters=parameters,
        outputs=_decode_outputs(doc.get("outputs")),
        binary_output_default=binary_default,
    )


def encode_response(
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    requested: list[RequestedOutput] | None,
    binary_default: bool,
) -> tuple[bytes, int | None]:
    """Encode model outputs as a V2 response body.

    Returns the body and, when any output went binary, the JSON header length to send as
    ``Inference-Header-Content-Length`` (with content type ``application/octet-stream``);
    otherwise ``None`` and the body is plain JSON. JSON cannot represent NaN or infinity:
    they become ``null`` (as with Triton); ask for binary output to keep them exactly.
    """
    tensors: list[dict[str, Any]] = []
    chunks: list[Any] = []
    for name, value, binary in _select_outputs(outputs, requested, binary_default):
        entry, chunk = encode_output(name, value, binary)
        tensors.append(entry)
        if chunk is not None:
            chunks.append(chunk)
    doc: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        doc["model_version"] = model_version
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = tensors
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def encode_error(message: str) -> bytes:
    """The V2 error body ``{"error": message}``."""
    try:
        return orjson.dumps({"error": message})
    except orjson.JSONEncodeError:  # lone surrogates cannot be UTF-8: replace them
        return orjson.dumps({"error": message.encode("utf-8", "replace").decode("utf-8")})


# --- request framing ---------------------------------------------------------------------


class _BinaryReader:
    """Hands out consecutive slices of the binary section and checks it is used up."""

    def __init__(self, data: memoryview | None) -> None:
        self._data = data
        self._offset = 0

    def take(self, size: int, name: str) -> memoryview:
        if self._data is None:
            raise MalformedRequest(
                f"input {name!r} has binary_data_size but the request has no binary part "
                f"(the {HEADER_LENGTH_HEADER} header is missing)",
                param=name,
            )
        end = self._offset + size
        if end > len(self._data):
            raise MalformedRequest(
                f"input {name!r} declares binary_data_size {size} but only "
                f"{len(self._data) - self._offset} bytes are left in the body",
                param=name,
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def finish(self) -> None:
        if self._data is not None and self._offset != len(self._data):
            raise MalformedRequest(
                f"{len(self._data) - self._offset} bytes after the JSON header are not "
                "claimed by any input's binary_data_size"
            )


def _split_body(body: bytes, header_length: int | None) -> tuple[bytes, _BinaryReader]:
    if header_length is None:
        return body, _BinaryReader(None)
    if header_length < 0 or header_length > len(body):
        raise MalformedRequest(
            f"{HEADER_LENGTH_HEADER} is {header_length} but the body has {len(body)} bytes",
            param=HEADER_LENGTH_HEADER,
        )
    return body[:header_length], _BinaryReader(memoryview(body)[header_length:])


def _parse_json(header: bytes) -> Any:
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        first_error = str(exc)
    # orjson is strict; Python's json also takes the NaN/Infinity literals that tritonclient
    # (json.dumps) writes for non-finite floats, so retry with it before giving up.
    try:
        return json.loads(bytes(header).decode("utf-8"))
    except UnicodeDecodeError:
        raise MalformedRequest("the JSON header is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise MalformedRequest(f"the request is not valid JSON: {first_error}") from None


def _parameters(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise MalformedRequest(f"{where} must be a JSON object")
    return raw


# --- inputs ------------------------------------------------------------------------------


def _decode_input(
    raw: Any, index: int, reader: _BinaryReader, seen: dict[str, np.ndarray]
) -> tuple[str, np.ndarray, str]:
    if not isinstance(raw, dict):
        raise MalformedRequest(f"inputs[{index}] must be a JSON object", param="inputs")
    name = raw.get("name")
    if not isinstance(name, str):
        raise MalformedRequest(f"inputs[{index}] needs a string 'name'", param="inputs")
    if name in seen:
        raise MalformedRequest(f"input {name!r} appears more than once", param=name)
    datatype = raw.get("datatype")
    if not isinstance(datatype, str):
        raise MalformedRequest(f"input {name!r} needs a string 'datatype'", param=name)
    if datatype not in V2_DATATYPES:
        raise DtypeMismatch(
            f"input {name!r} has unknown datatype {datatype!r}; "
            f"expected one of {sorted(V2_DATATYPES)}",
            param=name,
        )
    shape = _shape(raw.get("shape"), name)
    params = _parameters(raw.get("parameters"), f"input {name!r} 'parameters'")
    if "shared_memory_region" in params:
        raise MalformedRequest(f"input {name!r}: shared memory is not supported", param=name)
    count = _product(shape)
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise MalformedRequest(
                f"input {name!r} has both 'data' and binary_data_size", param=name
            )
        array = decode_binary(name, datatype, shape, count, size, reader)
    elif "data" in raw:
        array = decode_json_data(name, datatype, shape, count, raw["data"])
    else:
        raise MalformedRequest(f"input {name!r} has neither 'data' nor binary_data_size")
    return name, array, datatype


def _shape(raw: Any, name: str) -> list[int]:
    if not isinstance(raw, list) or any(type(dim) is not int for dim in raw):
        raise MalformedRequest(f"input {name!r} needs 'shape' as an array of integers", param=name)
    if any(dim < 0 for dim in raw):
        raise ShapeMismatch(f"input {name!r} has a negative dimension in shape {raw}", param=name)
    return raw


def _product(shape: list[int]) -> int:
    count = 1
    for dim in shape:  # Python ints: no overflow however large the claimed shape
        count *= dim
    return count


def _decode_outputs(raw: Any) -> list[RequestedOutput] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise MalformedRequest("'outputs' must be an array", param="outputs")
    outputs: list[RequestedOutput] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise MalformedRequest(f"outputs[{index}] needs a string 'name'", param="outputs")
        if name in names:
            raise MalformedRequest(f"output {name!r} is requested more than once", param=name)
        names.add(name)
        params = _parameters(item.get("parameters"), f"output {name!r} 'parameters'")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise MalformedRequest(f"output {name!r}: binary_data must be true or false")
        outputs.append(RequestedOutput(name=name, binary=binary, parameters=params))
    return outputs


# --- outputs -----------------------------------------------------------------------------


def _select_outputs(
    outputs: dict[str, np.ndarray], requested: list[RequestedOutput] | None, default: bool
) -> list[tuple[str, np.ndarray, bool]]:
    if not requested:
        return [(name, value, default) for name, value in outputs.items()]
    selected: list[tuple[str, np.ndarray, bool]] = []
    for want in requested:
        if want.name not in outputs:
            raise InvalidInput(
                f"requested output {want.name!r} is not produced by the model; "
                f"it returns {sorted(outputs)}",
                param=want.name,
            )
        binary = default if want.binary is None else want.binary
        selected.append((want.name, outputs[want.name], binary))
    return selected
