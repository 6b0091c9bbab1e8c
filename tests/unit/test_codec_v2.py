"""The V2 codec against the official Triton client's encoders and decoders.

Requests are built by ``tritonclient.http`` exactly as a Triton user would send them and
decoded by our codec; our responses are parsed back by ``tritonclient.http``. Arrays must
match exactly (bit for bit for floats, including NaN where the encoding can carry it).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from tritonclient.utils import triton_to_np_dtype

from modelport.codecs.v2 import (
    InferRequest,
    RequestedOutput,
    decode_request,
    encode_error,
    encode_response,
    parse_header_length,
)
from modelport.errors import (
    DtypeMismatch,
    InvalidInput,
    MalformedRequest,
    ModelportError,
    ShapeMismatch,
)

RNG_SEED = 20240611

DATATYPES = [
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


def sample(datatype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values that stress each type: extremes of integers, odd floats, non-ASCII strings."""
    count = int(np.prod(shape))
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if datatype == "BYTES":
        words = ["", "a", "héllo", "日本語", 'tab\tquote"', "x" * 300, "emoji 🎉"]
        picked = [words[i].encode() for i in rng.integers(0, len(words), size=count)]
        return np.array(picked, dtype=object).reshape(shape)
    dtype = np.dtype(triton_to_np_dtype(datatype))  # the client's own mapping
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=count, dtype=dtype, endpoint=True)
        values[: min(count, 2)] = [info.min, info.max][: min(count, 2)]
        return values.reshape(shape)
    values = (rng.standard_normal(count) * 1e3).astype(dtype)
    return values.reshape(shape)


def triton_request(
    arrays: dict[str, tuple[str, np.ndarray]],
    *,
    binary: bool,
    outputs: list[Any] | None = None,
    request_id: str = "",
) -> tuple[bytes, int | None]:
    inputs = []
    for name, (datatype, array) in arrays.items():
        infer_input = triton.InferInput(name, list(array.shape), datatype)
        infer_input.set_data_from_numpy(array, binary_data=binary)
        inputs.append(infer_input)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id
    )
    return bytes(body), json_size


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert got.tolist() == want.tolist()
    else:
        assert got.dtype == want.dtype
        # Bitwise comparison: exact for floats, NaN payloads and signed zeros included.
        assert got.tobytes() == want.tobytes()


# --- requests: tritonclient -> our decoder -------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_decode_every_datatype_from_tritonclient(datatype: str, binary: bool) -> None:
    rng = np.random.default_rng(RNG_SEED)
    arrays = {
        "matrix": (datatype, sample(datatype, (3, 4), rng)),
        "vector": (datatype, sample(datatype, (5,), rng)),
        "empty": (datatype, sample(datatype, (2, 0), rng)),
    }
    body, header_length = triton_request(arrays, binary=binary, request_id="req-1")
    assert (header_length is not None) == binary

    request = decode_request(body, header_length)

    assert request.id == "req-1"
    assert list(request.inputs) == ["matrix", "vector", "empty"]
    assert request.input_datatypes == dict.fromkeys(arrays, datatype)
    for name, (_, want) in arrays.items():
        got = request.inputs[name]
        assert_same(got, want)
        assert got.flags.c_contiguous and got.flags.writeable


def test_decode_mixed_binary_and_json_inputs_in_order() -> None:
    rng = np.random.default_rng(RNG_SEED)
    a = sample("FP32", (2, 3), rng)
    b = sample("BYTES", (4,), rng)
    c = sample("INT64", (3,), rng)
    inputs = [triton.InferInput("a", [2, 3], "FP32"), triton.InferInput("b", [4], "BYTES")]
    inputs.append(triton.InferInput("c", [3], "INT64"))
    inputs[0].set_data_from_numpy(a, binary_data=True)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    inputs[2].set_data_from_numpy(c, binary_data=True)
    body, header_length = triton.InferenceServerClient.generate_request_body(inputs)

    request = decode_request(body, header_length)

    assert_same(request.inputs["a"], a)
    assert_same(request.inputs["b"], b)
    assert_same(request.inputs["c"], c)


def test_decoded_binary_arrays_are_writable_copies() -> None:
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, header_length = triton_request({"x": ("FP32", data)}, binary=True)
    array = decode_request(body, header_length).inputs["x"]
    array[0, 0] = 42.0  # must not fail (read-only view of the body) nor touch the body
    assert decode_request(body, header_length).inputs["x"][0, 0] == 0.0
    assert array.flags.aligned and array.flags.c_contiguous


def test_requested_outputs_and_binary_default() -> None:
    data = np.zeros((1, 2), dtype=np.float32)
    outputs = [
        triton.InferRequestedOutput("probs", binary_data=False),
        triton.InferRequestedOutput("label", binary_data=True),
    ]
    body, header_length = triton_request({"x": ("FP32", data)}, binary=False, outputs=outputs)
    request = decode_request(body, header_length)
    assert request.outputs == [
        RequestedOutput("probs", False, {"binary_data": False}),
        RequestedOutput("label", True, {"binary_data": True}),
    ]
    assert request.binary_output_default is False

    # Without outputs, tritonclient asks for everything in binary.
    body, header_length = triton_request({"x": ("FP32", data)}, binary=False)
    request = decode_request(body, header_length)
    assert request.outputs is None
    assert request.binary_output_default is True
    assert request.parameters == {"binary_data_output": True}


def test_decode_nested_json_data_row_major() -> None:
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "f", "shape": [2, 2], "datatype": "FP64", "data": [[1.5, 2], [3, 4]]},
                {"name": "s", "shape": [1, 2], "datatype": "BYTES", "data": [["ab", "ü"]]},
                {"name": "b", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
                {"name": "flat", "shape": [2, 1], "datatype": "INT8", "data": [-128, 127]},
            ]
        }
    )
    request = decode_request(body, None)
    assert request.id is None and request.parameters == {}
    assert_same(request.inputs["f"], np.array([[1.5, 2.0], [3.0, 4.0]]))
    assert_same(request.inputs["s"], np.array([[b"ab", "ü".encode()]], dtype=object))
    assert_same(request.inputs["b"], np.array([True, False, True]))
    assert_same(request.inputs["flat"], np.array([[-128], [127]], dtype=np.int8))


def test_json_extreme_integers_are_exact() -> None:
    u64 = np.array([0, 2**64 - 1, 2**63 + 1], dtype=np.uint64)
    i64 = np.array([-(2**63), 2**63 - 1, -1], dtype=np.int64)
    body, _ = triton_request({"u": ("UINT64", u64), "i": ("INT64", i64)}, binary=False)
    request = decode_request(body, None)
    assert_same(request.inputs["u"], u64)
    assert_same(request.inputs["i"], i64)


def test_header_length_covering_the_whole_body() -> None:
    body, _ = triton_request({"x": ("INT32", np.arange(3, dtype=np.int32))}, binary=False)
    assert_same(decode_request(body, len(body)).inputs["x"], np.arange(3, dtype=np.int32))


def test_json_non_finite_floats_from_tritonclient_and_null() -> None:
    # tritonclient writes json.dumps' NaN/Infinity literals; orjson writes null for them.
    values = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)
    body, _ = triton_request({"x": ("FP32", values)}, binary=False)
    assert b"NaN" in body
    got = decode_request(body, None).inputs["x"]
    np.testing.assert_array_equal(got, values)  # treats NaN == NaN

    body = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP16","data":[null,2.5]}]}'
    got = decode_request(body, None).inputs["x"]
    assert got.dtype == np.float16 and np.isnan(got[0]) and got[1] == 2.5


# --- responses: our encoder -> tritonclient ------------------------------------------------


def parse(body: bytes, header_length: int | None) -> Any:
    return triton.InferenceServerClient.parse_response_body(body, header_length=header_length)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", DATATYPES)
def test_encode_every_datatype_for_tritonclient(datatype: str, binary: bool) -> None:
    rng = np.random.default_rng(RNG_SEED + 1)
    outputs = {
        "matrix": sample(datatype, (4, 3), rng),
        "scalar": sample(datatype, (), rng),
        "empty": sample(datatype, (0, 2), rng),
    }
    body, header_length = encode_response("m", "3", "abc", outputs, None, binary)

    assert (header_length is not None) == binary
    header = orjson.loads(body[:header_length] if binary else body)
    assert header["model_name"] == "m" and header["model_version"] == "3"
    assert header["id"] == "abc"
    assert [o["datatype"] for o in header["outputs"]] == [datatype] * 3
    result = parse(body, header_length)
    for name, want in outputs.items():
        got = result.as_numpy(name)
        if datatype == "BYTES" and not binary:
            # Triton's JSON carries BYTES as strings; tritonclient hands back str objects.
            want = np.vectorize(lambda b: b.decode(), otypes=[object])(want)
            want = want.reshape(outputs[name].shape)
        assert_same(got, want)


def test_encode_strings_and_byte_arrays_as_bytes() -> None:
    outputs = {
        "u": np.array([["a", "é"], ["", "z"]]),
        "s": np.array([b"x\x00y", b"q"]),
        "o": np.array(["mixed", b"raw\xff"], dtype=object),
    }
    body, header_length = encode_response("m", None, None, outputs, None, True)
    result = parse(body, header_length)
    assert result.as_numpy("u").tolist() == [[b"a", "é".encode()], [b"", b"z"]]
    assert result.as_numpy("s").tolist() == [b"x\x00y", b"q"]  # numpy 'S' strips trailing NULs
    assert result.as_numpy("o").tolist() == [b"mixed", b"raw\xff"]
    assert "model_version" not in orjson.loads(body[:header_length])
    assert "id" not in orjson.loads(body[:header_length])


def test_requested_outputs_select_order_and_binary_flags() -> None:
    outputs = {
        "a": np.array([1, 2], dtype=np.int32),
        "b": np.array([0.5], dtype=np.float64),
        "c": np.array([True]),
    }
    requested = [RequestedOutput("c", None), RequestedOutput("a", True)]
    body, header_length = encode_response("m", "1", None, outputs, requested, False)
    assert header_length is not None
    header = orjson.loads(body[:header_length])
    assert [o["name"] for o in header["outputs"]] == ["c", "a"]
    assert header["outputs"][0]["data"] == [True]  # default (JSON) applies
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 8}
    result = parse(body, header_length)
    assert_same(result.as_numpy("a"), outputs["a"])
    assert_same(result.as_numpy("c"), outputs["c"])
    assert result.as_numpy("b") is None

    body, header_length = encode_response("m", "1", None, outputs, [RequestedOutput("b")], True)
    assert orjson.loads(body[:header_length])["outputs"][0]["parameters"] == {"binary_data_size": 8}


def test_unknown_requested_output_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="'nope'") as caught:
        encode_response("m", "1", None, {"y": np.zeros(1)}, [RequestedOutput("nope")], False)
    assert caught.value.param == "nope"


def test_json_response_non_finite_become_null_binary_keeps_them() -> None:
    values = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-45], dtype=np.float32)
    body, header_length = encode_response("m", "1", None, {"y": values}, None, False)
    assert header_length is None
    assert orjson.loads(body)["outputs"][0]["data"] == [None, None, None, -0.0, 1e-45]

    body, header_length = encode_response("m", "1", None, {"y": values}, None, True)
    assert_same(parse(body, header_length).as_numpy("y"), values)


def test_json_response_exact_for_float_and_64_bit_ints() -> None:
    rng = np.random.default_rng(RNG_SEED + 2)
    outputs = {
        "f16": rng.standard_normal(500).astype(np.float16),
        "f32": rng.standard_normal(500).astype(np.float32) * np.float32(1e-30),
        "f64": rng.standard_normal(500) * 1e300,
        "u64": np.array([2**64 - 1, 2**63, 1], dtype=np.uint64),
        "i64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
        "big_endian": np.array([1.25, -3.5], dtype=">f8"),
        "strided": np.arange(12, dtype=np.int16).reshape(3, 4)[:, ::2],
    }
    body, header_length = encode_response("m", "1", None, outputs, None, False)
    result = parse(body, header_length)
    for name, want in outputs.items():
        assert_same(
            result.as_numpy(name), np.ascontiguousarray(want, dtype=want.dtype.newbyteorder("="))
        )


def test_response_with_unsupported_output_dtype_names_it() -> None:
    with pytest.raises(DtypeMismatch, match="'when'"):
        encode_response("m", "1", None, {"when": np.array([1], dtype="datetime64[s]")}, None, False)
    with pytest.raises(DtypeMismatch, match=r"'obj'.*int"):
        encode_response("m", "1", None, {"obj": np.array([1, "a"], dtype=object)}, None, True)
    with pytest.raises(DtypeMismatch, match=r"'raw'.*binary_data"):
        encode_response("m", "1", None, {"raw": np.array([b"\xff"], dtype=object)}, None, False)


def test_encode_error() -> None:
    assert orjson.loads(encode_error('bad "thing"\n')) == {"error": 'bad "thing"\n'}
    assert json.loads(encode_error("lone \ud800")) == {"error": "lone ?"}


def test_parse_header_length() -> None:
    assert parse_header_length(None) is None
    assert parse_header_length(" 17 ") == 17
    for bad in ["", "-1", "1.5", "abc", "١٢"]:
        with pytest.raises(MalformedRequest, match="Inference-Header-Content-Length"):
            parse_header_length(bad)


# --- error cases ---------------------------------------------------------------------------


def _json(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _one(**fields: Any) -> bytes:
    """A one-input request; a field given as ``...`` is left out."""
    tensor = {"name": "x", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]}
    tensor.update(fields)
    tensor = {key: value for key, value in tensor.items() if value is not ...}
    return _json({"inputs": [tensor]})


def _binary(size: Any, payload: bytes, datatype: str = "FP32", shape: Any = (2,)) -> Any:
    header = _json(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    return header + payload, len(header)


ERROR_CASES: list[tuple[str, bytes, int | None, type[ModelportError], str]] = [
    ("not json", b"{nope", None, MalformedRequest, "not valid JSON"),
    ("empty body", b"", None, MalformedRequest, "not valid JSON"),
    ("not utf-8", b'{"inputs": "\xff\xfe"}', None, MalformedRequest, "UTF-8"),
    ("not an object", b"[1, 2]", None, MalformedRequest, "JSON object"),
    ("no inputs", b"{}", None, MalformedRequest, "'inputs'"),
    ("empty inputs", b'{"inputs": []}', None, MalformedRequest, "'inputs'"),
    ("id not str", b'{"id": 5, "inputs": []}', None, MalformedRequest, "'id'"),
    ("params not obj", _json({"parameters": [], "inputs": []}), None, MalformedRequest, "param"),
    (
        "binary_data_output not bool",
        _json({"parameters": {"binary_data_output": "yes"}, "inputs": []}),
        None,
        MalformedRequest,
        "binary_data_output",
    ),
    ("input not obj", _json({"inputs": [3]}), None, MalformedRequest, r"inputs\[0\]"),
    ("no name", _json({"inputs": [{"shape": [1]}]}), None, MalformedRequest, "'name'"),
    ("no datatype", _one(datatype=...), None, MalformedRequest, "'x'.*'datatype'"),
    ("unknown datatype", _one(datatype="FP8"), None, DtypeMismatch, "'x'.*'FP8'"),
    ("bf16 unsupported", _one(datatype="BF16"), None, DtypeMismatch, "'x'.*'BF16'"),
    ("no shape", _one(shape=...), None, MalformedRequest, "'x'.*'shape'"),
    ("float shape", _one(shape=[2.0]), None, MalformedRequest, "'x'.*'shape'"),
    ("bool shape", _one(shape=[True, 2]), None, MalformedRequest, "'x'.*'shape'"),
    ("negative dim", _one(shape=[-1, -2]), None, ShapeMismatch, "'x'.*negative"),
    ("no data", _one(data=...), None, MalformedRequest, "'x'"),
    ("data not array", _one(data=1.0, shape=[]), None, MalformedRequest, "'x'.*array"),
    ("count mismatch", _one(shape=[3]), None, ShapeMismatch, "'x' has 2 elements.*needs 3"),
    ("ragged", _one(data=[[1.0], [2.0, 3.0]]), None, ShapeMismatch, "'x'.*rectangular"),
    ("strings for FP32", _one(data=["1.5", "2"]), None, DtypeMismatch, "'x'.*FP32.*strings"),
    ("bool for FP32", _one(data=[True, False]), None, DtypeMismatch, "'x'.*FP32.*booleans"),
    ("dict for FP32", _one(data=[{}, 1]), None, DtypeMismatch, "'x'.*FP32"),
    ("null for INT32", _one(datatype="INT32", data=[None, 1]), None, DtypeMismatch, "'x'.*INT"),
    ("float for INT32", _one(datatype="INT32", data=[1.5, 2]), None, DtypeMismatch, "integers"),
    ("int for BOOL", _one(datatype="BOOL", data=[0, 1]), None, DtypeMismatch, "'x'.*true/false"),
    ("uint8 overflow", _one(datatype="UINT8", data=[0, 256]), None, DtypeMismatch, "fit UINT8"),
    ("negative uint", _one(datatype="UINT64", data=[-1, 1]), None, DtypeMismatch, "fit UINT64"),
    (
        "uint64 mixed sign",
        _one(datatype="UINT64", data=[2**64 - 1, -1]),
        None,
        DtypeMismatch,
        "fit UINT64",
    ),
    (
        "null for INT64",
        _one(datatype="INT64", data=[2**64 - 1, None]),
        None,
        DtypeMismatch,
        "nulls",
    ),
    ("int64 overflow", _one(datatype="INT64", data=[2**63, 0]), None, DtypeMismatch, "fit INT64"),
    ("fp16 overflow", _one(datatype="FP16", data=[1e6, 0]), None, DtypeMismatch, "overflow FP16"),
    ("fp32 overflow", _one(data=[1e300, 0]), None, DtypeMismatch, "overflow FP32"),
    ("number for BYTES", _one(datatype="BYTES", data=["a", 1]), None, DtypeMismatch, "strings"),
    (
        "lone surrogate BYTES",
        b'{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["\\ud800"]}]}',
        None,
        DtypeMismatch,
        "'x'.*Unicode",
    ),
    (
        "duplicate input",
        _json({"inputs": [json.loads(_one())["inputs"][0]] * 2}),
        None,
        MalformedRequest,
        "'x' appears more than once",
    ),
    (
        "shared memory",
        _one(parameters={"shared_memory_region": "r"}),
        None,
        MalformedRequest,
        "shared",
    ),
    (
        "data and binary",
        _one(parameters={"binary_data_size": 8}),
        None,
        MalformedRequest,
        "'x' has both",
    ),
    (
        "binary without header length",
        _binary(8, b"")[0],
        None,
        MalformedRequest,
        "'x'.*binary part",
    ),
    ("header length beyond body", b"{}", 3, MalformedRequest, "is 3 but the body has 2"),
    ("negative header length", b"{}", -1, MalformedRequest, "Inference-Header-Content-Length"),
    ("truncated binary", *_binary(8, b"\x00" * 5), MalformedRequest, "'x'.*only 5 bytes"),
    ("leftover bytes", *_binary(8, b"\x00" * 9), MalformedRequest, "1 bytes after"),
    ("size vs shape", *_binary(4, b"\x00" * 4), ShapeMismatch, "'x'.*needs 8 bytes.*4"),
    ("negative size", *_binary(-8, b""), MalformedRequest, "'x'.*binary_data_size"),
    ("float size", *_binary(8.0, b"\x00" * 8), MalformedRequest, "'x'.*binary_data_size"),
    ("bool byte 2", *_binary(2, b"\x01\x02", "BOOL"), DtypeMismatch, "'x'.*0 or 1"),
    (
        "bytes prefix truncated",
        *_binary(6, b"\x01\x00\x00\x00a\x00", "BYTES"),
        MalformedRequest,
        "'x'.*element 1.*length prefix",
    ),
    (
        "bytes element truncated",
        *_binary(7, b"\x09\x00\x00\x00abc", "BYTES"),
        MalformedRequest,
        "'x'.*element 0 claims 9",
    ),
    (
        "bytes count",
        *_binary(5, b"\x01\x00\x00\x00a", "BYTES"),
        ShapeMismatch,
        "'x' has 1 elements.*needs 2",
    ),
]
# Cases that also need valid inputs to get as far as the outputs.
_VALID_INPUT = json.loads(_one())["inputs"]
ERROR_CASES += [
    (
        "outputs not list",
        _json({"inputs": _VALID_INPUT, "outputs": {}}),
        None,
        MalformedRequest,
        "'outputs' must be an array",
    ),
    (
        "output without name",
        _json({"inputs": _VALID_INPUT, "outputs": [{"parameters": {}}]}),
        None,
        MalformedRequest,
        r"outputs\[0\]",
    ),
    (
        "duplicate output",
        _json({"inputs": _VALID_INPUT, "outputs": [{"name": "y"}, {"name": "y"}]}),
        None,
        MalformedRequest,
        "'y' is requested more than once",
    ),
    (
        "binary_data not bool",
        _json(
            {"inputs": _VALID_INPUT, "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}
        ),
        None,
        MalformedRequest,
        "'y'.*binary_data",
    ),
]


@pytest.mark.parametrize(
    ("body", "header_length", "error", "message"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_decode_errors(
    body: bytes, header_length: int | None, error: type[ModelportError], message: str
) -> None:
    with pytest.raises(ModelportError, match=message) as caught:
        decode_request(body, header_length)
    assert type(caught.value) is error


def test_errors_carry_the_input_name_as_param() -> None:
    with pytest.raises(DtypeMismatch) as caught:
        decode_request(_one(datatype="INT32", data=[1.5, 2]), None)
    assert caught.value.param == "x"


# --- robustness ----------------------------------------------------------------------------


def _seed_bodies() -> list[tuple[bytes, int | None]]:
    rng = np.random.default_rng(RNG_SEED)
    bodies = []
    for binary in (True, False):
        arrays = {f"t{i}": (dt, sample(dt, (2, 3), rng)) for i, dt in enumerate(DATATYPES)}
        outputs = [triton.InferRequestedOutput("y", binary_data=binary)]
        bodies.append(triton_request(arrays, binary=binary, outputs=outputs, request_id="r"))
    return bodies


def _mutate(
    body: bytes, header_length: int | None, rng: np.random.Generator
) -> tuple[bytes, int | None]:
    data = bytearray(body)
    action = rng.integers(0, 5)
    if action == 0:  # truncate anywhere
        data = data[: rng.integers(0, len(data) + 1)]
    elif action == 1:  # flip a few bytes
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            data[pos] = rng.integers(0, 256)
    elif action == 2:  # insert random bytes
        pos = int(rng.integers(0, len(data) + 1))
        data[pos:pos] = rng.bytes(int(rng.integers(1, 9)))
    elif action == 3:  # lie about the header length
        header_length = int(rng.integers(-2, len(data) + 3))
    else:  # replace a digit inside the JSON (sizes, shapes, values)
        digits = [
            i for i, byte in enumerate(data[: header_length or len(data)]) if 48 <= byte <= 57
        ]
        data[int(rng.choice(digits))] = int(rng.integers(48, 58))
    return bytes(data), header_length


def test_mutated_and_random_bodies_only_raise_modelport_errors() -> None:
    rng = np.random.default_rng(RNG_SEED)
    seeds = _seed_bodies()
    outcomes = {"ok": 0, "error": 0}
    for attempt in range(400):
        if attempt % 10 == 0:
            body, header_length = rng.bytes(int(rng.integers(0, 64))), None
        else:
            body, header_length = _mutate(*seeds[attempt % len(seeds)], rng)
        try:
            result = decode_request(body, header_length)
        except ModelportError:
            outcomes["error"] += 1
        else:
            assert isinstance(result, InferRequest)
            outcomes["ok"] += 1
    # Both paths must be exercised, or the test proves nothing.
    assert outcomes["ok"] > 20 and outcomes["error"] > 100, outcomes
