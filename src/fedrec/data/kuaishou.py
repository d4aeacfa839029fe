"""Kuaishou interaction logs in the FedPA file layout (KuaiSAR-R, KuaiRand-Pure).

A dataset directory holds

* ``df.csv``: ``user_id, video_id, timestamp, is_click`` (extra columns ignored);
* ``user_features.csv`` (this project's KuaiSAR-R release) or
  ``new_user_features.csv`` (the FedPA reference code's name): ``user_id`` plus
  integer-coded user fields;
* ``video_features.csv`` or ``new_video_features.csv``: ``video_id`` plus
  integer-coded video fields;
* optionally ``*_user_feature_dict.txt`` / ``*_video_feature_dict.txt``: the
  fields to use, one per line. Without them every feature column is used.

Feature values are category codes used as they are (cardinality = max + 1, see
:meth:`InteractionData.user_field_cardinalities`); there is no binning, so
numeric KuaiRand fields must be binned before they reach this loader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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

INTERACTIONS = "df.csv"
USER_FILES = ("user_features.csv", "new_user_features.csv")
ITEM_FILES = ("video_features.csv", "new_video_features.csv")


def _first_file(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _dict_fields(root: Path, kind: str) -> list[str] | None:
    files = sorted(root.glob(f"*_{kind}_feature_dict.txt"))
    if not files:
        return None
    if len(files) > 1:
        raise DataError(
            f"{root}: several {kind} feature dicts: {[f.name for f in files]}"
        )
    lines = files[0].read_text().splitlines()
    return [line.strip() for line in lines if line.strip()]


def _feature_matrix(
    path: Path, id_col: str, fields: list[str] | None, ids: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    table = read_table(path)
    if fields is None:
        fields = [str(c) for c in table.columns if c != id_col]
    require_columns(table, [id_col, *fields], path)
    rows = align_rows(ids, column(table, id_col, path, "int"), path, id_col)
    cols = [column(table, f, path, "nonneg")[rows] for f in fields]
    values = np.stack(cols, axis=1) if cols else np.zeros((len(ids), 0), np.int64)
    return values, list(fields)


def load_kuaishou(
    path: str | Path,
    *,
    user_fields: list[str] | None = None,
    item_fields: list[str] | None = None,
) -> InteractionData:
    """Load a Kuaishou dataset directory in the FedPA layout.

    Parameters
    ----------
    path
        Directory with ``df.csv`` and the feature files (module docstring).
    user_fields, item_fields
        Feature columns to use; default: the ``*_feature_dict.txt`` lists, or
        every non-id column when there is no such file.

    Returns
    -------
    InteractionData
        ``label = is_click``; codes in order of first appearance in ``df.csv``;
        integer timestamps as given (milliseconds for KuaiSAR-R).

    Raises
    ------
    DataError
        When no accepted layout is present (lists the expected names), a column
        is missing (names file and column), a value is not an integer (names
        file, column and line), a feature id is duplicated, or a user / video
        of ``df.csv`` has no feature row (names file and the first such id).
    """
    root = Path(path)
    inter = root / INTERACTIONS
    ufile, vfile = _first_file(root, USER_FILES), _first_file(root, ITEM_FILES)
    if not inter.is_file() or ufile is None or vfile is None:
        raise DataError(
            f"{root}: not a Kuaishou dataset directory; expected {INTERACTIONS}, "
            f"{' or '.join(USER_FILES)}, and {' or '.join(ITEM_FILES)} "
            f"(found {sorted(p.name for p in root.glob('*')) if root.is_dir() else []})"
        )
    df = read_table(inter)
    require_columns(df, ["user_id", "video_id", "timestamp", "is_click"], inter)
    users, user_ids = encode_ids(column(df, "user_id", inter, "int"))
    items, item_ids = encode_ids(column(df, "video_id", inter, "int"))
    ts = column(df, "timestamp", inter, "int")
    label = column(df, "is_click", inter, "label")
    ufields = user_fields if user_fields is not None else _dict_fields(root, "user")
    vfields = item_fields if item_fields is not None else _dict_fields(root, "video")
    ufeat, unames = _feature_matrix(ufile, "user_id", ufields, user_ids)
    ifeat, inames = _feature_matrix(vfile, "video_id", vfields, item_ids)
    return InteractionData(
        interactions=interactions_frame(users, items, ts, label),
        user_ids=user_ids,
        item_ids=item_ids,
        user_features=ufeat,
        item_features=ifeat,
        user_feature_names=unames,
        item_feature_names=inames,
        source=f"kuaishou:{root}",
    )
