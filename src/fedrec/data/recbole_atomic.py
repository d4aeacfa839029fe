"""RecBole atomic files: ``<dataset>.inter`` plus optional ``.item`` / ``.user``.

Each file is tab-separated with a ``name:type`` header, type one of ``token``,
``token_seq``, ``float``, ``float_seq`` (RecBole's convention; ``token_seq``
values are space-separated). Ids are kept as strings. Used for MovieLens-100K
(fellrec.md §2.2), written by ``../shared/data/fetch-ml-100k`` or installed by
``fedrec data fetch ml-100k``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.dataset import InteractionData
from fedrec.data.generic_csv import (
    align_rows,
    column,
    encode_ids,
    interactions_frame,
    read_table,
    require_columns,
)
from fedrec.errors import DataError

TYPES = ("token", "token_seq", "float", "float_seq")
TITLE_COLUMNS = ("movie_title", "title")
YEAR_COLUMNS = ("release_year", "year")
GENRE_COLUMNS = ("class", "genre", "genres")


def read_atomic(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Read one atomic file as strings; columns renamed to the bare field names.

    Returns the table and ``{name: type}``; a malformed header raises.
    """
    df = read_table(path, sep="\t", as_str=True)
    types: dict[str, str] = {}
    for header in df.columns:
        name, colon, kind = str(header).partition(":")
        if not colon or kind not in TYPES or name in types:
            raise DataError(
                f"{path}: header {header!r} is not a unique 'name:type' "
                f"with type one of {list(TYPES)}"
            )
        types[name] = kind
    df.columns = list(types)
    return df, types


def _side_features(
    path: Path, id_col: str, ids: np.ndarray, table: pd.DataFrame, types: dict[str, str]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Categorical codes per id from ``token`` / first-of-``token_seq`` columns.

    Ids without a row get the code ``K`` (one past the field's categories).
    """
    rows = align_rows(ids, column(table, id_col, path, "id"), path, id_col, fill=True)
    skip = {id_col, *TITLE_COLUMNS}
    names = [
        n for n, t in types.items() if t in ("token", "token_seq") and n not in skip
    ]
    firsts = pd.DataFrame(
        {
            n: table[n].str.split(" ").str[0] if types[n] == "token_seq" else table[n]
            for n in names
        },
        index=table.index,
    )
    codes = [column(firsts, n, path, "code") for n in names]
    values = np.stack(codes, 1) if codes else np.zeros((len(table), 0), np.int64)
    unknown = values.max(axis=0, initial=-1) + 1  # row -1 of the stack below
    return np.vstack([values, unknown[None, :]])[rows], names, rows


def load_recbole(
    path: str | Path,
    dataset: str | None = None,
    *,
    label_threshold: float | None = None,
) -> InteractionData:
    """Load RecBole atomic files.

    Parameters
    ----------
    path
        Directory holding ``<dataset>.inter`` (required; fields ``user_id``,
        ``item_id``, optional ``rating`` and integer ``timestamp`` — without it
        file order is the time), ``<dataset>.item`` and ``<dataset>.user``
        (optional).
    dataset
        Basename; defaults to the single ``*.inter`` file in ``path``.
    label_threshold
        ``None``: every row is a positive (implicit feedback, label 1); else
        ``label = rating >= label_threshold``.

    Returns
    -------
    InteractionData
        User codes cover the users of ``.inter``; item codes cover the items of
        ``.inter`` (first appearance) and then the ``.item`` items never
        interacted with, so full ranking can score the whole catalogue. Titles
        come from ``movie_title`` or ``title`` ("" for items absent from
        ``.item``); ``item_text`` is ``"title (year) genres"``
        (:func:`item_texts`), and ``item_title`` the bare titles where that
        differs from them (``None``: a title-only table). Item / user
        features are the ``token`` columns and the first token of
        ``token_seq`` columns (e.g. ``release_year``, ``class``;
        ``age``, ``gender``, ``occupation``, ``zip_code``), coded ``0..K-1``
        over sorted values; ids without a side row get code ``K``.

    Raises
    ------
    DataError
        Naming file, column and line of a missing column or bad value, a bad
        header, a duplicated id, or an ambiguous / missing ``.inter`` file.
    """
    root = Path(path)
    if dataset is None:
        found = sorted(p.stem for p in root.glob("*.inter"))
        if len(found) != 1:
            raise DataError(f"{root}: expected one *.inter file, found {found}")
        dataset = found[0]
    inter = root / f"{dataset}.inter"
    df, _ = read_atomic(inter)
    need = ["user_id", "item_id"] + (["rating"] if label_threshold is not None else [])
    require_columns(df, need, inter)
    users, user_ids = encode_ids(column(df, "user_id", inter, "id"))
    rating = column(df, "rating", inter, "float") if "rating" in df else None
    ts = (
        column(df, "timestamp", inter, "int")
        if "timestamp" in df
        else np.arange(len(df))
    )
    label = np.ones(len(df), np.float32)
    if label_threshold is not None and rating is not None:
        label = (rating >= label_threshold).astype(np.float32)
    item_raw = column(df, "item_id", inter, "id")
    item_path, user_path = root / f"{dataset}.item", root / f"{dataset}.user"
    ifeat, ufeat = None, None
    inames: list[str] = []
    unames: list[str] = []
    titles: list[str] | None = None
    texts: list[str] | None = None
    if item_path.is_file():
        table, types = read_atomic(item_path)
        require_columns(table, ["item_id"], item_path)
        items, item_ids = encode_ids(
            item_raw, column(table, "item_id", item_path, "id")
        )
        ifeat, inames, rows = _side_features(
            item_path, "item_id", item_ids, table, types
        )
        title = next((c for c in TITLE_COLUMNS if c in types), None)
        if title is not None:
            # rows == -1 (an item without a .item row) picks the appended ""
            titles = [str(t) for t in np.append(_cells(table, title), "")[rows]]
            full = np.append(item_texts(table, title, types), "")[rows]
            texts = [str(t) for t in full]
    else:
        items, item_ids = encode_ids(item_raw)
    if user_path.is_file():
        table, types = read_atomic(user_path)
        require_columns(table, ["user_id"], user_path)
        ufeat, unames, _ = _side_features(user_path, "user_id", user_ids, table, types)
    return InteractionData(
        interactions=interactions_frame(users, items, ts, label, rating),
        user_ids=user_ids,
        item_ids=item_ids,
        user_features=ufeat,
        item_features=ifeat,
        user_feature_names=unames,
        item_feature_names=inames,
        item_text=texts,
        source=f"recbole:{inter}",
        item_title=titles if texts != titles else None,
    )


def _cells(table: pd.DataFrame, name: str) -> np.ndarray:
    """Column ``name`` as stripped strings, ``""`` where missing."""
    return table[name].fillna("").astype(str).str.strip().to_numpy(dtype=object)


def item_texts(table: pd.DataFrame, title: str, types: dict[str, str]) -> np.ndarray:
    """``"title (year) genres"`` per row of an item table (fellrec.md §2.2).

    The year comes from the first of :data:`YEAR_COLUMNS` present, the genres
    (a ``token_seq``, space-separated) from the first of :data:`GENRE_COLUMNS`;
    a missing column or an empty cell leaves its part out, so a title-only
    table gives the titles. E.g. ``Toy Story``, ``1995``, ``Animation
    Children's Comedy`` → ``"Toy Story (1995) Animation Children's Comedy"``.
    """
    out = _cells(table, title)
    year = next((c for c in YEAR_COLUMNS if c in types), None)
    genre = next((c for c in GENRE_COLUMNS if c in types), None)
    if year is not None:
        y = _cells(table, year)
        out = np.array([f"{t} ({v})" if v else t for t, v in zip(out, y, strict=True)])
    if genre is not None:
        g = _cells(table, genre)
        out = np.array([f"{t} {v}" if v else t for t, v in zip(out, g, strict=True)])
    return out.astype(object)
