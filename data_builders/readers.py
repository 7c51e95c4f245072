"""Readers: raw review dumps on disk -> RawDataset, one interface for every supported layout.

Formats (auto-detected from file names in a folder):

- "amazon2014": `reviews_<Cat>_5.json[.gz]` (JSON lines; reviewerID, asin, overall, unixReviewTime,
  reviewText) + optional `meta_<Cat>.json[.gz]` (one record per line, strict JSON *or* Python literals as
  in most 2014 copies; `categories` is a list of paths: the first path is used; `description` a string).
- "amazon2018": `<Cat>_5.json[.gz]` + optional `meta_<Cat>.json[.gz]` (`category` a list of strings,
  `description` a list of strings that may hold HTML: tags stripped, entities unescaped, joined).
- "atomic": RecBole atomic files `<name>.inter` (+ optional `<name>.item`), tab-separated with a typed
  header `field:type`; `user_id` and `item_id` required, `rating` and `timestamp` optional; `.item`
  fields title, brand, categories (token_seq joined with " | "), description, price.

Bad input: in strict mode the first bad line raises `DataFormatError` naming file, line and field; in
lenient mode (the default) each bad line is skipped and counted by reason in the `ReadReport`, which keeps
the first examples. Truncated gzip streams are reported the same way (the unreadable tail is one skip).
An empty file is always an error. A missing metadata file is not: `items` is empty and the fact recorded
in `RawDataset.source`.
"""
from __future__ import annotations

import ast
import hashlib
import html
import json
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from .records import Interaction, ItemMeta, RawDataset, ReadReport
from .sources import fetch, source_files
from .textclean import clean_text, has_control_chars

FORMATS = ("amazon2014", "amazon2018", "atomic")

_TAG = re.compile(r"</?[A-Za-z][^<>]*>")  # an HTML tag; a lone "<" in text is left alone
_OPEN_TAG = re.compile(r"<[A-Za-z][^<>]*$")  # a tag cut off at the end (2018 titles: '<span class="a-size')
_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
RATING_RANGE = (1.0, 5.0)  # Amazon star ratings; anything else is a corrupt or foreign value, not a preference
MAX_LINE_BYTES = 8 << 20  # a longer line is skipped (counted) instead of filling memory
_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


class DataFormatError(ValueError):
    """A bad input file or line; the message reads "file:line: field: message"."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field = str(path), line, field
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class _BadLine(Exception):
    """Internal: one bad line, with the skip reason and field."""

    def __init__(self, reason: str, field: str, message: str):
        super().__init__(message)
        self.reason, self.field, self.message = reason, field, message


# --------------------------------------------------------------------------------------------------
# Public interface
# --------------------------------------------------------------------------------------------------


def read_source(path: str | Path, format: str = "auto", strict: bool = False, name: str | None = None) -> RawDataset:
    """Read a folder (or one interactions file) of raw data into a RawDataset.

    Args:
        path: a folder holding one dataset's files, or the interactions file itself
            (`reviews_<Cat>_5.json.gz`, `<Cat>_5.json.gz` or `<name>.inter`); metadata is looked up beside it.
            An absent official Amazon reviews file is downloaded first, with its metadata.
        format: "auto" (from file names), "amazon2014", "amazon2018" or "atomic".
        strict: raise on the first bad line instead of counting skips.
        name: dataset name; defaults to the category / file stem.

    Raises:
        FileNotFoundError: `path` does not exist and is not an official Amazon reviews file name.
        sources.DownloadUnavailable: an official reviews file (``reviews_<Cat>_5.json.gz`` / ``<Cat>_5.json.gz``)
            is absent and could not be downloaded (offline: the message says what to put where).
        DataFormatError: unknown or ambiguous layout, empty file, or (strict) a bad line.
    """
    path = Path(path)
    if not path.exists():
        _fetch_official_file(path)
    if format not in ("auto", *FORMATS):
        raise ValueError(f"unknown format {format!r}; expected 'auto' or one of {FORMATS}")
    fmt, main, meta, stem = _detect(path, format)
    if fmt == "atomic":
        return read_atomic(main, meta, strict=strict, name=name or stem)
    reader = read_amazon2014 if fmt == "amazon2014" else read_amazon2018
    return reader(main, meta, strict=strict, name=name or stem)


def read_amazon2014(
    reviews_path: str | Path, meta_path: str | Path | None = None, strict: bool = False, name: str | None = None
) -> RawDataset:
    """Amazon 2014 raw files: reviews JSON lines + metadata (strict JSON or Python literals)."""
    return _read_amazon(Path(reviews_path), meta_path, strict, name, release="amazon2014")


def read_amazon2018(
    reviews_path: str | Path, meta_path: str | Path | None = None, strict: bool = False, name: str | None = None
) -> RawDataset:
    """Amazon 2018 raw files: reviews JSON lines + metadata (category list, HTML description list)."""
    return _read_amazon(Path(reviews_path), meta_path, strict, name, release="amazon2018")


def read_atomic(
    inter_path: str | Path, item_path: str | Path | None = None, strict: bool = False, name: str | None = None
) -> RawDataset:
    """RecBole atomic files: `.inter` (user_id, item_id, optional rating/timestamp) + optional `.item`."""
    inter_path = Path(inter_path)
    report = ReadReport()
    files = [_file_record(inter_path)]
    interactions: list[Interaction] = []

    header, rows = _tsv(inter_path, strict, report)
    cols = _columns(inter_path, header, required=("user_id", "item_id"))
    u_col, i_col = cols["user_id"], cols["item_id"]
    r_col, t_col = cols.get("rating"), cols.get("timestamp")
    ids: dict[str, str] = {}  # one string object per distinct id: 10M events repeat 1.2M ids (~1 GB of copies)
    for lineno, parts in rows:
        try:
            user = ids.setdefault(u := _required_token(parts[u_col], "user_id"), u)
            item = ids.setdefault(i := _required_token(parts[i_col], "item_id"), i)
            rating = _rating(parts[r_col], "rating") if r_col is not None else None
            ts = _timestamp(parts[t_col], "timestamp") if t_col is not None else None
        except _BadLine as bad:
            _bad(inter_path, lineno, bad, strict, report)
            continue
        interactions.append(Interaction(user=user, item=item, rating=rating, timestamp=ts))

    _require_rows(inter_path, interactions, report)
    items: dict[str, ItemMeta] = {}
    meta_note = "absent"
    if item_path is not None and Path(item_path).exists():
        item_path = Path(item_path)
        files.append(_file_record(item_path))
        wanted = {r.item for r in interactions}
        header, rows = _tsv(item_path, strict, report)
        cols = _columns(item_path, header, required=("item_id",))
        for lineno, parts in rows:
            try:
                item = _required_token(parts[cols["item_id"]], "item_id")
                meta = ItemMeta(
                    title=_text(parts[cols["title"]]) if "title" in cols else None,
                    brand=_text(parts[cols["brand"]]) if "brand" in cols else None,
                    categories=_category_seq(parts[cols["categories"]]) if "categories" in cols else [],
                    description=_text(parts[cols["description"]], strip_tags=True) if "description" in cols else None,
                    price=_price(parts[cols["price"]], "price") if "price" in cols else None,
                )
            except _BadLine as bad:
                _bad(item_path, lineno, bad, strict, report)
                continue
            meta = _clean_meta(meta, item_path, lineno, report)
            _add_meta(items, item, meta, wanted, report, item_path, lineno)
        meta_note = "read"
    elif item_path is not None:
        meta_note = f"missing: {item_path}"

    return RawDataset(
        name=name or inter_path.stem,
        interactions=interactions,
        items=items,
        reviews={},
        report=report,
        source={
            "format": "atomic",
            "files": files,
            "metadata": meta_note,
            "has_rating": r_col is not None,
            "has_timestamp": t_col is not None,
            "rows_read": len(interactions),
        },
    )


# --------------------------------------------------------------------------------------------------
# Amazon JSON-lines formats
# --------------------------------------------------------------------------------------------------


def _read_amazon(reviews_path: Path, meta_path, strict: bool, name: str | None, release: str) -> RawDataset:
    report = ReadReport()
    files = [_file_record(reviews_path)]
    interactions: list[Interaction] = []
    reviews: dict[tuple[str, str], str] = {}
    ids: dict[str, str] = {}  # one string object per distinct id (see read_atomic)
    for lineno, record in _records(reviews_path, strict, report):
        try:
            user = ids.setdefault(u := _required_str(record, "reviewerID"), u)
            item = ids.setdefault(i := _required_str(record, "asin"), i)
            if "overall" not in record:
                raise _BadLine("missing_field", "overall", "missing required field")
            rating = _rating(record["overall"], "overall")
            ts = _timestamp(record["unixReviewTime"], "unixReviewTime") if "unixReviewTime" in record else None
        except _BadLine as bad:
            _bad(reviews_path, lineno, bad, strict, report)
            continue
        interactions.append(Interaction(user=user, item=item, rating=rating, timestamp=ts))
        text = record.get("reviewText")
        text = _text(text) if isinstance(text, str) else None
        if text:
            text = _clean_field(text, reviews_path, lineno, "reviewText", report)
        if text and (user, item) not in reviews:  # duplicates: the first non-empty review wins
            reviews[(user, item)] = text

    _require_rows(reviews_path, interactions, report)
    items: dict[str, ItemMeta] = {}
    meta_note = "absent"
    if meta_path is not None and Path(meta_path).exists():
        meta_path = Path(meta_path)
        files.append(_file_record(meta_path))
        wanted = {r.item for r in interactions}
        parse = _meta_2014 if release == "amazon2014" else _meta_2018
        for lineno, record in _records(meta_path, strict, report, literals=True):
            try:
                item = _required_str(record, "asin")
                meta = parse(record)
            except _BadLine as bad:
                _bad(meta_path, lineno, bad, strict, report)
                continue
            meta = _clean_meta(meta, meta_path, lineno, report)
            price = record.get("price")
            if meta.price is None and price not in (None, "") and item in wanted:
                # the item is kept; only its price field is dropped, and counted
                report.add("unparsed_price", f"{meta_path.name}:{lineno}: price: not a price: {str(price)[:60]!r}")
            _add_meta(items, item, meta, wanted, report, meta_path, lineno)
        meta_note = "read"
    elif meta_path is not None:
        meta_note = f"missing: {meta_path}"

    return RawDataset(
        name=name or _category(reviews_path.name, release) or reviews_path.stem,
        interactions=interactions,
        items=items,
        reviews=reviews,
        report=report,
        source={
            "format": release,
            "files": files,
            "metadata": meta_note,
            "has_rating": True,
            "has_timestamp": any(r.timestamp is not None for r in interactions),
            "rows_read": len(interactions),
        },
    )


def _meta_2014(record: dict) -> ItemMeta:
    cats = record.get("categories")
    path: list[str] = []
    if isinstance(cats, list) and cats:
        first = cats[0]
        path = _category_list(first if isinstance(first, list) else cats)
    return ItemMeta(
        title=_text(record.get("title")),
        brand=_text(record.get("brand")),
        categories=path,
        description=_text(record.get("description"), strip_tags=True),
        price=_price(record.get("price"), "price"),
    )


def _meta_2018(record: dict) -> ItemMeta:
    desc = record.get("description")
    if isinstance(desc, list):
        desc = " ".join(d for d in (_text(x, strip_tags=True) for x in desc) if d)
    cats = record.get("category")
    return ItemMeta(
        title=_text(record.get("title"), strip_tags=True),
        brand=_text(record.get("brand")),
        categories=_category_list(cats) if isinstance(cats, list) else [],
        description=_text(desc, strip_tags=True),
        price=_price(record.get("price"), "price"),
    )


def _clean_field(text: str | None, path: Path, lineno: int, field_name: str, report: ReadReport) -> str | None:
    """Untrusted text made safe (textclean): each change counted with file:line: field."""
    if not text:
        return text
    cleaned, reasons = clean_text(text)
    for reason in reasons:
        report.note_change(reason, f"{path.name}:{lineno}: {field_name}: {reason.replace('_', ' ')}")
    return cleaned.strip() or None


def _clean_meta(meta: ItemMeta, path: Path, lineno: int, report: ReadReport) -> ItemMeta:
    cats = [c for c in (_clean_field(c, path, lineno, "categories", report) for c in meta.categories) if c]
    return ItemMeta(
        title=_clean_field(meta.title, path, lineno, "title", report),
        brand=_clean_field(meta.brand, path, lineno, "brand", report),
        categories=cats,
        description=_clean_field(meta.description, path, lineno, "description", report),
        price=meta.price,
    )


def _add_meta(items: dict, item: str, meta: ItemMeta, wanted: set, report: ReadReport, path: Path, lineno: int):
    """Keep metadata of items that have interactions; count duplicates (first record wins)."""
    if item not in wanted:
        return  # metadata of items nobody interacted with is not data loss; the count is in the source record
    if item in items:
        report.add("duplicate_metadata", f"{path.name}:{lineno}: item: duplicate metadata record for {item!r}, first kept")
        return
    items[item] = meta


# --------------------------------------------------------------------------------------------------
# Line-level parsing helpers
# --------------------------------------------------------------------------------------------------


def _lines(path: Path, strict: bool, report: ReadReport) -> Iterator[tuple[int, str]]:
    """(line number, text) of a plain or gzip file; truncation and bad bytes are errors or counted skips."""
    lineno = 0
    data_lines = 0
    truncated = None
    raw_lines = _raw_lines(path)
    while True:
        try:
            raw = next(raw_lines)
        except StopIteration:
            break
        except _Truncated as err:  # truncated or corrupt gzip stream: the complete lines before it were kept
            truncated = err
            bad = _BadLine("truncated_file", "<file>", f"compressed file is truncated or corrupt after line {lineno} ({err}); re-download it")
            _bad(path, lineno + 1, bad, strict, report)
            break
        lineno += 1
        if raw is None:
            _bad(path, lineno, _BadLine("line_too_long", "<line>", f"line longer than {MAX_LINE_BYTES:,} bytes"), strict, report)
            continue
        if lineno == 1:
            for bom, name in _BOMS.items():
                if raw.startswith(bom):
                    raise DataFormatError(path, 1, None, f"file is {name}-encoded; convert it to UTF-8 (e.g. iconv -f {name} -t UTF-8)")
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is harmless
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            _bad(path, lineno, _BadLine("bad_encoding", "<line>", f"not UTF-8 ({err})"), strict, report)
            continue
        if not text.strip():
            _bad(path, lineno, _BadLine("blank_line", "<line>", "blank line"), strict, report)
            continue
        data_lines += 1
        yield lineno, text.rstrip("\r\n")
    if data_lines == 0:  # always an error, lenient or not: there is nothing to read
        if truncated is not None:
            raise DataFormatError(path, lineno + 1, None, f"compressed file is truncated or corrupt before its first complete line ({truncated}); re-download it")
        raise DataFormatError(path, None, None, f"file is empty (no data lines in {lineno} lines)")


class _Truncated(Exception):
    """A gzip stream that ends early or is corrupt."""


def _byte_chunks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of a plain or gzip (possibly multi-member) file; raises _Truncated for a bad stream.

    zlib is driven directly so every byte before the damage is delivered (GzipFile loses its buffered block).
    """
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            fh.seek(0)
            yield from iter(lambda: fh.read(1 << 20), b"")
            return
        fh.seek(0)
        d = zlib.decompressobj(zlib.MAX_WBITS | 16)
        started = False
        for chunk in iter(lambda: fh.read(1 << 16), b""):  # small pieces: lines before a corrupt spot still arrive
            while chunk:
                if d.eof:  # next gzip member (or trailing padding)
                    if not chunk.strip(b"\x00"):
                        break
                    d = zlib.decompressobj(zlib.MAX_WBITS | 16)
                try:
                    out = d.decompress(chunk, 1 << 22)  # bounded output per call (decompression bombs)
                except zlib.error as err:
                    raise _Truncated(f"corrupt data: {err}") from None
                started = True
                if out:
                    yield out
                chunk = d.unused_data if d.eof else d.unconsumed_tail
        if started and not d.eof:
            try:
                rest = d.flush()
            except zlib.error:
                rest = b""
            if rest:
                yield rest
            raise _Truncated("stream ends early")


def _raw_lines(path: Path) -> Iterator[bytes | None]:
    """Lines as bytes (newline kept off); None for a line over MAX_LINE_BYTES (its bytes are dropped)."""
    buf = b""
    too_long = False
    chunks = _byte_chunks(path)
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            break
        except _Truncated:
            # the last, incomplete line is part of the damage: do not deliver it
            raise
        buf += chunk
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            if too_long or nl - start > MAX_LINE_BYTES:
                yield None
                too_long = False
            else:
                yield buf[start:nl]
            start = nl + 1
        buf = buf[start:]
        if len(buf) > MAX_LINE_BYTES:
            buf, too_long = b"", True
    if too_long:
        yield None
    elif buf:
        yield buf


def _records(path: Path, strict: bool, report: ReadReport, literals: bool = False) -> Iterator[tuple[int, dict]]:
    """JSON objects per line; with `literals`, Python-literal lines (2014 metadata) are accepted too."""
    for lineno, text in _lines(path, strict, report):
        try:
            record = json.loads(text)
        except (ValueError, RecursionError) as err:
            record = None
            if literals:
                try:
                    record = ast.literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    record = None
            if record is None:
                _bad(path, lineno, _BadLine("malformed_json", "<line>", f"not a JSON object ({err})"), strict, report)
                continue
        if not isinstance(record, dict):
            _bad(path, lineno, _BadLine("malformed_json", "<line>", f"expected an object, got {type(record).__name__}"), strict, report)
            continue
        yield lineno, record


def _tsv(path: Path, strict: bool, report: ReadReport) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """Header fields and an iterator of (line number, fields) with the header's column count."""
    lines = _lines(path, strict, report)
    try:
        _, header_line = next(lines)
    except StopIteration:
        raise DataFormatError(path, 1, None, "file is empty (no header)") from None
    header = header_line.split("\t")

    def rows() -> Iterator[tuple[int, list[str]]]:
        for lineno, text in lines:
            parts = text.split("\t")
            if len(parts) != len(header):
                bad = _BadLine("wrong_column_count", "<line>", f"{len(parts)} tab-separated fields, header has {len(header)}")
                _bad(path, lineno, bad, strict, report)
                continue
            yield lineno, parts

    return header, rows()


def _columns(path: Path, header: list[str], required: tuple[str, ...]) -> dict[str, int]:
    """Map a typed atomic header (`user_id:token`) to column indices; required fields must be present."""
    cols = {}
    for k, h in enumerate(header):
        field_name, _, ftype = h.partition(":")
        if not ftype:
            raise DataFormatError(path, 1, h, "atomic header fields must be typed as name:type (e.g. user_id:token)")
        cols[field_name.strip()] = k
    missing = [r for r in required if r not in cols]
    if missing:
        raise DataFormatError(path, 1, ",".join(missing), f"missing required column(s); header has {header}")
    return cols


def _require_rows(path: Path, interactions: list, report: ReadReport) -> None:
    if not interactions:
        raise DataFormatError(path, None, None, f"no valid interactions (skipped: {report.skipped or 'none'}; first: {report.examples[:3]})")


def _bad(path: Path, lineno: int, bad: _BadLine, strict: bool, report: ReadReport) -> None:
    if strict:
        raise DataFormatError(path, lineno, bad.field, bad.message)
    report.add(bad.reason, f"{path.name}:{lineno}: {bad.field}: {bad.message}")


def _required_str(record: dict, key: str) -> str:
    value = record.get(key)
    if value is None:
        raise _BadLine("missing_field", key, "missing required field")
    if not isinstance(value, str) or not value.strip():
        raise _BadLine("missing_field", key, f"expected a non-empty string, got {_short(value)}")
    return _checked_id(value.strip(), key)


def _required_token(value: str, key: str) -> str:
    value = value.strip()
    if not value:
        raise _BadLine("missing_field", key, "empty value")
    return _checked_id(value, key)


def _checked_id(value: str, key: str) -> str:
    """A raw user/item id: no control characters or lone surrogates (it is stored, printed and hashed)."""
    if has_control_chars(value):
        raise _BadLine("bad_id", key, f"control characters in the id {_short(value)}")
    return value


def _short(value, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


def _rating(value, key: str) -> float:
    if isinstance(value, bool) or value is None:
        raise _BadLine("non_numeric_rating", key, f"not a number: {_short(value)}")
    try:
        rating = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _BadLine("non_numeric_rating", key, f"not a number: {_short(value)}") from None
    if not math.isfinite(rating):
        raise _BadLine("non_numeric_rating", key, f"not a finite number: {_short(value)}")
    lo, hi = RATING_RANGE
    if not lo <= rating <= hi:
        raise _BadLine("rating_out_of_range", key, f"{_short(value)} is outside {lo:g}-{hi:g}")
    return rating


def _timestamp(value, key: str) -> int:
    if isinstance(value, bool):
        raise _BadLine("bad_timestamp", key, f"not an integer timestamp: {_short(value)}")
    try:
        ts = float(value)
    except (TypeError, ValueError, OverflowError):
        raise _BadLine("bad_timestamp", key, f"not an integer timestamp: {_short(value)}") from None
    if not math.isfinite(ts) or abs(ts) >= 2**62:  # must fit the int64 arrays downstream
        raise _BadLine("bad_timestamp", key, f"not a finite timestamp in range: {_short(value)}")
    return int(ts)


def _price(value, key: str) -> float | None:
    """Numbers, or strings like "$12.99" / "$5.00 - $9.00" (first number); empty -> None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            value = float(value)
        except OverflowError:
            return None
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        if not value.strip():
            return None
        match = _NUMBER.search(value)
        if match is None:
            return None
        # "$12.99" or "$5.00 - $9.00" (first number) or a bare number; other strings (2018 metadata
        # sometimes holds page markup here) are not prices
        if "$" in value or value.strip() == match.group():
            price = float(match.group().replace(",", ""))
            return price if math.isfinite(price) else None
        return None
    return None


def _text(value, strip_tags: bool = False) -> str | None:
    """Entities unescaped, optional HTML tags removed, whitespace collapsed; empty -> None."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    if strip_tags:
        value = _TAG.sub(" ", value)
    value = html.unescape(value)
    if strip_tags:
        value = _OPEN_TAG.sub(" ", _TAG.sub(" ", value))  # also tags written as entities (&lt;b&gt;)
    value = _SPACE.sub(" ", value).strip()
    return value or None


def _category_list(values: list) -> list[str]:
    """Cleaned category path; empty names and immediate repeats ("Gift Cards", "Gift Cards") dropped."""
    out: list[str] = []
    for v in values:
        name = _text(v, strip_tags=True) if isinstance(v, str) else None
        if name and (not out or out[-1] != name):
            out.append(name)
    return out


def _category_seq(value: str) -> list[str]:
    return _category_list(value.split("|")) if value.strip() else []


# --------------------------------------------------------------------------------------------------
# Files and layout detection
# --------------------------------------------------------------------------------------------------

_RE_2014 = re.compile(r"^reviews_(?P<cat>.+?)(?:_5)?\.json(?:\.gz)?$")
_RE_2018 = re.compile(r"^(?!reviews_|meta_)(?P<cat>.+?)_5\.json(?:\.gz)?$")
_RE_META = re.compile(r"^meta_(?P<cat>.+?)\.json(?:\.gz)?$")


def _category(filename: str, release: str) -> str | None:
    m = (_RE_2014 if release == "amazon2014" else _RE_2018).match(filename)
    return m.group("cat") if m else None


def _meta_for(folder: Path, cat: str) -> Path:
    for candidate in (folder / f"meta_{cat}.json.gz", folder / f"meta_{cat}.json"):
        if candidate.exists():
            return candidate
    return folder / f"meta_{cat}.json.gz"  # absent: recorded as missing metadata


def _detect(path: Path, format: str) -> tuple[str, Path, Path | None, str]:
    """(format, main file, metadata file or None, stem) from a folder or a main file."""
    if path.is_file():
        folder, names = path.parent, [path.name]
    else:
        folder, names = path, sorted(p.name for p in path.iterdir() if p.is_file())
    found: list[tuple[str, Path, Path | None, str]] = []
    for n in names:
        if format in ("auto", "atomic") and n.endswith(".inter"):
            stem = n[: -len(".inter")]
            found.append(("atomic", folder / n, folder / f"{stem}.item", stem))
        elif format in ("auto", "amazon2014") and (m := _RE_2014.match(n)):
            found.append(("amazon2014", folder / n, _meta_for(folder, m.group("cat")), m.group("cat")))
        elif format in ("auto", "amazon2018") and (m := _RE_2018.match(n)):
            found.append(("amazon2018", folder / n, _meta_for(folder, m.group("cat")), m.group("cat")))
    if path.is_file() and not found and format != "auto":
        # an explicitly named format for a file with a non-standard name: trust the caller
        meta = path.with_suffix(".item") if format == "atomic" else None
        return format, path, meta, path.name.split(".")[0]
    if not found:
        raise DataFormatError(
            path, None, None,
            f"cannot recognise the data format (asked: {format}); found files {names[:20]}; expected "
            "reviews_<Cat>_5.json[.gz] + meta_<Cat>.json[.gz] (Amazon 2014), <Cat>_5.json[.gz] + "
            "meta_<Cat>.json[.gz] (Amazon 2018) or <name>.inter [+ <name>.item] (RecBole atomic)",
        )
    if len(found) > 1:
        listing = ", ".join(f"{f[1].name} ({f[0]})" for f in found)
        raise DataFormatError(path, None, None, f"several datasets found ({listing}); pass one file as the path")
    return found[0]


def _fetch_official_file(path: Path) -> None:
    """An absent official Amazon reviews file (``reviews_<Cat>_5.json.gz`` 2014, ``<Cat>_5.json.gz`` 2018) is
    downloaded into its folder with its metadata (``sources.fetch``; offline, the error names each file and
    where to put it). Any other absent path is a FileNotFoundError."""
    for release, pattern in (("2014", _RE_2014), ("2018", _RE_2018)):
        m = pattern.match(path.name)
        if m and source_files(m.group("cat"), release)["reviews"][0] == path.name:
            fetch(m.group("cat"), release, path.parent)
            return
    raise FileNotFoundError(f"{path}: no such file or folder")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _file_record(path: Path) -> dict:
    """Name, size and sha256 of an input file, so a manifest proves which bytes were read."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return {"path": str(path), "name": path.name, "bytes": path.stat().st_size, "sha256": digest.hexdigest()}
