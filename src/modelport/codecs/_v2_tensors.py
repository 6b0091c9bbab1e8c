"""Per-tensor conversion for the V2 codec: wire data to numpy arrays and back.

Private to ``modelport.codecs.v2``, which parses and frames requests and responses and
calls in here for each tensor: ``decode_binary`` and ``decode_json_data`` turn one input's
raw bytes or JSON ``data`` into a numpy array, ``encode_output`` turns one output array
into its JSON entry plus, when binary, its raw bytes. Errors are raised exactly as
``modelport.codecs.v2`` documents.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.codecs.dtypes import to_numpy_dtype, to_v2_datatype
from modelport.errors import DtypeMismatch, MalformedRequest, ShapeMismatch

if TYPE_CHECKING:
    from modelport.codecs.v2 import _BinaryReader

_LENGTH_PREFIX = struct.Struct("<I")
_KIND_NAMES = {
    "b": "booleans",
    "i": "integers",
    "u": "integers",
    "f": "non-integer numbers",
    "U": "strings",
    "O": "nulls or mixed values",
}
# Inferred numpy kinds of JSON data each target kind accepts (bool is never a number);
# object arrays reach integer targets only after _exact_integers checked every element.
_ACCEPTED_KINDS = {"b": "b", "i": "iuO", "u": "iuO", "f": "iuf"}


# --- inputs ------------------------------------------------------------------------------


def decode_binary(
    name: str, datatype: str, shape: list[int], count: int, size: Any, reader: _BinaryReader
) -> np.ndarray:
    if type(size) is not int or size < 0:
        raise MalformedRequest(
            f"input {name!r}: binary_data_size must be a non-negative integer", param=name
        )
    dtype = to_numpy_dtype(datatype)
    if datatype != "BYTES" and size != count * dtype.itemsize:
        raise ShapeMismatch(
            f"input {name!r}: shape {shape} of {datatype} needs {count * dtype.itemsize} bytes "
            f"but binary_data_size is {size}",
            param=name,
        )
    chunk = reader.take(size, name)
    if datatype == "BYTES":
        return _object_array(name, _split_bytes(chunk, name), shape, count)
    if datatype == "BOOL":
        raw = np.frombuffer(chunk, dtype=np.uint8)
        if raw.size and int(raw.max()) > 1:
            raise DtypeMismatch(f"input {name!r}: BOOL bytes must be 0 or 1", param=name)
        return raw.astype(np.bool_).reshape(shape)
    # astype copies into an aligned, writable, native-order array owned by the result.
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def _split_bytes(chunk: memoryview, name: str) -> list[bytes]:
    data = chunk.tobytes()
    items: list[bytes] = []
    offset, end = 0, len(data)
    while offset < end:
        if offset + 4 > end:
            raise MalformedRequest(
                f"input {name!r}: BYTES element {len(items)} has a truncated length prefix",
                param=name,
            )
        (length,) = _LENGTH_PREFIX.unpack_from(data, offset)
        offset += 4
        if offset + length > end:
            raise MalformedRequest(
                f"input {name!r}: BYTES element {len(items)} claims {length} bytes but "
                f"only {end - offset} remain",
                param=name,
            )
        items.append(data[offset : offset + length])
        offset += length
    return items


def _object_array(name: str, items: list[bytes], shape: list[int], count: int) -> np.ndarray:
    if len(items) != count:
        raise ShapeMismatch(
            f"input {name!r} has {len(items)} elements but shape {shape} needs {count}",
            param=name,
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array.reshape(shape)


def decode_json_data(
    name: str, datatype: str, shape: list[int], count: int, data: Any
) -> np.ndarray:
    if not isinstance(data, list):
        raise MalformedRequest(f"input {name!r}: 'data' must be a JSON array", param=name)
    if datatype == "BYTES":
        return _object_array(name, _utf8_leaves(name, data), shape, count)
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise ShapeMismatch(
            f"input {name!r}: 'data' is not a rectangular (non-ragged) array", param=name
        ) from None
    if array.size != count:
        raise ShapeMismatch(
            f"input {name!r} has {array.size} elements but shape {shape} needs {count}",
            param=name,
        )
    dtype = to_numpy_dtype(datatype)
    if count == 0:  # np.array([]) is float64: nothing to check or convert
        return np.empty(shape, dtype=dtype)
    if dtype.kind in "iu" and array.dtype.kind in "fO":
        # numpy infers float64 for ints beyond int64 mixed with others (losing digits), and
        # object for ints beyond uint64: re-read such data as exact Python ints.
        array = _exact_integers(name, datatype, data)
    return _cast(name, datatype, dtype, array).reshape(shape)


def _utf8_leaves(name: str, data: list[Any]) -> list[bytes]:
    """Flatten nested JSON arrays of strings (row-major) into UTF-8 bytes, iteratively."""
    items: list[bytes] = []
    stack = [iter(data)]
    try:
        while stack:
            for item in stack[-1]:
                if isinstance(item, str):
                    items.append(item.encode("utf-8"))
                elif isinstance(item, list):
                    stack.append(iter(item))
                    break
                else:
                    raise DtypeMismatch(
                        f"input {name!r}: BYTES data must be strings, got {type(item).__name__}",
                        param=name,
                    )
            else:
                stack.pop()
    except UnicodeEncodeError:
        raise DtypeMismatch(f"input {name!r}: a string is not valid Unicode", param=name) from None
    return items


def _cast(name: str, datatype: str, dtype: np.dtype[Any], array: np.ndarray) -> np.ndarray:
    """Convert inferred JSON values to ``dtype``, refusing anything lossy or of the wrong kind."""
    kind = array.dtype.kind
    if dtype.kind == "f" and kind == "O":
        array = _floats_with_nulls(name, datatype, array)
    elif kind not in _ACCEPTED_KINDS[dtype.kind]:
        raise _wrong_kind(name, datatype, kind)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise DtypeMismatch(
                f"input {name!r}: values from {low} to {high} do not fit {datatype}", param=name
            )
    if not _may_overflow(array.dtype, dtype):
        return array.astype(dtype, copy=False)
    try:
        with np.errstate(over="raise"):  # ~2 us, so only where a cast can overflow
            return array.astype(dtype, copy=False)
    except FloatingPointError:
        raise DtypeMismatch(f"input {name!r}: values overflow {datatype}", param=name) from None


def _may_overflow(source: np.dtype[Any], target: np.dtype[Any]) -> bool:
    """Whether casting can turn finite values into infinity (integers were range-checked)."""
    if target.kind != "f":
        return False
    return target.itemsize == 2 or (source.kind == "f" and source.itemsize > target.itemsize)


def _exact_integers(name: str, datatype: str, data: list[Any]) -> np.ndarray:
    values = np.array(data, dtype=object).ravel().tolist()
    for value in values:
        if type(value) is not int:
            kind = {bool: "b", float: "f", str: "U"}.get(type(value), "O")
            raise _wrong_kind(name, datatype, kind)
    return np.array(values, dtype=object)


def _floats_with_nulls(name: str, datatype: str, array: np.ndarray) -> np.ndarray:
    # null is how JSON encoders (orjson, Triton) write NaN/inf, so read it back as NaN.
    values = array.ravel().tolist()
    for value in values:
        if value is not None and (type(value) is bool or not isinstance(value, int | float)):
            raise _wrong_kind(name, datatype, "O")
    return np.array(values, dtype=np.float64)


def _wrong_kind(name: str, datatype: str, kind: str) -> DtypeMismatch:
    wanted = {"BOOL": "true/false"}.get(datatype, "numbers")
    if datatype.startswith(("INT", "UINT")):
        wanted = "integers"
    return DtypeMismatch(
        f"input {name!r}: {datatype} data must be {wanted}, got "
        f"{_KIND_NAMES.get(kind, 'other values')}",
        param=name,
    )


# --- outputs -----------------------------------------------------------------------------


def encode_output(name: str, value: Any, binary: bool) -> tuple[dict[str, Any], Any]:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise DtypeMismatch(f"output {name!r} is not an array", param=name) from None
    if array.dtype.kind not in "USO" and not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        datatype = to_v2_datatype(array.dtype)
    except DtypeMismatch as exc:
        raise DtypeMismatch(f"output {name!r}: {exc.message}", param=name) from None
    entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
    if datatype == "BYTES":
        items = _bytes_items(name, array)
        if not binary:
            entry["data"] = _utf8_strings(name, items)
            return entry, None
        parts: list[bytes] = []
        for item in items:
            parts += (_LENGTH_PREFIX.pack(len(item)), item)
        chunk: Any = b"".join(parts)
    else:
        flat = np.ascontiguousarray(array).reshape(-1)
        if not binary:
            entry["data"] = flat  # orjson serializes contiguous numpy arrays natively
            return entry, None
        chunk = flat.data
    entry["parameters"] = {"binary_data_size": len(chunk) if datatype == "BYTES" else flat.nbytes}
    return entry, chunk


def _bytes_items(name: str, array: np.ndarray) -> list[bytes]:
    items: list[bytes] = []
    for item in array.ravel().tolist():
        if isinstance(item, bytes | bytearray):
            items.append(bytes(item))
        elif isinstance(item, str):
            try:
                items.append(item.encode("utf-8"))
            except UnicodeEncodeError:
                raise DtypeMismatch(f"output {name!r} holds invalid Unicode", param=name) from None
        else:
            raise DtypeMismatch(
                f"output {name!r}: BYTES elements must be str or bytes, got {type(item).__name__}",
                param=name,
            )
    return items


def _utf8_strings(name: str, items: list[bytes]) -> list[str]:
    try:
        return [item.decode("utf-8") for item in items]
    except UnicodeDecodeError:
        raise DtypeMismatch(
            f"output {name!r} holds bytes that are not UTF-8; request it with binary_data",
            param=name,
        ) from None
