"""JSON parsing with a bound on nesting depth, for every document an attacker can write.

Python's `json` recurses once per nested array or object, so a few kilobytes of
`[[[[...` raise `RecursionError` (a traceback, not a refusal). `loads` scans the
bracket depth first, outside strings, and refuses past `MAX_DEPTH` with a
`ValueError`, which callers already turn into their one-line format error.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

# Our documents (manifest, envelope, trust root, state) nest under 10 levels.
MAX_DEPTH = 32
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonDepthError(ValueError):
    """A JSON document nests deeper than the bound."""


def check_depth(data: bytes | str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse JSON text nested deeper than `max_depth` (without parsing it).

    Raises:
        JsonDepthError: nested deeper than `max_depth`.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    deepest = max(accumulate(_STEP[b] for b in brackets), default=0)
    if deepest > max_depth:
        raise JsonDepthError(f"JSON nested {deepest} levels deep, over the limit of {max_depth}")


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` that refuses documents nested deeper than `max_depth`.

    Raises:
        ValueError: not JSON, or nested too deep (`JsonDepthError`).
    """
    check_depth(data, max_depth)
    return json.loads(data)
