"""Signed samples checked against the model they test, before a bundle is signed.

A sample is signed once and checked at every install; one that does not fit the
model's inputs and outputs would only fail at a hospital, after the new release
has started. So the bundler refuses it here, naming the sample and the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from appliance.bundle.manifest import Sample
from appliance.errors import SpecError
from modelcontract import DATATYPES, TensorSpec

_INTEGER = {"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"}
# A sample's tensors are small by design: they travel inside the signed manifest.
MAX_SAMPLE_VALUES = 65536


def check_sample(model: str, index: int, sample: Sample, inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec]) -> None:
    """Refuse a sample whose tensors do not match the model's signature.

    Raises:
        SpecError: a name, datatype, shape, value or the tolerance does not fit.
    """
    where = f"model {model} sample {index}"
    tol = sample.tolerance
    if not math.isfinite(tol) or tol < 0:
        raise SpecError(f"{where}: tolerance {tol!r} must be a finite number >= 0")
    for kind, given, specs, need_all in (("input", sample.inputs, inputs, True),
                                         ("output", sample.outputs, outputs, False)):
        by_name = {t.name: t for t in specs}
        if not given:
            raise SpecError(f"{where}: no {kind}s given; a sample needs every input and at "
                            "least one output")
        for name, tensor in given.items():
            if name not in by_name:
                raise SpecError(f"{where}: {kind} {name!r} is not one of the model's "
                                f"{kind}s ({', '.join(sorted(by_name))})")
            _check_tensor(f"{where} {kind} {name!r}", tensor, by_name[name])
        missing = sorted(set(by_name) - set(given))
        if need_all and missing:
            raise SpecError(f"{where}: input {missing[0]!r} is missing; give every input")


def _check_tensor(where: str, tensor: Any, spec: TensorSpec) -> None:
    if not isinstance(tensor, dict) or set(tensor) - {"datatype", "shape", "data"} \
            or not {"datatype", "shape", "data"} <= set(tensor):
        raise SpecError(f"{where}: must be a mapping of datatype, shape and data, e.g. "
                        "{datatype: FP32, shape: [1, 4], data: [...]}")
    dt, shape, data = tensor["datatype"], tensor["shape"], tensor["data"]
    if dt != spec.datatype:
        raise SpecError(f"{where}: datatype {dt!r}, but the model declares {spec.datatype}")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise SpecError(f"{where}: shape {shape!r} must be a list of whole numbers >= 0")
    want = spec.shape
    if len(shape) != len(want) or any(w not in (-1, g) for w, g in zip(want, shape,
                                                                       strict=True)):
        raise SpecError(f"{where}: shape {shape} does not fit the model's {list(want)}")
    values = list(_flat(data, where))
    count = math.prod(shape)
    if count > MAX_SAMPLE_VALUES:
        raise SpecError(f"{where}: {count} values, over the {MAX_SAMPLE_VALUES} a sample may "
                        "carry; use a smaller sample")
    if len(values) != count:
        raise SpecError(f"{where}: {len(values)} values for shape {shape} ({count} expected)")
    for v in values:
        _check_value(where, dt, v)


def _check_value(where: str, datatype: str, v: Any) -> None:
    if datatype == "BOOL":
        if not isinstance(v, bool):
            raise SpecError(f"{where}: {v!r} is not a boolean")
        return
    if datatype not in DATATYPES:  # BYTES: strings
        if not isinstance(v, str):
            raise SpecError(f"{where}: {v!r} is not a string")
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecError(f"{where}: {v!r} is not a number")
    if datatype in _INTEGER and not isinstance(v, int):
        raise SpecError(f"{where}: {v!r} is not a whole number ({datatype})")
    if not math.isfinite(v):
        raise SpecError(f"{where}: {v!r} is not a finite number")
    if datatype == "FP32" and abs(v) > 3.4028234663852886e38:
        raise SpecError(f"{where}: {v!r} does not fit FP32")
    if datatype == "FP16" and abs(v) > 65504:
        raise SpecError(f"{where}: {v!r} does not fit FP16")


def _flat(data: Any, where: str, depth: int = 0) -> Iterator[Any]:
    if depth > 16:
        raise SpecError(f"{where}: data nested deeper than 16 levels")
    if isinstance(data, list):
        for x in data:
            yield from _flat(x, where, depth + 1)
    elif depth == 0:
        raise SpecError(f"{where}: data must be a list of values")
    else:
        yield data
