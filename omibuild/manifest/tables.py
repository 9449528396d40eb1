"""Tables in the model repository: explain's background, drift's and defense's reference.

Read once, streaming, bounded; every problem is one line naming the file's line; the rows
kept are a fixed-seed sample, so the same file gives the same bytes on every machine. Pure
Python: the build host needs no numpy (the image's own libraries use the result)."""

from __future__ import annotations

import csv
import io
import json
import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omibuild.runtime.categories import category_key

MAX_TABLE_BYTES = 256 << 20
MAX_COLUMNS = 10_000
MAX_CELL = 1 << 16  # characters in one CSV field
MAX_CATEGORIES = 1000  # categories a column's facts list; a column with more has no set
SEED = 0

Cell = str | float | None


class TableError(ValueError):
    """A table that cannot be used; the message names the file and, where known, the line."""


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]  # the selected columns, in the model's order
    kinds: tuple[str, ...]  # "numeric" or "categorical", per column
    rows: tuple[tuple[Cell, ...], ...]  # the sample, in file order; None is a missing value
    total_rows: int
    # per column, over every row (not the sample), when asked for: defense's guard
    facts: tuple[Facts, ...] = ()


@dataclass
class Facts:
    """What every row of one column says: the numbers' range, whether a value is missing, the
    categories seen (None past MAX_CATEGORIES)."""

    low: float | None = None
    high: float | None = None
    missing: bool = False
    categories: set[str] | None = None

    def see(self, value: Any) -> None:
        if _missing(value):
            self.missing = True
            return
        number = _number(value)
        if number is not None:
            self.low = number if self.low is None else min(self.low, number)
            self.high = number if self.high is None else max(self.high, number)
        if self.categories is not None:
            self.categories.add(category_key(value) or "")
            if len(self.categories) > MAX_CATEGORIES:
                self.categories = None


def read_table(
    path: Path,
    shown: str,
    *,
    columns: Sequence[str] = (),
    exclude: Sequence[str] = (),
    categorical: Sequence[str] = (),
    samples: int,
    numeric_only: bool = False,
    facts: bool = False,
) -> Table:
    """A sample of ``samples`` rows of the table at ``path`` (called ``shown`` in messages),
    reservoir-sampled with a fixed seed. ``numeric_only``: every selected value must be a number
    (SHAP's masker takes numbers). ``facts``: also each column's Facts over every row."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise TableError(f"{shown}: cannot read it ({exc.strerror})") from None
    if size > MAX_TABLE_BYTES:
        raise TableError(
            f"{shown}: {size} bytes, more than the {MAX_TABLE_BYTES >> 20} MiB a table may hold "
            "(keep a sample of it in the repository)"
        )
    with _rows(path, shown) as (header, rows):
        picked = _select(header, shown, columns, exclude, categorical)
        seen = [Facts(categories=set()) for _ in picked] if facts else []
        table = _sample(header, rows, shown, picked, categorical, samples, numeric_only, seen)
    return table


def _sample(
    header: list[str],
    rows: Iterator[tuple[str, list[Any]]],
    shown: str,
    picked: list[str],
    categorical: Sequence[str],
    samples: int,
    numeric_only: bool,
    facts: list[Facts],
) -> Table:
    rng = random.Random(SEED)
    kept: list[tuple[int, list[Any]]] = []
    numeric = [name not in categorical for name in picked]
    index = [header.index(name) for name in picked]
    total = 0
    for where, row in rows:
        if len(row) != len(header):
            raise TableError(
                f"{shown} {where}: {len(row)} values in a table of {len(header)} columns"
            )
        values = [row[i] for i in index]
        for fact, value in zip(facts, values, strict=False):
            fact.see(value)
        for j, value in enumerate(values):
            if numeric[j] and _number(value) is None and not _missing(value):
                if numeric_only:
                    raise TableError(
                        f"{shown} {where}: column `{picked[j]}` is not a number "
                        "(the explainer takes numeric columns; leave others out with `exclude`)"
                    )
                numeric[j] = False
            elif numeric_only and _missing(value):
                raise TableError(f"{shown} {where}: column `{picked[j]}` has no value")
        total += 1
        if len(kept) < samples:
            kept.append((total, values))
        else:
            slot = rng.randrange(total)
            if slot < samples:
                kept[slot] = (total, values)
    if total == 0:
        raise TableError(f"{shown}: no rows below the header")
    kept.sort(key=lambda item: item[0])
    kinds = tuple("numeric" if n else "categorical" for n in numeric)
    return Table(
        columns=tuple(picked),
        kinds=kinds,
        rows=tuple(
            tuple(_cell(v, k) for v, k in zip(vals, kinds, strict=True)) for _, vals in kept
        ),
        total_rows=total,
        facts=tuple(facts),
    )


def _select(
    header: list[str],
    shown: str,
    columns: Sequence[str],
    exclude: Sequence[str],
    categorical: Sequence[str],
) -> list[str]:
    for field, names in (("columns", columns), ("exclude", exclude), ("categorical", categorical)):
        unknown = [n for n in names if n not in header]
        if unknown:
            raise TableError(
                f"{shown} has no column `{unknown[0]}` (named in `{field}`); "
                f"its columns: {', '.join(header[:12])}{' …' if len(header) > 12 else ''}"
            )
    picked = list(columns) if columns else [h for h in header if h not in exclude]
    if not picked:
        raise TableError(f"{shown}: `exclude` leaves no column")
    return picked


@contextmanager
def _rows(path: Path, shown: str) -> Iterator[tuple[list[str], Iterator[tuple[str, list[Any]]]]]:
    """(header, numbered rows); the file is closed when the block ends, however it ends."""
    if path.suffix == ".json":
        yield _json_rows(path, shown)
        return
    with open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as text:
        yield _csv_rows(text, shown)


def _csv_rows(
    text: io.TextIOWrapper, shown: str
) -> tuple[list[str], Iterator[tuple[str, list[Any]]]]:
    csv.field_size_limit(MAX_CELL)
    reader = csv.reader(text, strict=True)

    def guarded() -> Iterator[list[str]]:
        try:
            yield from reader
        except csv.Error as exc:
            raise TableError(f"{shown} line {reader.line_num}: not CSV ({exc})") from None
        except UnicodeDecodeError:
            raise TableError(f"{shown} line {reader.line_num + 1}: not UTF-8 text") from None

    lines = guarded()
    header = next(lines, None)
    if not header:
        raise TableError(f"{shown}: empty; a CSV table starts with a header row naming its columns")
    _check_header(header, shown)

    def rows() -> Iterator[tuple[str, list[Any]]]:
        for row in lines:
            if row:  # a blank line
                yield f"line {reader.line_num}", row

    return header, rows()


def _check_header(header: list[str], shown: str) -> None:
    if len(header) > MAX_COLUMNS:
        raise TableError(f"{shown}: {len(header)} columns, more than {MAX_COLUMNS}")
    blank = [i + 1 for i, h in enumerate(header) if not h.strip()]
    if blank:
        raise TableError(
            f"{shown} line 1: column {blank[0]} has no name (the first row names columns)"
        )
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise TableError(f"{shown} line 1: column `{name}` is named twice")
        seen.add(name)
    if all(_number(h) is not None for h in header):
        raise TableError(
            f"{shown} line 1: the first row is numbers; a CSV table starts with a header row "
            "naming its columns"
        )


def _json_rows(path: Path, shown: str) -> tuple[list[str], Iterator[tuple[str, list[Any]]]]:
    try:
        document = json.loads(path.read_bytes())
    except RecursionError:
        raise TableError(f"{shown}: JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise TableError(f"{shown}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise TableError(f"{shown} line {exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(document, list) or not document:
        raise TableError(f"{shown}: expected a non-empty list of rows (lists or objects)")
    first = document[0]
    if isinstance(first, dict):
        header = [str(k) for k in first]
    elif isinstance(first, list):
        header = [f"x{i}" for i in range(len(first))]
    else:
        raise TableError(f"{shown}: row 1 is neither a list nor an object")
    _check_count(header, shown)

    def rows() -> Iterator[tuple[str, list[Any]]]:
        for n, row in enumerate(document, start=1):
            if isinstance(row, dict) and isinstance(first, dict):
                if list(row) != header:
                    raise TableError(f"{shown}: row {n} has other keys than row 1")
                values = list(row.values())
            elif isinstance(row, list) and isinstance(first, list):
                values = row
            else:
                raise TableError(f"{shown}: row {n} is not shaped like row 1")
            if any(isinstance(v, list | dict) for v in values):
                raise TableError(f"{shown}: row {n} holds a nested value")
            yield f"row {n}", ["" if v is None else v for v in values]

    return header, rows()


def _check_count(header: list[str], shown: str) -> None:
    if len(header) > MAX_COLUMNS:
        raise TableError(f"{shown}: {len(header)} columns, more than {MAX_COLUMNS}")
    if not header:
        raise TableError(f"{shown}: rows have no values")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "na"))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _cell(value: Any, kind: str) -> Cell:
    if _missing(value):
        return None
    if kind == "numeric":
        return _number(value)
    return value if isinstance(value, str) else json.dumps(value)
