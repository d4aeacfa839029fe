"""Generic CSV interaction loader, plus the parsing helpers every loader shares.

Every helper turns a malformed file into a :class:`~fedrec.errors.DataError`
that names the file, the column and the 1-based line number (line 1 is the
header, so the first data row is line 2).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.dataset import InteractionData
from fedrec.errors import DataError


def read_table(path: Path, *, sep: str = ",", as_str: bool = False) -> pd.DataFrame:
    """Read a delimited file; blank lines are kept so line numbers stay exact."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    opts = {"dtype": str, "keep_default_na": False, "quoting": csv.QUOTE_NONE}
    try:
        return pd.read_csv(
            path, sep=sep, skip_blank_lines=False, **(opts if as_str else {})
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot parse: {exc}") from exc


def require_columns(df: pd.DataFrame, cols: list[str], path: Path) -> None:
    """Raise naming the file and the first column of ``cols`` that ``df`` lacks."""
    for col in cols:
        if col not in df.columns:
            found = [str(c) for c in df.columns]
            raise DataError(f"{path}: missing column {col!r} (found {found})")


def _show(value: object) -> str:
    """``repr`` without numpy's ``np.int64(...)`` wrapper."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _fail_first(
    bad: np.ndarray, df: pd.DataFrame, col: str, path: Path, what: str
) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        got = df[col].iloc[i]
        what = "missing value" if pd.isna(got) else f"{what}, got {_show(got)}"
        raise DataError(f"{path}: column {col!r}, line {i + 2}: {what}")


def column(df: pd.DataFrame, col: str, path: Path, kind: str) -> np.ndarray:
    """Column ``col`` checked and converted according to ``kind``.

    ``"id"``: raw values, none missing. ``"code"``: categorical int64 codes,
    non-negative integers kept as they are, anything else factorized over sorted
    categories. ``"int"`` / ``"nonneg"``: int64 (whole-valued floats such as
    ``"1685336204570.0"`` accepted). ``"label"``: 0/1 as float32. ``"float"``:
    finite float64. A bad value raises naming file, column and line.
    """
    s = df[col]
    if kind in ("id", "code"):
        _fail_first(s.isna().to_numpy(), df, col, path, "missing value")
        if kind == "id":
            return s.to_numpy()
        if pd.api.types.is_integer_dtype(s.dtype) and bool((s >= 0).all()):
            return s.to_numpy(dtype=np.int64)
        return pd.factorize(s.astype(str), sort=True)[0].astype(np.int64)
    num = pd.to_numeric(s, errors="coerce")
    if kind == "float" or not pd.api.types.is_integer_dtype(num.dtype):
        f = num.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(f)
        if kind == "float":
            _fail_first(bad, df, col, path, "expected a number")
            return f
        _fail_first(bad | (f != np.round(f)), df, col, path, "expected an integer")
    out = np.asarray(num, dtype=np.int64)
    if kind == "label":
        _fail_first((out != 0) & (out != 1), df, col, path, "expected 0 or 1")
        return out.astype(np.float32)
    if kind == "nonneg":
        _fail_first(out < 0, df, col, path, "expected a non-negative integer")
    return out


def encode_ids(
    raw: np.ndarray, extra: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Codes in order of first appearance; ``extra`` ids not in ``raw`` come after."""
    codes, uniques = pd.factorize(raw)
    if extra is not None:  # pd.unique keeps the order of first appearance
        uniques = pd.unique(np.concatenate([np.asarray(uniques), np.asarray(extra)]))
    return codes.astype(np.int64), np.asarray(uniques)


def align_rows(
    ids: np.ndarray,
    table_ids: np.ndarray,
    path: Path,
    id_col: str,
    *,
    fill: bool = False,
) -> np.ndarray:
    """Row of the feature table for each id, ``-1`` for absent ones if ``fill``.

    Duplicate table ids raise with their line; absent ids raise unless ``fill``.
    """
    dup = pd.Series(table_ids).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise DataError(
            f"{path}: line {i + 2}: duplicate {id_col} {_show(table_ids[i])}"
        )
    rows = pd.Index(table_ids).get_indexer(ids)
    if not fill and (rows < 0).any():
        first = _show(ids[int(np.flatnonzero(rows < 0)[0])])
        raise DataError(f"{path}: no feature row for {id_col} {first}")
    return rows


def interactions_frame(
    user: np.ndarray,
    item: np.ndarray,
    timestamp: np.ndarray,
    label: np.ndarray,
    rating: np.ndarray | None = None,
) -> pd.DataFrame:
    """Build the canonical interaction table (see :class:`InteractionData`)."""
    cols = {"user": user, "item": item, "timestamp": timestamp}
    frame = pd.DataFrame({k: np.asarray(v, dtype=np.int64) for k, v in cols.items()})
    frame["label"] = label.astype(np.float32)
    if rating is not None:
        frame["rating"] = rating.astype(np.float32)
    return frame


def _features(
    path: Path, sep: str, ids: np.ndarray, title_col: str | None = None
) -> tuple[np.ndarray, list[str], list[str] | None]:
    table = read_table(path, sep=sep)
    id_col = str(table.columns[0])
    rows = align_rows(ids, column(table, id_col, path, "id"), path, id_col)
    names = [str(c) for c in table.columns[1:] if c != title_col]
    codes = [column(table, c, path, "code")[rows] for c in names]
    values = np.stack(codes, 1) if codes else np.zeros((len(ids), 0), np.int64)
    if title_col is None or title_col not in table.columns:
        return values, names, None
    return values, names, table[title_col].fillna("").astype(str).iloc[rows].tolist()


def load_csv(
    path: str | Path,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    timestamp_col: str | None = None,
    label_col: str | None = None,
    rating_col: str | None = None,
    label_threshold: float | None = None,
    sep: str = ",",
    user_features: str | None = None,
    item_features: str | None = None,
    title_col: str | None = None,
) -> InteractionData:
    """Load one interaction CSV with optional user / item feature CSVs.

    Without ``timestamp_col`` file order is the time. The label is ``label_col``
    (0/1) if given, else ``rating >= label_threshold`` if both ``rating_col``
    and ``label_threshold`` are given, else 1 (implicit feedback). Feature CSVs
    have the id in their first column; every other column is categorical
    (non-negative integers kept, anything else coded ``0..K-1`` over sorted
    values, checked per column) and every interacted user / item needs a row.
    ``title_col`` is read from ``item_features`` when that file has it (and is
    then not a feature), else from the interaction file (first row per item).

    Raises
    ------
    DataError
        Naming the file, column and line of a missing column or a bad value,
        or the first id without a feature row.
    """
    path = Path(path)
    df = read_table(path, sep=sep)
    wanted = [user_col, item_col, timestamp_col, label_col, rating_col]
    require_columns(df, [c for c in wanted if c is not None], path)
    if label_threshold is not None and rating_col is None:
        raise DataError(f"{path}: label_threshold needs rating_col")
    users, user_ids = encode_ids(column(df, user_col, path, "id"))
    items, item_ids = encode_ids(column(df, item_col, path, "id"))
    ts = column(df, timestamp_col, path, "int") if timestamp_col else np.arange(len(df))
    rating = column(df, rating_col, path, "float") if rating_col else None
    if label_col is not None:
        label = column(df, label_col, path, "label")
    elif rating is not None and label_threshold is not None:
        label = (rating >= label_threshold).astype(np.float32)
    else:
        label = np.ones(len(df), np.float32)
    ufeat, ifeat, titles = None, None, None
    unames: list[str] = []
    inames: list[str] = []
    if user_features is not None:
        ufeat, unames, _ = _features(Path(user_features), sep, user_ids)
    if item_features is not None:
        ifeat, inames, titles = _features(Path(item_features), sep, item_ids, title_col)
    if titles is None and title_col is not None:
        require_columns(df, [title_col], path)
        first = df[title_col].groupby(items).first().reindex(range(len(item_ids)))
        titles = first.fillna("").astype(str).tolist()
    return InteractionData(
        interactions=interactions_frame(users, items, ts, label, rating),
        user_ids=user_ids,
        item_ids=item_ids,
        user_features=ufeat,
        item_features=ifeat,
        user_feature_names=unames,
        item_feature_names=inames,
        item_text=titles,
        source=f"csv:{path}",
    )
