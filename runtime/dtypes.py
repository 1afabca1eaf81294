"""The numpy types that V2 datatypes travel as (the contract itself names them only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelcontract import DATATYPES as _NAMES

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8), "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
assert set(DATATYPES) == set(_NAMES)  # the contract and this table agree
# The byte order on the wire is little-endian (binary tensor extension).
WIRE_DTYPES: dict[str, np.dtype[Any]] = {k: v.newbyteorder("<") for k, v in DATATYPES.items()}
