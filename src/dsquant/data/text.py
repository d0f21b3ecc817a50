"""Instruction-tuning and other text records: JSON arrays or JSON Lines, plain or gzipped.

Recognised record schemas (the first record decides; every record must have the fields):

| schema | fields embedded (DQ's template) |
|---|---|
| alpaca | ``instruction``, ``input`` (skipped when empty), ``output`` |
| dolly | ``instruction``, ``context`` (skipped when empty), ``response`` |
| prompt/completion | ``prompt``, ``completion`` |
| text | ``text`` (e.g. Banking77) |

A ``template`` string such as ``"{instruction}\\n{output}"`` overrides the default. Records pass
through untouched: JSON Lines are kept as their original lines, so an export holds the same keys,
values and order byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import DataError

__all__ = ["TextDataset", "read_text_records", "SCHEMAS", "TEXT_SUFFIXES", "default_text"]

TEXT_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz")
SCHEMAS = {
    "alpaca": ("instruction", "input", "output"),
    "dolly": ("instruction", "context", "response"),
    "prompt/completion": ("prompt", "completion"),
    "text": ("text",),
}


def _schema(record: dict, source: str) -> str:
    for name, fields in SCHEMAS.items():
        if all(f in record for f in fields):
            return name
    keys = ", ".join(sorted(record)[:8])
    raise DataError(
        f"{source}: record 1 has fields [{keys}]; expected alpaca (instruction, input, output), dolly "
        f"(instruction, context, response), prompt/completion, or text (or pass a template)"
    )


def default_text(record: dict, schema: str) -> str:
    """The text DQ embeds for a record: the schema's fields joined by spaces, empty optional
    fields (``input``, ``context``) skipped, newlines turned into spaces (alpaca_embed.py)."""
    parts = [str(record.get(f, "") or "") for f in SCHEMAS[schema]]
    text = " ".join(p for p in parts if p != "")
    return text.replace("\n", " ")


@dataclass
class TextDataset:
    """Text records held in memory.

    Attributes:
        records: the parsed records (dicts), in file order.
        texts: the string embedded for each record.
        labels: (N,) int64 group ids (``--group-by``) or None.
        classes: the group names.
        source: the file.
        schema: the detected schema.
        raw_lines: the original JSON Lines (bytes), for an exact export; None for a JSON array.
    """

    records: list[dict]
    texts: list[str]
    labels: np.ndarray | None
    classes: list[str]
    source: str
    schema: str
    raw_lines: list[bytes] | None = field(default=None, repr=False)
    template: str | None = None
    split: str = "train"
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    kind = "text"

    def __len__(self) -> int:
        return len(self.records)

    def fingerprint(self) -> str:
        """Hex BLAKE2b digest of the embedded texts and the group labels."""
        if self._fingerprint is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(repr((len(self.texts), self.classes)).encode())
            for t in self.texts:
                h.update(t.encode("utf-8", "surrogatepass"))
                h.update(b"\x00")
            if self.labels is not None:
                h.update(np.ascontiguousarray(self.labels).tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def write_subset(self, indices: np.ndarray, path: str | os.PathLike) -> int:
        """Write the records at ``indices`` (in that order) as JSON Lines; returns bytes written.
        JSON Lines sources are copied line for line."""
        path = Path(path)
        total = 0
        with open(path, "wb") as f:
            for i in np.asarray(indices, dtype=np.int64):
                if self.raw_lines is not None:
                    line = self.raw_lines[i].rstrip(b"\r\n") + b"\n"
                else:
                    line = (json.dumps(self.records[i], ensure_ascii=False) + "\n").encode("utf-8")
                f.write(line)
                total += len(line)
        return total


def _open(path: Path):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _first_char(path: Path) -> bytes:
    with _open(path) as f:
        while True:
            c = f.read(1)
            if not c or not c.isspace():
                return c


def read_text_records(
    path: str | os.PathLike,
    template: str | None = None,
    group_by: str | None = None,
    limit: int | None = None,
) -> TextDataset:
    """Read a JSON array or JSON Lines file (plain or gzipped) of records.

    Args:
        path: the file.
        template: a ``str.format`` template over record fields (default: the schema's DQ text).
        group_by: a field whose values group the records (bins are made per group, like
            classes for images).
        limit: read only the first ``limit`` records.

    Raises:
        DataError: on a missing or unreadable file, a malformed line (the message gives its line
            number), a record that is not an object, a missing field, or an empty file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    records: list[dict] = []
    raw: list[bytes] | None = []
    try:
        first = _first_char(path)
        if first == b"[":
            raw = None
            with _open(path) as f:
                try:
                    data = json.load(io.TextIOWrapper(f, encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON array of records")
            records = data[:limit] if limit else data
            for i, r in enumerate(records):
                if not isinstance(r, dict):
                    raise DataError(f"{path}: element {i + 1} of the array is not a JSON object")
        else:
            with _open(path) as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        raise DataError(f"{path}: line {lineno}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
                    if not isinstance(rec, dict):
                        raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
                    records.append(rec)
                    raw.append(line)
                    if limit and len(records) >= limit:
                        break
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not records:
        raise DataError(f"{path}: no records (the dataset is empty)")
    schema = "template" if template else _schema(records[0], str(path))
    texts = []
    for i, rec in enumerate(records):
        try:
            texts.append(template.format_map(rec) if template else default_text(rec, schema))
        except KeyError as exc:
            raise DataError(f"{path}: record {i + 1} has no field {exc} (needed by the template)") from None
        if not template and any(f not in rec for f in SCHEMAS[schema] if f not in ("input", "context")):
            raise DataError(f"{path}: record {i + 1} lacks a field of the {schema} schema {SCHEMAS[schema]}")
    labels, classes = None, []
    if group_by:
        if any(group_by not in r for r in records):
            i = next(i for i, r in enumerate(records) if group_by not in r)
            raise DataError(f"{path}: record {i + 1} has no field '{group_by}' to group by")
        values = [json.dumps(r[group_by], sort_keys=True) if not isinstance(r[group_by], str) else r[group_by] for r in records]
        classes = sorted(set(values))
        index = {c: k for k, c in enumerate(classes)}
        labels = np.array([index[v] for v in values], dtype=np.int64)
    return TextDataset(records, texts, labels, classes, str(path), schema, raw, template)
