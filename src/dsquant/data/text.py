"""Instruction-tuning and other text records: JSON arrays or JSON Lines, plain or gzipped.

Recognised record schemas (the first record decides; every record must have the fields):

| schema | fields embedded (DQ's template) |
|---|---|
| alpaca | ``instruction``, ``input`` (skipped when empty), ``output`` |
| dolly | ``instruction``, ``context`` (skipped when empty), ``response`` |
| prompt/completion | ``prompt``, ``completion`` |
| text | ``text`` (e.g. Banking77) |

A ``template`` string such as ``"{instruction}\\n{output}"`` overrides the default. Templates
take plain field names only: no attribute or index access (``{a.b}``, ``{a[0]}``), no
conversions or format specs (``{a!r}``, ``{a:>9}``), no positional fields (``{}``, ``{0}``).

Field values: a field that is embedded must be a JSON string. ``null`` or a missing value counts
as empty in the optional fields ``input`` and ``context`` (in a template too); any other value
(a number, boolean, array, object, or ``null`` elsewhere) is refused, naming the file, the record
(and line) and the field. ``--group-by`` values must be strings or integers (an integer groups as
its decimal text, so ``5`` and ``"5"`` are one group); other values are refused the same way.

Text: lone UTF-16 surrogates (``"\\ud800"`` escapes, which cannot be encoded as UTF-8) are
replaced by U+FFFD in the embedded text; the records themselves are untouched. A group value
holding one is refused (group names must be valid text). A UTF-8 byte order mark at the start of
the file is skipped (JSON arrays and JSON Lines). Nesting too deep for the JSON parser is
refused with the line number.

Records pass through untouched: JSON Lines are kept as their original lines (a leading byte order
mark aside), so an export holds the same keys, values and order byte for byte.

Errors are :class:`~dsquant.data.DataError` with a one-line message naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .images import DataError, check_regular_file

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


OPTIONAL_FIELDS = ("input", "context")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BOM = b"\xef\xbb\xbf"


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _field_text(record: dict, name: str, where: str) -> str:
    """The string value of an embedded field (module docstring rules); ``where`` locates the
    record in messages."""
    value = record.get(name)
    if isinstance(value, str):
        return value
    if value is None and name in OPTIONAL_FIELDS:
        return ""
    raise DataError(f"{where}: field '{name}' must be a string, got {_json_kind(value)}")


def default_text(record: dict, schema: str, where: str = "record") -> str:
    """The text DQ embeds for a record: the schema's fields joined by spaces, empty optional
    fields (``input``, ``context``) skipped, newlines turned into spaces (alpaca_embed.py).

    Raises:
        DataError: if a field is not a string (``null`` is empty in an optional field).
    """
    parts = [_field_text(record, f, where) for f in SCHEMAS[schema]]
    text = " ".join(p for p in parts if p != "")
    return text.replace("\n", " ")


def _parse_template(template: str) -> list[tuple[str, str | None]]:
    """(literal text, field name or None) pieces of a template of plain field names.

    Raises:
        DataError: naming the template and the offending field.
    """
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise DataError(f"template {template!r}: {exc}") from None
    out = []
    for literal, name, spec, conversion in pieces:
        if name is not None:
            bad = (
                name == "" or name.isdigit() or any(c in name for c in ".[]{}") or spec or conversion
            )
            if bad:
                field = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise DataError(
                    f"template {template!r}: field {field} is not allowed; use plain field names "
                    f"such as {{instruction}} (no attributes, indexes, conversions or format specs)"
                )
        out.append((literal, name))
    return out


def _fill(pieces: list[tuple[str, str | None]], record: dict, where: str) -> str:
    parts = []
    for literal, name in pieces:
        parts.append(literal)
        if name is not None:
            parts.append(_field_text(record, name, where))
    return "".join(parts)


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
                    try:
                        line = (json.dumps(self.records[i], ensure_ascii=False) + "\n").encode("utf-8")
                    except UnicodeEncodeError:  # a lone surrogate: keep it as its \uXXXX escape
                        line = (json.dumps(self.records[i]) + "\n").encode("ascii")
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
        if f.read(3) != _BOM:
            f.seek(0)
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
        template: a template of plain field names such as ``"{instruction} {output}"``
            (default: the schema's DQ text).
        group_by: a field whose values (strings or integers) group the records (bins are made
            per group, like classes for images).
        limit: read only the first ``limit`` records.

    Raises:
        DataError: on a missing, non-regular or unreadable file, a malformed line (the message
            gives its line number), JSON nested too deeply, a record that is not an object, a
            missing field, a field value that is not a string, a group value that is not a
            string or integer, a template that is not plain field names, or an empty file.
    """
    path = Path(path)
    check_regular_file(path)
    pieces = _parse_template(template) if template else None
    records: list[dict] = []
    raw: list[bytes] | None = []
    lines: list[int] = []
    try:
        first = _first_char(path)
        if first == b"[":
            raw = None
            with _open(path) as f:
                try:
                    data = json.load(io.TextIOWrapper(f, encoding="utf-8-sig"))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}: not valid UTF-8 ({exc.reason})") from None
                except RecursionError:
                    raise DataError(f"{path}: JSON nested too deeply to parse; expected an array of flat records") from None
            if not isinstance(data, list):
                raise DataError(f"{path}: expected a JSON array of records")
            records = data[:limit] if limit else data
            for i, r in enumerate(records):
                if not isinstance(r, dict):
                    raise DataError(f"{path}: element {i + 1} of the array is not a JSON object")
        else:
            with _open(path) as f:
                for lineno, line in enumerate(f, 1):
                    if lineno == 1 and line.startswith(_BOM):
                        line = line[len(_BOM) :]
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        raise DataError(f"{path}: line {lineno}: invalid JSON ({getattr(exc, 'msg', exc)})") from None
                    except RecursionError:
                        raise DataError(f"{path}: line {lineno}: JSON nested too deeply to parse; expected a flat record") from None
                    if not isinstance(rec, dict):
                        raise DataError(f"{path}: line {lineno}: expected a JSON object, got {type(rec).__name__}")
                    records.append(rec)
                    raw.append(line)
                    lines.append(lineno)
                    if limit and len(records) >= limit:
                        break
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not records:
        raise DataError(f"{path}: no records (the dataset is empty)")

    def where(i: int) -> str:
        return f"{path}: record {i + 1}" + (f" (line {lines[i]})" if lines else "")

    schema = "template" if template else _schema(records[0], str(path))
    texts = []
    for i, rec in enumerate(records):
        if pieces is not None:
            missing = next((n for _, n in pieces if n is not None and n not in rec and n not in OPTIONAL_FIELDS), None)
            if missing is not None:
                raise DataError(f"{path}: record {i + 1} has no field '{missing}' (needed by the template)")
            text = _fill(pieces, rec, where(i))
        else:
            if any(f not in rec for f in SCHEMAS[schema] if f not in OPTIONAL_FIELDS):
                raise DataError(f"{path}: record {i + 1} lacks a field of the {schema} schema {SCHEMAS[schema]}")
            text = default_text(rec, schema, where(i))
        texts.append(_SURROGATE.sub("\ufffd", text))
    labels, classes = None, []
    if group_by:
        values = []
        for i, r in enumerate(records):
            if group_by not in r:
                raise DataError(f"{path}: record {i + 1} has no field '{group_by}' to group by")
            v = r[group_by]
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise DataError(f"{where(i)}: group field '{group_by}' must be a string or an integer, got {_json_kind(v)}")
            if isinstance(v, str) and _SURROGATE.search(v):
                raise DataError(f"{where(i)}: group field '{group_by}' holds a lone surrogate ({v!a}); expected valid text")
            values.append(v if isinstance(v, str) else str(v))
        classes = sorted(set(values))
        index = {c: k for k, c in enumerate(classes)}
        labels = np.array([index[v] for v in values], dtype=np.int64)
    return TextDataset(records, texts, labels, classes, str(path), schema, raw, template)
