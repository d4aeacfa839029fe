"""Loaders: tiny hand-written files for exact values and error messages, plus the
real KuaiSAR-R and MovieLens-100K files when they are available."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedrec.data import load_csv, load_dataset, load_kuaishou, load_recbole
from fedrec.errors import DataError

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared" / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- Kuaishou (FedPA layout) -------------------------------------------------

DF = """user_id,video_id,timestamp,is_click
10,100,1000.0,1
10,101,1000.0,0
11,100,2000.0,1
12,102,1500.0,0
"""
USERS = "user_id,f1,f2,extra\n12,3,0,9\n10,1,2,9\n11,0,1,9\n"
VIDEOS = "video_id,v1\n102,5\n100,2\n101,0\n"


@pytest.fixture
def kuai(tmp_path: Path) -> Path:
    write(tmp_path / "df.csv", DF)
    write(tmp_path / "user_features.csv", USERS)
    write(tmp_path / "video_features.csv", VIDEOS)
    write(tmp_path / "T_user_feature_dict.txt", "f1\nf2\n\n")
    write(tmp_path / "T_video_feature_dict.txt", "v1\n")
    return tmp_path


def test_kuaishou_values(kuai: Path) -> None:
    d = load_kuaishou(kuai)
    assert d.user_ids.tolist() == [10, 11, 12]
    assert d.item_ids.tolist() == [100, 101, 102]
    df = d.interactions
    assert df["user"].tolist() == [0, 0, 1, 2]
    assert df["item"].tolist() == [0, 1, 0, 2]
    assert df["timestamp"].tolist() == [1000, 1000, 2000, 1500]
    assert df["label"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert df["timestamp"].dtype == np.int64 and df["label"].dtype == np.float32
    assert d.user_feature_names == ["f1", "f2"]
    assert d.user_features.tolist() == [[1, 2], [0, 1], [3, 0]]
    assert d.item_features.tolist() == [[2], [0], [5]]
    assert d.user_field_cardinalities() == [4, 3]
    assert d.item_text is None


def test_kuaishou_new_layout_and_field_choice(kuai: Path) -> None:
    (kuai / "user_features.csv").rename(kuai / "new_user_features.csv")
    (kuai / "video_features.csv").rename(kuai / "new_video_features.csv")
    for f in kuai.glob("*_feature_dict.txt"):
        f.unlink()
    d = load_kuaishou(kuai)  # no dicts: every non-id column
    assert d.user_feature_names == ["f1", "f2", "extra"]
    d = load_kuaishou(kuai, user_fields=["f2"], item_fields=[])
    assert d.user_features.tolist() == [[2], [1], [0]]
    assert d.item_features.shape == (3, 0)


def test_kuaishou_unknown_layout(tmp_path: Path) -> None:
    write(tmp_path / "df.csv", DF)
    with pytest.raises(DataError, match="new_user_features.csv") as e:
        load_kuaishou(tmp_path)
    assert "user_features.csv" in str(e.value) and "video_features.csv" in str(e.value)


def test_kuaishou_missing_column(kuai: Path) -> None:
    write(kuai / "df.csv", "user_id,video_id,timestamp\n10,100,1000\n")
    with pytest.raises(DataError, match=r"df\.csv: missing column 'is_click'"):
        load_kuaishou(kuai)
    write(kuai / "df.csv", DF)
    write(kuai / "T_user_feature_dict.txt", "f1\nf3\n")
    with pytest.raises(DataError, match=r"user_features\.csv: missing column 'f3'"):
        load_kuaishou(kuai)


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("video_features.csv", "video_id,v1\n102,5\n100,2\n101,x\n", r"'v1', line 4"),
        ("user_features.csv", USERS.replace("10,1,2", "10,1.5,2"), r"'f1', line 3"),
        ("user_features.csv", USERS.replace("11,0,1", "11,-1,1"), r"'f1', line 4"),
        ("df.csv", DF.replace("101,1000.0", "101,"), r"'timestamp', line 3"),
        ("df.csv", DF.replace("102,1500.0,0", "102,1500.0,2"), r"'is_click', line 5"),
        ("df.csv", DF.replace("11,100", "\n11,100"), r"line 4"),  # blank line 4
    ],
)
def test_kuaishou_bad_value_names_line(
    kuai: Path, name: str, text: str, pattern: str
) -> None:
    write(kuai / name, text)
    with pytest.raises(DataError, match=pattern) as e:
        load_kuaishou(kuai)
    assert name in str(e.value)


def test_kuaishou_missing_feature_row_and_duplicates(kuai: Path) -> None:
    write(kuai / "user_features.csv", USERS.replace("11,0,1,9\n", ""))
    with pytest.raises(
        DataError, match=r"user_features\.csv: no feature row for user_id 11"
    ):
        load_kuaishou(kuai)
    write(kuai / "user_features.csv", USERS + "12,1,1,1\n")
    with pytest.raises(
        DataError, match=r"user_features\.csv: line 5: duplicate user_id 12"
    ):
        load_kuaishou(kuai)


# --- RecBole atomic files ----------------------------------------------------

INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "u1\ti1\t5\t100\nu2\ti2\t3\t50\nu1\ti3\t4\t200\n"
)
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "i2\tHeat\t1995\tAction Crime\n"
    "i1\tToy Story\t1995\tAnimation Comedy\n"
    "i9\tUnseen Movie\t1990\tDrama\n"
)
USER = "user_id:token\tage:token\tgender:token\nu2\t30\tF\nu1\t25\tM\n"


@pytest.fixture
def rb(tmp_path: Path) -> Path:
    write(tmp_path / "toy.inter", INTER)
    write(tmp_path / "toy.item", ITEM)
    write(tmp_path / "toy.user", USER)
    return tmp_path


def test_recbole_values(rb: Path) -> None:
    d = load_recbole(rb)
    assert d.user_ids.tolist() == ["u1", "u2"]
    assert d.item_ids.tolist() == ["i1", "i2", "i3", "i9"]  # i9 only in .item
    # the encoder's text: "title (year) genres"; i3 has no .item row
    assert d.item_text == [
        "Toy Story (1995) Animation Comedy",
        "Heat (1995) Action Crime",
        "",
        "Unseen Movie (1990) Drama",
    ]
    assert d.item_title == ["Toy Story", "Heat", "", "Unseen Movie"]
    assert d.titles == d.item_title
    assert d.item_feature_names == ["release_year", "class"]
    # release_year: 1990 -> 0, 1995 -> 1, i3 unknown -> 2; class first token:
    # Action 0, Animation 1, Drama 2, i3 unknown -> 3
    assert d.item_features.tolist() == [[1, 1], [1, 0], [2, 3], [0, 2]]
    assert d.user_feature_names == ["age", "gender"]
    assert d.user_features.tolist() == [[0, 1], [1, 0]]
    df = d.interactions
    assert df["label"].tolist() == [1.0, 1.0, 1.0]
    assert df["rating"].tolist() == [5.0, 3.0, 4.0]
    assert df["timestamp"].tolist() == [100, 50, 200]
    assert load_recbole(rb, "toy", label_threshold=4).interactions[
        "label"
    ].tolist() == [1, 0, 1]


def test_recbole_item_text_keeps_what_the_item_file_has(tmp_path: Path) -> None:
    write(tmp_path / "t.inter", INTER)
    # title only: the text is the title, no separate titles
    write(tmp_path / "t.item", "item_id:token\tmovie_title:token_seq\ni1\tHeat\n")
    d = load_recbole(tmp_path)
    assert d.item_text == ["Heat", "", ""] and d.item_title is None
    assert d.titles == d.item_text
    # a year without genres, an empty year cell
    write(
        tmp_path / "t.item",
        "item_id:token\ttitle:token_seq\tyear:token\ni1\tHeat\t1995\ni2\tCasino\t\n",
    )
    d = load_recbole(tmp_path)
    assert d.item_text == ["Heat (1995)", "Casino", ""]
    assert d.item_title == ["Heat", "Casino", ""]


def test_recbole_without_side_files_or_timestamp(tmp_path: Path) -> None:
    write(tmp_path / "a.inter", "user_id:token\titem_id:token\nu\tx\nv\tx\nu\ty\n")
    d = load_recbole(tmp_path)
    assert d.interactions["timestamp"].tolist() == [0, 1, 2]
    assert d.item_text is None and d.item_features is None and d.user_features is None
    write(tmp_path / "b.inter", "user_id:token\titem_id:token\nu\tx\n")
    with pytest.raises(DataError, match=r"expected one \*\.inter file"):
        load_recbole(tmp_path)
    assert load_recbole(tmp_path, "b").n_users == 1
    with pytest.raises(DataError, match=r"b\.inter: missing column 'rating'"):
        load_recbole(tmp_path, "b", label_threshold=3)


def test_recbole_errors(rb: Path) -> None:
    write(rb / "toy.inter", INTER.replace("rating:float", "rating"))
    with pytest.raises(DataError, match=r"toy\.inter: header 'rating'"):
        load_recbole(rb)
    write(rb / "toy.inter", INTER.replace("item_id:token", "movie:token"))
    with pytest.raises(DataError, match=r"toy\.inter: missing column 'item_id'"):
        load_recbole(rb)
    write(rb / "toy.inter", INTER.replace("\t3\t", "\tabc\t"))
    with pytest.raises(DataError, match=r"toy\.inter: column 'rating', line 3"):
        load_recbole(rb)
    write(rb / "toy.inter", INTER)
    write(rb / "toy.item", ITEM + "i1\tAgain\t1990\tDrama\n")
    with pytest.raises(DataError, match=r"toy\.item: line 5: duplicate item_id"):
        load_recbole(rb)
    with pytest.raises(DataError, match=r"nothing\.inter: file not found"):
        load_recbole(rb, "nothing")


# --- generic CSV -------------------------------------------------------------


@pytest.fixture
def csvs(tmp_path: Path) -> Path:
    write(tmp_path / "inter.csv", "uid,iid,ts,stars\na,x,3,4.5\nb,y,1,2.0\na,y,2,3.0\n")
    write(tmp_path / "items.csv", "iid,genre,name\ny,drama,Film Y\nx,comedy,Film X\n")
    write(tmp_path / "users.csv", "uid,age\na,20\nb,30\n")
    return tmp_path


def test_csv_values(csvs: Path) -> None:
    d = load_csv(
        csvs / "inter.csv",
        user_col="uid",
        item_col="iid",
        timestamp_col="ts",
        rating_col="stars",
        label_threshold=3.0,
        user_features=str(csvs / "users.csv"),
        item_features=str(csvs / "items.csv"),
        title_col="name",
    )
    assert d.user_ids.tolist() == ["a", "b"] and d.item_ids.tolist() == ["x", "y"]
    assert d.interactions["label"].tolist() == [1.0, 0.0, 1.0]
    assert d.interactions["timestamp"].tolist() == [3, 1, 2]
    assert d.user_features.tolist() == [[20], [30]]  # integers kept
    assert d.item_feature_names == ["genre"]
    assert d.item_features.tolist() == [[0], [1]]  # comedy 0, drama 1
    assert d.item_text == ["Film X", "Film Y"]


def test_csv_defaults_and_titles_from_interactions(tmp_path: Path) -> None:
    p = write(
        tmp_path / "i.tsv",
        "user_id\titem_id\ttitle\n1\t7\tSeven\n2\t8\t\n1\t8\tEight\n",
    )
    d = load_csv(p, sep="\t", title_col="title")
    assert d.interactions["timestamp"].tolist() == [0, 1, 2]  # file order
    assert d.interactions["label"].tolist() == [1.0, 1.0, 1.0]  # implicit
    assert d.item_text == ["Seven", "Eight"]
    assert "rating" not in d.interactions


def test_csv_errors(csvs: Path) -> None:
    with pytest.raises(DataError, match=r"inter\.csv: missing column 'item_id'"):
        load_csv(csvs / "inter.csv", user_col="uid")
    write(csvs / "bad.csv", "uid,iid,ts\na,x,3\nb,y,soon\n")
    with pytest.raises(DataError, match=r"bad\.csv: column 'ts', line 3"):
        load_csv(csvs / "bad.csv", user_col="uid", item_col="iid", timestamp_col="ts")
    write(csvs / "items.csv", "iid,genre\ny,drama\n")
    with pytest.raises(DataError, match=r"items\.csv: no feature row for iid 'x'"):
        load_csv(
            csvs / "inter.csv",
            user_col="uid",
            item_col="iid",
            item_features=str(csvs / "items.csv"),
        )


def test_load_dataset_dispatch(kuai: Path) -> None:
    assert load_dataset("kuaishou", path=kuai).n_users == 3
    assert load_dataset("synthetic", n_users=5, n_items=7).n_users == 5
    with pytest.raises(
        DataError, match=r"valid kinds: \['csv', 'kuaishou', 'recbole', 'synthetic'\]"
    ):
        load_dataset("movielens")


# --- real data ---------------------------------------------------------------


def test_kuaisar_r_real() -> None:
    path = SHARED / "kuaisar-r"
    if not (path / "df.csv").is_file():
        pytest.skip(f"KuaiSAR-R not present at {path.resolve()}")
    d = load_kuaishou(path)
    assert len(d.interactions) == 117_590
    assert (d.n_users, d.n_items) == (1_791, 69_704)
    assert d.user_feature_names == [
        "onehot_feat1",
        "onehot_feat2",
        "search_active_level",
        "reco_active_level",
    ]
    assert len(d.item_feature_names) == 6
    assert d.user_field_cardinalities() == [8, 3, 7, 4]
    assert d.item_field_cardinalities() == [2, 30, 37, 292, 403, 45]
    assert d.interactions["label"].mean() == pytest.approx(0.514, abs=5e-4)


@pytest.fixture(scope="module")
def ml100k() -> Path:
    default = REPO / ".cache" / "ml-100k"
    d = Path(os.environ.get("FEDREC_ML100K_DIR", default))
    if not (d / "ml-100k.inter").is_file():
        script = SHARED / "fetch-ml-100k"
        if not script.is_file():
            pytest.skip(f"ML-100K absent from {d} and no fetch script at {script}")
        r = subprocess.run(
            [str(script), str(d)], capture_output=True, text=True, timeout=300
        )
        if r.returncode != 0:
            pytest.skip(
                f"ML-100K absent from {d}; fetch-ml-100k failed: {r.stderr[-300:]}"
            )
    return d


def test_ml100k_real(ml100k: Path) -> None:
    d = load_recbole(ml100k)
    assert len(d.interactions) == 100_000
    assert (d.n_users, d.n_items) == (943, 1_682)
    assert d.item_text is not None and all(d.item_text)
    toy = d.item_ids.tolist().index("1")
    assert d.item_text[toy] == "Toy Story (1995) Animation Children's Comedy"
    assert d.item_title is not None and d.item_title[toy] == "Toy Story"
    assert d.item_feature_names == ["release_year", "class"]
    assert d.user_feature_names == ["age", "gender", "occupation", "zip_code"]
    assert d.interactions["label"].eq(1).all()
    assert d.interactions["rating"].between(1, 5).all()
