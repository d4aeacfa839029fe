"""Named datasets: download, verify and install them into a local cache.

``fedrec data fetch NAME`` gets a dataset from its public source (or, with
``--from DIR``, from a local copy), checks the sha256 of every file it installs
against the pins below and installs the files as ``$FEDREC_DATA/NAME``
(default ``~/.cache/fedrec/NAME``). They are written into a temporary sibling
directory, verified there, and only then renamed into place, so the cache never
holds a partial or unverified dataset. A config names an installed dataset with
``data.name`` (:func:`resolve_path`); ``data.path`` still reads any directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fedrec.errors import DataError

log = logging.getLogger("fedrec")

ENV = "FEDREC_DATA"
MANIFEST = "SHA256SUMS"  # in each installed dataset: `sha256sum -c SHA256SUMS`


@dataclass(frozen=True)
class Archive:
    """An upstream file that a dataset's files are extracted or converted from.

    ``extract(archive, out_dir)`` writes the dataset's files into ``out_dir``.
    """

    filename: str
    url: str
    sha256: str
    extract: Callable[[Path, Path], None]


@dataclass(frozen=True)
class Dataset:
    """A dataset that ``fedrec data fetch`` installs.

    ``files`` maps each installed file to its pinned sha256 (``None``: not pinned
    yet; the file's line count, header included, must then be ``lines[file]``,
    and the sha256 installed is kept in ``SHA256SUMS`` and checked from then
    on). The files are downloaded one by one from ``base_url + file``, or
    extracted from ``archive``. ``kind`` is the loader that reads them.
    """

    name: str
    kind: Literal["kuaishou", "recbole", "csv"]
    files: dict[str, str | None]
    source: str
    base_url: str = ""
    archive: Archive | None = None
    lines: dict[str, int] = field(default_factory=dict)


# --- KuaiSAR-R: five files of the AAAI-25 MRFF code release --------------------
KUAISAR_COMMIT = "84cc4ad95978fdf17c0a9dfe754618c18a643188"
KUAISAR_URL = (
    "https://raw.githubusercontent.com/Zhangcx19/AAAI-25-MRFF/"
    f"{KUAISAR_COMMIT}/dataset/KuaiSAR-R/"
)

# --- ML-100K: RecBole's atomic files, shipped in the recbole 1.2.1 wheel --------
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_URL = (
    "https://files.pythonhosted.org/packages/ab/fe/"
    "7d606cb7cd2b166a36b100cb9435d21014ceee16c192d972deb0976967a8/" + RECBOLE_WHEEL
)
RECBOLE_WHEEL_SHA256 = (
    "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
)
ML100K_MEMBER = "recbole/dataset_example/ml-100k/"

# --- ML-1M: GroupLens' zip, converted to atomic files here ---------------------
ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
# sha256 of ml-1m.zip (5,917,549 bytes) as TensorFlow Datasets pins it; its md5,
# c4d9eecfca2ab87c1945afe126590906, is the one GroupLens publishes.
ML1M_SHA256 = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
ML1M_HEADERS = {
    "ml-1m.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "ml-1m.item": (
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tgenre:token_seq"
    ),
    "ml-1m.user": (
        "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"
    ),
}
TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def _members(archive: Path, names: dict[str, str], out: Path) -> None:
    """Write archive member ``names[f]`` as ``out / f`` for each ``f``."""
    try:
        with zipfile.ZipFile(archive) as z:
            for name, member in names.items():
                (out / name).write_bytes(z.read(member))
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{archive}: not the expected archive ({e})") from None


def extract_ml100k(wheel: Path, out: Path) -> None:
    """ML-100K's three atomic files from the recbole wheel, byte for byte."""
    names = [f"ml-100k.{ext}" for ext in ("inter", "item", "user")]
    _members(wheel, {n: ML100K_MEMBER + n for n in names}, out)


def _dat_rows(z: zipfile.ZipFile, member: str, width: int) -> list[list[str]]:
    """The ``::``-separated rows of ``member`` (UTF-8, else Latin-1)."""
    raw = z.read(member)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # movies.dat: titles such as "Misérables"
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.replace("\t", " ") for f in line.split("::")]
        if len(fields) != width:
            raise DataError(
                f"{member} line {i}: expected {width} '::'-separated fields, "
                f"found {len(fields)}"
            )
        rows.append(fields)
    return rows


def convert_ml1m(archive: Path, out: Path) -> None:
    """GroupLens ``ml-1m.zip`` as RecBole atomic files ``ml-1m.{inter,item,user}``.

    The layout of RecBole's own ML-100K files: ratings in file order
    (``user_id, item_id, rating, timestamp``); items with the title's trailing
    ``(year)`` moved to ``release_year`` and the genres space-separated;
    users as ``user_id, age, gender, occupation, zip_code``. UTF-8, LF line ends.
    """
    try:
        with zipfile.ZipFile(archive) as z:
            ratings = _dat_rows(z, "ml-1m/ratings.dat", 4)
            movies = _dat_rows(z, "ml-1m/movies.dat", 3)
            users = _dat_rows(z, "ml-1m/users.dat", 5)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{archive}: not the expected archive ({e})") from None
    items = []
    for item_id, title, genres in movies:
        m = TITLE_YEAR.match(title)
        name, year = (m.group(1), m.group(2)) if m else (title.strip(), "")
        items.append([item_id, name, year, genres.replace("|", " ")])
    tables = {
        "ml-1m.inter": ratings,
        "ml-1m.item": items,
        "ml-1m.user": [[u, age, sex, job, z] for u, sex, age, job, z in users],
    }
    for name, rows in tables.items():
        lines = [ML1M_HEADERS[name], *("\t".join(r) for r in rows)]
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="kuaisar-r",
            kind="kuaishou",
            files={
                "KuaiSAR-R_user_feature_dict.txt": (
                    "aa623d67d2a06cd966852ecd33242dd0b7daab0a9dd21435efb8a0ea74c53a59"
                ),
                "KuaiSAR-R_video_feature_dict.txt": (
                    "dbc68be201919c742d9ab2a642469fcfb0067187369a2206704510c6fd9fe9c2"
                ),
                "df.csv": (
                    "b8cf8fba3b831080eaa1de1490add60f308c391ef8c1df9e726a5faadab28929"
                ),
                "user_features.csv": (
                    "f396fc31b8ad46d8f2bbb18ac368ee3c15c9bf7c9c6c208e385c5bdd38ad42a4"
                ),
                "video_features.csv": (
                    "a04cf49ee671aab16e0a73491d9ea17fc83441f7781d0e5ece4bcc300ef425f8"
                ),
            },
            source=f"GitHub Zhangcx19/AAAI-25-MRFF@{KUAISAR_COMMIT[:8]}",
            base_url=KUAISAR_URL,
        ),
        Dataset(
            name="ml-100k",
            kind="recbole",
            files={
                "ml-100k.inter": (
                    "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"
                ),
                "ml-100k.item": (
                    "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"
                ),
                "ml-100k.user": (
                    "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"
                ),
            },
            source="PyPI recbole==1.2.1 wheel (its example dataset)",
            archive=Archive(
                RECBOLE_WHEEL, RECBOLE_WHEEL_URL, RECBOLE_WHEEL_SHA256, extract_ml100k
            ),
        ),
        Dataset(
            name="ml-1m",
            kind="recbole",
            # not pinned: no copy of ml-1m.zip could be checked where this was
            # written; the archive's pin and the line counts are checked instead
            files={"ml-1m.inter": None, "ml-1m.item": None, "ml-1m.user": None},
            source="GroupLens ml-1m.zip, converted to atomic files",
            archive=Archive("ml-1m.zip", ML1M_URL, ML1M_SHA256, convert_ml1m),
            lines={"ml-1m.inter": 1_000_210, "ml-1m.item": 3_884, "ml-1m.user": 6_041},
        ),
    )
}


def cache_root() -> Path:
    """``$FEDREC_DATA``, else ``~/.cache/fedrec``."""
    env = os.environ.get(ENV, "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedrec"


def get_dataset(name: str) -> Dataset:
    """The dataset called ``name``; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def fetch_command(name: str) -> str:
    """The command that installs dataset ``name``."""
    return f"fedrec data fetch {name}"


def resolve_path(path: str, name: str) -> str:
    """``path`` if given, else the directory of the installed dataset ``name``.

    Raises
    ------
    DataError
        ``name`` is not installed (the message gives the command that installs
        it), or an installed file no longer matches its checksum.
    """
    if path or not name:
        return path
    ds = get_dataset(name)
    where = cache_root() / name
    if not where.is_dir():
        raise DataError(
            f"dataset {name!r} is not installed (looked in {where}; {ENV} sets the "
            f"cache). Install it with: {fetch_command(name)}"
        )
    _check_installed(ds, where)
    return str(where)


def _digest(path: Path) -> tuple[str, int]:
    """sha256 and number of newline bytes of a file."""
    h, lines = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            lines += chunk.count(b"\n")
    return h.hexdigest(), lines


def _read_manifest(root: Path) -> dict[str, str]:
    path = root / MANIFEST
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        out[name] = digest
    return out


def _check_files(ds: Dataset, root: Path, origin: str) -> dict[str, str]:
    """Verify ``ds``'s files in ``root``; return their sha256 by name.

    A file is checked against its pin, else against the sha256 recorded at
    install (``SHA256SUMS``), else against its expected line count. Errors
    name the file and ``origin``.
    """
    recorded = _read_manifest(root)
    sums = {}
    for name, pin in ds.files.items():
        path = root / name
        if not path.is_file():
            raise DataError(f"{name} (from {origin}): missing")
        got, lines = _digest(path)
        want = pin or recorded.get(name)
        if want and got != want:
            what = "pinned" if pin else f"recorded in {MANIFEST} at install"
            raise DataError(
                f"{name} (from {origin}): checksum mismatch: sha256 {got}, "
                f"{what} {want}"
            )
        if not want and name in ds.lines and lines != ds.lines[name]:
            raise DataError(
                f"{name} (from {origin}): {lines} lines, expected {ds.lines[name]}"
            )
        sums[name] = got
    return sums


def _check_installed(ds: Dataset, where: Path) -> None:
    try:
        _check_files(ds, where, str(where))
    except DataError as e:
        raise DataError(
            f"{e}. Replace it with: {fetch_command(ds.name)} --force"
        ) from None


def _download(url: str, dest: Path) -> None:
    log.info("downloading %s", url)
    request = urllib.request.Request(url, headers={"User-Agent": "fedrec"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
    except OSError as e:  # URLError, HTTPError and timeouts are OSErrors
        raise DataError(
            f"cannot download {url}: {e}. Download it elsewhere and install it "
            "with --from DIR"
        ) from None


def _check_archive(archive: Archive, path: Path, origin: str) -> None:
    got, _ = _digest(path)
    if got != archive.sha256:
        raise DataError(
            f"{archive.filename} (from {origin}): checksum mismatch: sha256 {got}, "
            f"pinned {archive.sha256}"
        )


def _gather(ds: Dataset, out: Path, source: Path | None) -> str:
    """Write ``ds``'s files into ``out``; return where they came from."""
    arch = ds.archive
    if source is not None:
        if not source.is_dir():
            raise DataError(f"--from {source}: not a directory")
        if all((source / n).is_file() for n in ds.files):
            for n in ds.files:
                shutil.copyfile(source / n, out / n)
            return str(source)
        if arch is not None and (source / arch.filename).is_file():
            _check_archive(arch, source / arch.filename, str(source))
            arch.extract(source / arch.filename, out)
            return str(source / arch.filename)
        missing = [n for n in ds.files if not (source / n).is_file()]
        alt = f" (or the archive {arch.filename})" if arch is not None else ""
        raise DataError(f"--from {source}: no {', '.join(missing)}{alt}")
    if arch is None:
        for n in ds.files:
            _download(ds.base_url + n, out / n)
        return ds.base_url
    scratch = out / ".download"
    scratch.mkdir()
    _download(arch.url, scratch / arch.filename)
    _check_archive(arch, scratch / arch.filename, arch.url)
    arch.extract(scratch / arch.filename, out)
    shutil.rmtree(scratch)
    return arch.url


def fetch(
    name: str, source: str | Path | None = None, *, force: bool = False
) -> tuple[Path, bool]:
    """Install dataset ``name`` into the cache.

    Parameters
    ----------
    name
        A key of :data:`DATASETS`.
    source
        A local directory holding the dataset's files (or its upstream
        archive) to install instead of downloading; verified the same way.
    force
        Install again even if a copy that verifies is installed.

    Returns
    -------
    tuple[Path, bool]
        The dataset's directory and whether it was installed now (``False``:
        a verified copy was already there and nothing was copied).

    Raises
    ------
    DataError
        On an unknown name, a download that fails, a missing file or a
        checksum mismatch (naming the file). Nothing is left behind then.
    """
    ds = get_dataset(name)
    root = cache_root()
    final = root / name
    if final.exists() and not force:
        _check_installed(ds, final)
        return final, False
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root))
        umask = os.umask(0o022)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would stay on the dataset
    except OSError as e:
        raise DataError(f"cannot write the dataset cache {root} ({ENV}): {e}") from None
    try:
        origin = _gather(ds, tmp, Path(source) if source is not None else None)
        sums = _check_files(ds, tmp, origin)
        (tmp / MANIFEST).write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))
        if not all(ds.files.values()):
            log.warning(
                "%s: its files have no pinned sha256 yet; those installed are "
                "recorded in %s",
                name,
                final / MANIFEST,
            )
        _move_into_place(tmp, final)
    except FileExistsError:  # another fetch installed it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        _check_installed(ds, final)
        return final, False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, True


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, replacing (``--force``) what is there."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
    try:
        os.rename(tmp, final)
    except OSError:
        if old is not None:
            os.replace(old / final.name, final)
            old.rmdir()
        elif final.exists():
            raise FileExistsError(final) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
