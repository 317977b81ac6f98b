"""Seed files in JSON or JSON Lines: their encoding (a byte-order mark, else `input.encoding`),
checked whole in chunks before Ray starts (errors name the file, byte offset and line), and read
into records by a Ray Data stage when pyarrow's own JSON Lines reader cannot (another encoding, a
mark, a JSON array)."""

from __future__ import annotations

import codecs
import json
from typing import List

import pyarrow as pa

from evol_ray.stage import WHOLE_BLOCK, Stage


class InputError(ValueError):
    """Bad seed input; the message names the file and what was expected."""


SCAN_BYTES = 1 << 22
# Byte-order marks and the codec that reads (and drops) each; UTF-32's before UTF-16's, which
# starts the same way.
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _family(codec: str) -> str:
    """utf-8, utf-16 or utf-32 for any spelling, byte order or -sig of them; else the codec's name."""
    name = codecs.lookup(codec).name
    return next((f for f in ("utf-8", "utf-16", "utf-32") if name.startswith(f)), name)


def file_encoding(head: bytes, configured: str, url: str) -> str:
    """The codec for a file whose first bytes are `head`: the one its byte-order mark declares
    (`input.encoding` auto, or a name of the same encoding), else `configured` (auto: UTF-8).
    A mark that contradicts a configured encoding is an error naming both."""
    mark = next((enc for bom, enc in BOMS if head.startswith(bom)), None)
    if mark is None:
        return "utf-8" if configured == "auto" else configured
    if configured != "auto" and _family(configured) != _family(mark):
        raise InputError(f"{url}: starts with a {_family(mark).upper()} byte-order mark, but "
                         f"input.encoding={configured}; set input.encoding=auto (or the file's encoding)")
    return mark


def read_head(fs, path: str) -> bytes:
    with fs.open(path, "rb") as f:
        return f.read(4)


def json_records(fs, path: str, url: str, fmt: str, encoding: str, n: int = 100) -> List[dict]:
    """Check one JSON or JSONL file whole, in chunks: every byte decodes with `encoding` (else an
    error naming the byte offset and line), and it parses (a JSON array, or one object per line;
    errors name the file's line). Returns its first `n` records."""
    encoding = file_encoding(read_head(fs, path), encoding, url)
    dec = codecs.getincrementaldecoder(encoding)()
    offset, lines_before = 0, 0  # bytes read and newlines decoded before the current chunk
    array: List[str] | None = None  # the whole text of a JSON array
    pending, line_no, records = "", 1, []
    with fs.open(path, "rb") as f:
        while True:
            chunk = f.read(SCAN_BYTES)
            held = dec.getstate()[0]  # bytes of a character cut by the previous chunk
            try:
                text = dec.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                data = held + chunk
                at = offset - len(held) + e.start
                line = lines_before + data[:e.start].count(b"\n") + 1
                raise InputError(f"{url}: not valid {encoding} at byte {at} (line {line}): "
                                 f"{data[e.start:e.end]!r} ({e.reason}); set input.encoding to the "
                                 "file's encoding (e.g. latin-1 or cp1252)") from None
            if offset == 0 and text.startswith("\ufeff"):  # a mark the codec keeps (utf-16-le, ...)
                text = text[1:]
            offset += len(chunk)
            lines_before += text.count("\n")
            if array is None and fmt == "json" and not records and not pending.strip() and text.lstrip():
                array = [] if text.lstrip().startswith("[") else None
            if array is not None:
                array.append(text)
            else:
                pending += text
                *done, pending = pending.split("\n")
                if not chunk:
                    done.append(pending)
                for ln in done:
                    if ln.strip():
                        rec = _json_line(ln, url, line_no)
                        if len(records) < n:
                            records.append(rec)
                    line_no += 1
            if not chunk:
                break
    if array is None:
        return records
    try:
        data = json.loads("".join(array))
    except json.JSONDecodeError as e:
        raise InputError(f"{url}: line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise InputError(f"{url}: expected a JSON array of objects, got a JSON {type(data).__name__}")
    return data[:n]


def _json_line(line: str, url: str, line_no: int) -> dict:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{url}: line {line_no} column {e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(rec, dict):
        raise InputError(f"{url}: line {line_no}: expected a JSON object, got a JSON {type(rec).__name__}")
    return rec


def json_file_rows(batch: pa.Table, encoding: str) -> pa.Table:
    """Files read as bytes (`bytes`) -> their records: a JSON array of objects (as Alpaca ships)
    or JSON Lines, decoded with `encoding` (pyarrow reads only UTF-8 JSON Lines, and Ray's own
    fallback warns on every file). The files were checked whole by `check_input`, their
    byte-order marks included."""
    records = []
    for blob in batch.column("bytes").to_pylist():
        text = blob.decode(file_encoding(blob[:4], encoding, "(checked)")).lstrip("\ufeff")
        if text.lstrip().startswith("["):
            records.extend(json.loads(text))
        else:
            records.extend(json.loads(ln) for ln in text.split("\n") if ln.strip())
    return pa.Table.from_pylist(records)


JSON_FILE_ROWS = Stage(json_file_rows, WHOLE_BLOCK)


def is_json_array(fs, path: str) -> bool:
    with fs.open(path, "rb") as f:
        return f.read(4096).decode("utf-8", errors="replace").lstrip().startswith("[")
