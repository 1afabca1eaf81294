"""Redaction: the second line of defence between the site's files and the vendor.

The runtime does not log what clients send; this scrubs anything that slipped through
anyway, before a byte is written to the export:
  - JSON fields that carry client data (`body`, `inputs`, `payload`, ...) are dropped whole;
  - secrets: private key PEM blocks, bearer tokens, JWTs, `token=`/`password:`-style values;
  - patient identifiers in free text: DICOM person names (`DOE^JOHN`), MRN/accession-like
    ids, labelled dates of birth.
Only counts of what was replaced are kept (`Redactor.counts`), never the values.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Field names whose values come from a client (request bodies, tensors, headers).
CLIENT_FIELDS = frozenset({
    "body", "payload", "inputs", "outputs", "data", "raw", "headers", "query",
    "parameters", "params", "request_body", "content", "tensor", "tensors",
})
SECRET_FIELDS = frozenset({
    "token", "password", "passwd", "secret", "authorization", "api_key", "apikey",
    "private_key", "passphrase", "cookie", "set-cookie", "x-api-key",
})

_DATE = r"(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4})"

# Order matters: whole PEM blocks before anything could cut them apart. Each rule has
# lower-case hints: a rule none of whose hints is in a file is skipped for that file (a
# week of logs is scrubbed in seconds, not minutes); None means always run it.
RULES: tuple[tuple[str, re.Pattern[str], tuple[str, ...] | None], ...] = (
    ("private-key", re.compile(
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
        re.S), ("private key",)),
    ("token", re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}"), ("bearer",)),
    ("token", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
     ("eyj",)),
    ("token", re.compile(
        r"(?i)\b(?:token|password|passwd|secret|api[_-]?key|passphrase|authorization)"
        r"(\"?\s*[:=]\s*\"?)(?!\[REDACTED)[^\s\"',;&}]{4,}"),
     ("token", "passw", "secret", "api", "passphrase", "authorization")),
    ("date-of-birth", re.compile(
        r"(?i)\b(?:dob|d\.o\.b\.|date[ _-]?of[ _-]?birth|birth[ _-]?date|patientbirthdate"
        r"|\(0010,\s*0030\))\W{0,4}" + _DATE), ("dob", "d.o.b", "birth", "(0010,")),
    ("patient-id", re.compile(
        r"(?i)\b(?:mrn|patient[ _-]?id|patientid|accession(?:[ _-]?(?:no|number|nr))?"
        r"|accessionnumber|\(0010,\s*0020\)|\(0008,\s*0050\))\W{0,4}[A-Za-z0-9-]{3,}"),
     ("mrn", "patient", "accession", "(0010,", "(0008,")),
    ("patient-id", re.compile(r"\b(?:MRN|ACC|PID|PAT)[-_]?\d{4,}\b|\b[A-Z]{1,3}\d{7,12}\b"),
     None),
    ("person-name", re.compile(
        r"[A-Za-z\u00c0-\u024f'.-]+\^[A-Za-z\u00c0-\u024f'.-]*"
        r"(?:\^[A-Za-z\u00c0-\u024f'.-]*){0,3}"), ("^",)),
)
Rule = tuple[str, re.Pattern[str], tuple[str, ...] | None]


_ID_GATE = re.compile(r"[A-Z][-_]?\d")  # cheap test before the always-on id rule


def _hits(line: str, rules: list[Rule]) -> bool:
    """Whether any of `rules` matches somewhere in `line`."""
    for _, p, hints in rules:
        if hints is None and not _ID_GATE.search(line):
            continue
        if p.search(line):
            return True
    return False


def _loads(line: str) -> Any:
    try:
        import orjson  # the runtime's own dependency: several times faster on a week of logs
    except ImportError:
        return json.loads(line)
    return orjson.loads(line)


def _active(text: str) -> list[Rule]:
    """The rules whose hints appear in `text` (case-insensitively)."""
    low = text.lower()
    return [r for r in RULES if r[2] is None or any(h in low for h in r[2])]


@dataclass
class Redactor:
    """Scrubs text and JSON lines; counts every replacement by kind and by file."""

    counts: Counter[str] = field(default_factory=Counter)
    by_file: dict[str, Counter[str]] = field(default_factory=dict)

    def text(self, s: str, where: str = "", rules: list[Rule] | None = None) -> str:
        """`s` with every secret and patient-identifier pattern replaced."""
        for kind, pattern, _ in _active(s) if rules is None else rules:
            s, n = pattern.subn(f"[REDACTED {kind}]", s)
            if n:
                self._count(kind, n, where)
        return s

    def value(self, v: Any, where: str = "", rules: list[Rule] | None = None) -> Any:
        """A JSON value with client fields dropped, secret fields blanked, strings scrubbed."""
        if isinstance(v, str):
            return self.text(v, where, rules)
        if isinstance(v, list):
            return [self.value(x, where, rules) for x in v]
        if isinstance(v, dict):
            out: dict[str, Any] = {}
            for k, x in v.items():
                key = str(k).lower()
                if key in CLIENT_FIELDS:
                    self._count("client-data", 1, where)
                    out[k] = "[REDACTED client-data]"
                elif key in SECRET_FIELDS:
                    self._count("token", 1, where)
                    out[k] = "[REDACTED token]"
                else:
                    out[k] = self.value(x, where, rules)
            return out
        return v

    def lines(self, data: bytes, where: str = "",
              keep: Callable[[dict[str, Any]], bool] | None = None) -> bytes:
        """A JSON-lines (or plain text) file, scrubbed line by line; JSON objects for which
        `keep` says False are left out. Only string values are scrubbed (field names are
        ours), so a line of numbers costs one parse and no pattern search."""
        text = data.decode("utf-8", errors="replace")
        pem_kind, pem, _ = RULES[0]  # a key block spans lines: replaced whole, before the split
        text, n = pem.subn(f"[REDACTED {pem_kind}]", text)
        if n:
            self._count(pem_kind, n, where)
        rules = _active(text)
        low = text.lower()
        keys = any(f'"{k}"' in low for k in CLIENT_FIELDS | SECRET_FIELDS)
        out: list[str] = []
        for line in text.splitlines():
            if keep is None and not keys and not _hits(line, rules):
                out.append(line)  # nothing to filter or scrub: kept byte for byte, unparsed
                continue
            doc: Any = None
            if line.startswith("{"):
                try:
                    doc = _loads(line)
                except ValueError:
                    doc = None
            if isinstance(doc, dict):
                if keep is not None and not keep(doc):
                    continue
                if not keys and not _hits(line, rules):
                    out.append(line)  # nothing to scrub: kept byte for byte
                    continue
                before = sum(self.counts.values())
                clean = self.value(doc, where, rules)
                if sum(self.counts.values()) == before:
                    out.append(line)  # untouched: kept byte for byte
                else:
                    out.append(json.dumps(clean, separators=(",", ":"), ensure_ascii=False))
            else:
                out.append(self.text(line, where, rules))
        return ("\n".join(out) + "\n").encode() if out else b""

    def report(self) -> dict[str, Any]:
        """What was replaced and how many times (counts only, never the values)."""
        return {"total": sum(self.counts.values()), "by_kind": dict(sorted(self.counts.items())),
                "by_file": {f: dict(sorted(c.items())) for f, c in sorted(self.by_file.items())},
                "rules": sorted({r[0] for r in RULES} | {"client-data"})}

    def _count(self, kind: str, n: int, where: str) -> None:
        self.counts[kind] += n
        if where:
            self.by_file.setdefault(where, Counter())[kind] += n
