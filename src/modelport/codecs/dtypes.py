"""V2 (Open Inference Protocol) datatypes and their numpy equivalents."""

from __future__ import annotations

import numpy as np

from modelport.errors import DtypeMismatch

_V2_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
_NUMPY_TO_V2: dict[np.dtype[np.generic], str] = {v: k for k, v in _V2_TO_NUMPY.items()}

V2_DATATYPES = frozenset(_V2_TO_NUMPY)


def to_numpy_dtype(datatype: str) -> np.dtype[np.generic]:
    """The numpy dtype for a V2 datatype name; unknown names are a ``DtypeMismatch``."""
    try:
        return _V2_TO_NUMPY[datatype]
    except KeyError:
        raise DtypeMismatch(
            f"unknown datatype {datatype!r}; expected one of {sorted(V2_DATATYPES)}"
        ) from None


def to_v2_datatype(dtype: np.dtype[np.generic]) -> str:
    """The V2 datatype name for a numpy dtype (strings and bytes map to BYTES)."""
    if dtype.kind in ("U", "S", "O"):
        return "BYTES"
    try:
        return _NUMPY_TO_V2[np.dtype(dtype)]
    except KeyError:
        raise DtypeMismatch(f"numpy dtype {dtype} has no V2 datatype") from None


def element_size(datatype: str) -> int | None:
    """Bytes per element in the binary encoding, or None for variable-size BYTES."""
    if datatype == "BYTES":
        return None
    return to_numpy_dtype(datatype).itemsize
