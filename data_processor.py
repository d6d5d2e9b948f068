"""A dataset's raw files -> validated tables -> features -> sequences + metadata.json (ML-1M by default).

The first stage of the pipeline. `load_dataset` turns a dataset (a folder, a zip, or a fresh download; ML-1M's
three files here, any other format through readers.py) into the data model (data_model.RawTables: interactions,
item and user tables with declared features; ML-1M: `read_ml1m`), then into a `SequenceData` of numpy arrays
encoded from those declarations (`featurise`):

- items: contiguous indices 1..num_items over the interacted-with items by id (0 = padding, num_items + 1 =
  [MASK]), with each item feature's table (ML-1M: genre multi-hot and release year) looked up by index;
- users: indices 1..num_users by id (0 = unknown), with each user feature (ML-1M: gender, age group, occupation);
- each user's events ordered by timestamp with a STABLE sort (ties keep file order), split leave-one-out
  (last = test, second-to-last = validation, the rest = training), as EVALUATION.md prescribes;
- sliding training windows cut from the training parts only.

`eval_inputs` builds the validation/test inputs; `save_metadata` writes everything inference needs except the
weights. Processed arrays are cached (a folder of .npy files, no pickle, memory-mapped when read back) under a
key made of the source files' md5, the processing parameters and FORMAT_VERSION; a cache remembers its sources'
sizes and modification times, so that reloading it reads no source file unless one changed.

    python data_processor.py --data_dir ml-1m --output_dir data
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import errno
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import re
import secrets
import shutil
import sys
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import requests
from tqdm import tqdm

from data_model import Feature, RawTables, encode, multi_text, optional_integers, resolved, vocabulary_size
from model_config import DATASET_FORMATS, PAD_INDEX, SEQ_LENGTH, mask_index

log = logging.getLogger("data_processor")

# ----------------------------------------------------------------------------------------------------------
EARLIEST_RATING_TIME = 788_918_400  # 1995-01-01 UTC, before MovieLens existed: an earlier timestamp is corrupt

# Vocabularies: every stage imports these, none re-types them (the index conventions are model_config's).

UNKNOWN = "unknown"
GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip  # README order; the multi-hot column of a genre = its position
GENDERS = ("F", "M")  # gender index = position + 1; 0 = unknown
AGE_GROUPS = {1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
OCCUPATIONS = (
    '"other" or not specified', "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student",
    "lawyer", "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip  # occupation code = position; occupation index = code + 1
INTEGER_TEXT = r"-?[0-9]{1,18}"  # how an integer field must be written (int64, no "+", "3.0", "1e5" or spaces)
NUMBER_TEXT = r"-?[0-9]{1,18}(?:\.[0-9]{1,18})?"  # and a number field (half-star ratings: "3.5")
MAX_ID = 10_000_000  # MovieIDs/UserIDs index lookup tables: a larger id is refused, not allocated
EVAL_EVENTS = 2  # leave-one-out: a user's last event is the test target, the one before it the validation target
MIN_RATINGS_PER_USER = EVAL_EVENTS + 1  # and at least one training event
# The cold-start hold-outs of EVALUATION.md: these users and movies never reach training, counts or baselines.
HOLDOUT_USER_MODULUS = 10  # UserID % 10 == 0: 604 new users
HOLDOUT_MOVIE_MODULUS = 20  # MovieID % 20 == 0: new movies
HOLDOUTS = ("users", "items")
DAY_OF_YEAR_ENCODING = "1..366 (UTC) from the timestamp, 0 = padding"

# Bump when the arrays change meaning: stale caches are then rebuilt (2: content_sha256)
FORMAT_VERSION = 2
# metadata.json's layout (3: the histories as base64 arrays; 2, histories as JSON lists per user, is still read)
METADATA_FORMAT = 3
CACHE_VERSION = 4  # the processed arrays' layout (3: features declared per dataset; 4: a folder of .npy files)

SOURCE_FILES = ("ratings.dat", "movies.dat", "users.dat")
GROUPLENS_MD5 = {
    "ratings.dat": "a89aa3591bc97d6d4e0c89459ff39362",
    "movies.dat": "ef9fd9ff8d1b33faf73e2122c371e910",
    "users.dat": "681c0711d0d4548cd3d4718a49c2dcd8",
}
ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_ZIP_MD5 = "c4d9eecfca2ab87c1945afe126590906"
ML1M_ZIP_SHA256 = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"


def check_seq_length(seq_length: int) -> None:
    if seq_length < 2:
        raise ValueError(f"seq_length must be at least 2 (one input event and [MASK]), got {seq_length}")


# ----------------------------------------------------------------------------------------------------------
# Errors a user can cause. The CLI turns DataError and OSError into one line on stderr.


class DataError(Exception):
    """A problem with the input data that the user can fix (corrupt file, failed download, ...)."""


class DataFormatError(DataError, ValueError):
    """A malformed ML-1M file; the message names the file, the 1-based line number and the line."""


class ChecksumMismatchError(DataError, ValueError):
    """A file's checksum differs from the expected one."""


class UnsafeArchiveError(DataError, ValueError):
    """A zip member with an absolute path or '..', which would be written outside the target folder."""


class DownloadError(DataError, OSError):
    """The download failed: an HTTP error, or the connection failed on every retry."""


class SourceChecksumWarning(UserWarning):
    """A source file differs from the GroupLens original (raised as ChecksumMismatchError when strict)."""


# ----------------------------------------------------------------------------------------------------------
# The processed dataset


@dataclass
class SequenceData:
    """A dataset processed for the model, as numpy arrays; index conventions at the top of this module.

    Items (the interacted-with ones, by id): item_ids (length num_items + 2; pad and mask rows are -1) and, per item
    feature, item_values[name]: indices (num_items + 2,) or a multi-hot (num_items + 2, size), pad and mask rows 0.
    Users: user_ids and user_values[name], of length num_users + 1 (row 0 = unknown user).
    item_features / user_features: the features' resolved declarations, in the order the model reads them, each
    data_model.Feature.to_json() plus "name" and "size" (data_model.vocabulary_size) and, for a bucketed one, the
    "range" [lowest, highest] of its known values. preference_feature: the multi item feature whose distribution
    the preference head learns ("" when the items have none); user_preference_profile: that distribution over
    each user's training part (row 0: over all training events; a user whose items have no value: zeros).
    Timelines (CSR): user u's events are [seq_offsets[u], seq_offsets[u + 1]) of seq_items, seq_ratings (0 when
    has_ratings is False), seq_days (day of year, UTC) and seq_timestamps, stably sorted by timestamp; the last
    event is the test target, the second-to-last the validation target, the rest the training part.
    Training windows (N, seq_length), left-padded with 0: window_items, window_ratings, window_days; window_users.
    The whole item table, interacted with or not (for cold start): catalog_ids, catalog_titles (the "title" display
    field, else the id as text), catalog_values[name] (encoded as item_values) and catalog_numbers[name] (a
    bucketed feature's raw values, NaN when missing); user_numbers likewise for the users.
    source_md5: md5 of each source file, the fingerprint recorded in metadata.json and the cache key.
    """

    name: str
    num_items: int
    num_users: int
    seq_length: int
    window_stride: int
    has_ratings: bool
    item_features: list[dict[str, Any]]
    user_features: list[dict[str, Any]]
    preference_feature: str
    item_ids: np.ndarray
    item_values: dict[str, np.ndarray]
    user_ids: np.ndarray
    user_values: dict[str, np.ndarray]
    user_numbers: dict[str, np.ndarray]
    seq_offsets: np.ndarray
    seq_items: np.ndarray
    seq_ratings: np.ndarray
    seq_days: np.ndarray
    seq_timestamps: np.ndarray
    user_preference_profile: np.ndarray
    window_items: np.ndarray
    window_ratings: np.ndarray
    window_days: np.ndarray
    window_users: np.ndarray
    catalog_ids: np.ndarray
    catalog_titles: np.ndarray
    catalog_values: dict[str, np.ndarray]
    catalog_numbers: dict[str, np.ndarray]
    source_md5: dict[str, str]
    holdout: str = ""  # "", "users", "items" or "users,items": cold-start hold-outs removed (remove_held_out)

    @property
    def fingerprint(self) -> str:
        """One string identifying the source files and the hold-outs (see source_fingerprint)."""
        return source_fingerprint(self.source_md5, self.holdout)

    def feature(self, side: Literal["item", "user"], name: str) -> dict[str, Any] | None:
        """The declaration of item or user feature `name`, or None when the dataset has no such feature."""
        features = self.item_features if side == "item" else self.user_features
        return next((feature for feature in features if feature["name"] == name), None)

    def item_tables(self) -> list[np.ndarray]:
        """item_values in item_features order: what EnhancedBERT4Rec.set_item_side_info takes."""
        return [self.item_values[feature["name"]] for feature in self.item_features]


def source_fingerprint(source_md5: dict[str, str], holdout: str = "") -> str:
    """sha256 over the md5 of the source files (ML-1M: ratings.dat, movies.dat and users.dat, in that order; any
    other dataset's by name) and the hold-outs, when any: equal fingerprints, equal data."""
    names = SOURCE_FILES if set(source_md5) == set(SOURCE_FILES) else sorted(source_md5)
    text = ",".join(f"{name}:{source_md5[name]}" for name in names)
    text += f";holdout:{holdout}" if holdout else ""
    return hashlib.sha256(text.encode()).hexdigest()


def holdout_spec(holdout_users: bool, holdout_items: bool) -> str:
    """The SequenceData.holdout string of these switches."""
    return ",".join(name for name, on in zip(HOLDOUTS, (holdout_users, holdout_items), strict=True) if on)


def held_out_users(user_ids: np.ndarray) -> np.ndarray:
    """True for the UserIDs the new-user hold-out removes (EVALUATION.md: UserID % 10 == 0)."""
    return np.asarray(user_ids) % HOLDOUT_USER_MODULUS == 0


def held_out_movies(movie_ids: np.ndarray) -> np.ndarray:
    """True for the MovieIDs the new-movie hold-out removes (EVALUATION.md: MovieID % 20 == 0)."""
    return np.asarray(movie_ids) % HOLDOUT_MOVIE_MODULUS == 0


@dataclass
class EvalInputs:
    """Model inputs for scoring every user's validation or test target (U = num_users rows).

    items/days (U, T): the last T - 1 input events, left-padded, then [MASK] at position T - 1, whose day is
    that of the newest input event (no future timestamps). seen_items[seen_offsets[i]:seen_offsets[i + 1]] are
    ALL input items of row i, to exclude from the ranking.
    """

    users: np.ndarray
    items: np.ndarray
    days: np.ndarray
    targets: np.ndarray
    target_ratings: np.ndarray
    seen_offsets: np.ndarray
    seen_items: np.ndarray


# ----------------------------------------------------------------------------------------------------------
# Small helpers


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Write `path` through a temporary file beside it (.<name>.<random>.part), renamed into place only if the
    block succeeds: a reader never sees half a file, and a failed write (a full disk) leaves the old file as it
    was. The project's one way to write a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_path = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    try:
        with temp_path.open("xb") as handle:
            yield handle
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


def _file_digests(path: Path) -> tuple[str, str]:
    """md5 and sha256 of a file."""
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    return md5.hexdigest(), sha256.hexdigest()


def _digest_mismatch(
    expected_md5: str | None, expected_sha256: str | None, md5: str, sha256: str
) -> str | None:
    """Describe how the digests differ from the expected ones (None: they match)."""
    if expected_md5 is not None and md5 != expected_md5:
        return f"md5 {md5} is not the expected {expected_md5}"
    if expected_sha256 is not None and sha256 != expected_sha256:
        return f"sha256 {sha256} is not the expected {expected_sha256}"
    return None


def day_of_year(timestamps: np.ndarray) -> np.ndarray:
    """Day of year 1..366 (UTC) of Unix timestamps in seconds."""
    days = np.asarray(timestamps, dtype=np.int64).astype("datetime64[s]").astype("datetime64[D]")
    return (days - days.astype("datetime64[Y]")).astype(np.int64) + 1


def _window_stride(seq_length: int, window_stride: int | None) -> int:
    """The stride to use (default seq_length // 2), checked against seq_length."""
    check_seq_length(seq_length)
    stride = seq_length // 2 if window_stride is None else window_stride
    if not 1 <= stride <= seq_length:
        raise ValueError(
            f"window_stride must be in 1..seq_length ({seq_length}) so windows leave no gaps, got {stride}"
        )
    return stride


# ----------------------------------------------------------------------------------------------------------
# Download and safe extraction

_RETRYABLE = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def download_ml1m(
    dest_dir: str | Path = "ml-1m",
    url: str = ML1M_URL,
    md5: str | None = ML1M_ZIP_MD5,
    sha256: str | None = ML1M_ZIP_SHA256,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
) -> Path:
    """Download ML-1M's zip beside `dest_dir` (as <dest_dir>.zip) and extract its files into `dest_dir`.

    Skipped when `dest_dir` already holds the three files; a zip already there is reused when its checksums
    match. The download streams into a temporary file and is renamed into place only once verified; connection
    errors (including a connection dropped mid-transfer) are retried `retries` times, waiting
    backoff_s * 2**attempt seconds. Returns `dest_dir`.
    """
    dest_dir = Path(dest_dir).resolve()
    if all((dest_dir / name).is_file() for name in SOURCE_FILES):
        return dest_dir
    return download_zip(dest_dir, url, md5, sha256, retries, backoff_s, timeout_s)


def download_zip(
    dest_dir: Path,
    url: str,
    md5: str | None,
    sha256: str | None,
    retries: int = 4,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
    markers: tuple[str, ...] = ("ratings.dat",),
) -> Path:
    """Download a dataset's zip as <dest_dir>.zip (reused when it is there and its checksums match; None: not
    checked) and extract the folder of the zip holding one of `markers` into `dest_dir`. Returns `dest_dir`."""
    zip_path = dest_dir.with_name(dest_dir.name + ".zip")
    if not (zip_path.is_file() and _digest_mismatch(md5, sha256, *_file_digests(zip_path)) is None):
        _download_with_retries(url, zip_path, md5, sha256, retries, backoff_s, timeout_s)
    return extract_dataset_zip(zip_path, dest_dir, markers)


def _download_with_retries(
    url: str,
    target: Path,
    md5: str | None,
    sha256: str | None,
    retries: int,
    backoff_s: float,
    timeout_s: float,
) -> None:
    for attempt in range(retries + 1):
        try:
            _download_verified(url, target, md5, sha256, timeout_s)
            return
        except _RETRYABLE as exc:
            if attempt == retries:
                raise DownloadError(f"could not download {url} ({retries + 1} attempts): {exc}; offline? pass "
                                    "--data_dir with the dataset's folder or zip, if you already have it") from exc
            delay = backoff_s * 2**attempt
            log.warning("download of %s failed (%s); retrying in %.1f s", url, exc, delay)
            time.sleep(delay)
        except requests.RequestException as exc:
            raise DownloadError(f"could not download {url}: {exc}; offline? pass --data_dir with the dataset's "
                                "folder or zip, if you already have it") from exc


def _download_verified(url: str, target: Path, md5: str | None, sha256: str | None, timeout_s: float) -> None:
    md5_hash, sha256_hash = hashlib.md5(), hashlib.sha256()
    with atomic_file(target) as partial, requests.get(url, stream=True, timeout=timeout_s) as response:
        response.raise_for_status()
        expected_size = int(response.headers.get("Content-Length", 0)) or None
        received = 0
        with tqdm(total=expected_size, unit="B", unit_scale=True, desc=target.name, disable=None) as progress:
            for chunk in response.iter_content(chunk_size=1 << 16):
                partial.write(chunk)
                md5_hash.update(chunk)
                sha256_hash.update(chunk)
                received += len(chunk)
                progress.update(len(chunk))
        # urllib3 < 2 does not enforce Content-Length: a short body is a dropped connection, so retry it.
        if expected_size is not None and received != expected_size:
            raise requests.ConnectionError(f"connection closed after {received} of {expected_size} bytes")
        mismatch = _digest_mismatch(md5, sha256, md5_hash.hexdigest(), sha256_hash.hexdigest())
        if mismatch is not None:
            raise ChecksumMismatchError(
                f"{url}: {mismatch}; the download is corrupt or the server's file changed; nothing was kept"
            )


def _is_unsafe_member(name: str) -> bool:
    parts = re.split(r"[/\\]", name)
    return name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) is not None or ".." in parts


def data_members(
    archive: zipfile.ZipFile, zip_path: Path, markers: tuple[str, ...] = ("ratings.dat",)
) -> dict[str, str]:
    """File name -> member for the files beside the first of `markers` (GroupLens' zips keep a dataset in one
    folder: ml-1m/, ml-100k/, ml-10M100K/)."""
    found = [name for name in archive.namelist() if posixpath.basename(name) in markers]
    if not found:
        raise DataError(f"{zip_path}: no {' or '.join(markers)} in the archive; is it a MovieLens dataset?")
    folder = posixpath.dirname(found[0])
    return {
        posixpath.basename(name): name
        for name in archive.namelist()
        if posixpath.dirname(name) == folder and not name.endswith("/")
    }


def extract_dataset_zip(
    zip_path: str | Path, dest_dir: str | Path, markers: tuple[str, ...] = ("ratings.dat",)
) -> Path:
    """Extract the dataset files of `zip_path` (data_members) into `dest_dir`, refusing archives with unsafe
    member names.

    Every member is checked before anything is written; each file is written atomically. Returns `dest_dir`.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    with zipfile.ZipFile(zip_path) as archive:
        unsafe = [name for name in archive.namelist() if _is_unsafe_member(name)]
        if unsafe:
            raise UnsafeArchiveError(
                f"{zip_path}: refusing to extract member {unsafe[0]!r} (absolute path or '..'); "
                "the archive is not a genuine dataset zip"
            )
        for file_name, member in data_members(archive, zip_path, markers).items():
            with archive.open(member) as source, atomic_file(dest_dir / file_name) as target:
                while block := source.read(1 << 20):
                    target.write(block)
    return dest_dir


# ----------------------------------------------------------------------------------------------------------
# Reading the source files (folder or zip, read whole on first use: ML-1M's are 25 MB)


class SourceFile:
    """One source file: where it came from (label, for error messages), its bytes (raw, read on first use) and a
    stamp that changes whenever the file does without reading it (size and modification time; for a zip member,
    the zip's and the member's CRC), so that a cache can be matched to its sources at the cost of a stat."""

    def __init__(self, label: str, raw: bytes | None = None, *, read: Callable[[], bytes] | None = None,
                 stamp: list[Any] | None = None) -> None:
        self.label, self._raw, self._read, self.stamp = label, raw, read, stamp

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            assert self._read is not None, "SourceFile needs raw bytes or a read function"
            self._raw = self._read()
        return self._raw

    @classmethod
    def file(cls, path: Path) -> SourceFile:
        """A file in a folder, read when its bytes are first needed."""
        status = path.stat()
        return cls(str(path), read=path.read_bytes, stamp=[status.st_size, status.st_mtime_ns])

    @classmethod
    def member(cls, zip_path: Path, archive: zipfile.ZipFile, member: str) -> SourceFile:
        """A member of an open zip archive, read (by opening the zip again) when its bytes are first needed."""
        status, info = zip_path.stat(), archive.getinfo(member)

        def read() -> bytes:
            with zipfile.ZipFile(zip_path) as again:
                return again.read(member)

        return cls(f"{zip_path}:{member}", read=read,
                   stamp=[status.st_size, status.st_mtime_ns, member, info.CRC, info.file_size])


def read_source_files(data_dir: str | Path | None) -> dict[str, SourceFile]:
    """Read ratings.dat, movies.dat and users.dat from an ml-1m folder or an ml-1m.zip.

    None downloads ML-1M into ./ml-1m first (skipped when already there).
    """
    path = download_ml1m() if data_dir is None else Path(data_dir)
    if path.is_dir():
        missing = [name for name in SOURCE_FILES if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path}: missing {', '.join(missing)}; expected ML-1M's {', '.join(SOURCE_FILES)}"
            )
        return {name: SourceFile.file(path / name) for name in SOURCE_FILES}
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = data_members(archive, path)
            missing = [name for name in SOURCE_FILES if name not in members]
            if missing:
                raise DataError(f"{path}: no {', '.join(missing)} beside ratings.dat in the archive")
            return {name: SourceFile.member(path, archive, members[name]) for name in SOURCE_FILES}
    if path.exists():
        raise DataError(f"{path}: neither an ml-1m folder nor a zip file")
    raise FileNotFoundError(
        f"{path}: no such file or folder; pass the ml-1m folder or ml-1m.zip, or omit it to download ML-1M"
    )


def _verify_sources(sources: dict[str, SourceFile], source_md5: dict[str, str], strict: bool) -> None:
    differing = [name for name in SOURCE_FILES if source_md5[name] != GROUPLENS_MD5[name]]
    if not differing:
        return
    details = "; ".join(
        f"{sources[name].label} has md5 {source_md5[name]}, the GroupLens original {GROUPLENS_MD5[name]}"
        for name in differing
    )
    message = f"{details}: results are not comparable with published ML-1M figures"
    if strict:
        raise ChecksumMismatchError(message)
    warnings.warn(
        f"{message} (strict=True / --strict makes this an error)", SourceChecksumWarning, stacklevel=3
    )


# ----------------------------------------------------------------------------------------------------------
# Parsing: vectorised, with errors that point at the first offending line


def source_encoding(raw: bytes) -> str:
    """GroupLens ships ML-1M in latin-1; a copy re-encoded to UTF-8 (valid UTF-8 with non-ASCII bytes, which the
    latin-1 original is not: its accented letters are lone high bytes) is read as UTF-8, so titles never garble."""
    if raw.isascii():
        return "latin-1"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def _line_text(raw: bytes, row: int) -> str:
    line_ends = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == ord("\n"))
    start = 0 if row == 0 else int(line_ends[row - 1]) + 1
    end = int(line_ends[row]) if row < len(line_ends) else len(raw)
    return raw[start:end].decode(source_encoding(raw), errors="replace")


def row_error(source: SourceFile, row: int, problem: str) -> DataFormatError:
    return DataFormatError(f"{source.label}, line {row + 1}: {problem}: {_line_text(source.raw, row)!r}")


def check_rows(source: SourceFile, bad_rows: np.ndarray | pd.Series, problem: str) -> None:
    """Raise for the first row flagged in `bad_rows` (rows are lines: blank lines are rejected earlier)."""
    bad = np.flatnonzero(np.asarray(bad_rows))
    if bad.size:
        raise row_error(source, int(bad[0]), problem)


def check_field_counts(
    source: SourceFile, table: bytes, num_fields: int, separator: bytes = b"\t", shown_as: str = "::"
) -> None:
    """Every line of `table` (LF line ends, unquoted) must hold num_fields fields split by the one-byte `separator`
    (`shown_as` in the message: ML-1M's '::' is a tab by now)."""
    buf = np.frombuffer(table, dtype=np.uint8)
    separators_before_line_end = np.searchsorted(
        np.flatnonzero(buf == ord(separator)), np.flatnonzero(buf == ord("\n"))
    )
    fields_per_line = np.diff(separators_before_line_end, prepend=0) + 1
    bad = np.flatnonzero(fields_per_line != num_fields)
    if bad.size:
        row = int(bad[0])
        raise row_error(
            source, row, f"expected {num_fields} fields separated by '{shown_as}', found {fields_per_line[row]}"
        )


def checked_text(source: SourceFile, dataset: str = "ML-1M") -> tuple[bytes, str]:
    """The bytes of a text source with LF line ends and no UTF-8 BOM, and their encoding (source_encoding).

    NUL (UTF-16/32) and, read as latin-1, bytes 0x80-0x9f (control characters there; the accents of cp437 or
    mac-roman) mean another encoding: refused rather than read as garbled titles. So are an empty file and one
    that does not end with a line end (truncated)."""
    raw = source.raw.replace(b"\r\n", b"\n").removeprefix(b"\xef\xbb\xbf")  # Windows line ends, UTF-8 BOM
    encoding = source_encoding(raw)
    foreign = re.search(rb"\x00" if encoding == "utf-8" else rb"[\x00\x80-\x9f]", raw)
    if foreign:
        raise row_error(source, raw.count(b"\n", 0, foreign.start()),
                        f"byte 0x{raw[foreign.start()]:02x} cannot be in {dataset}'s latin-1 text: the file was saved "
                        f"in another encoding (UTF-16? cp437?); re-download {dataset} or save it as latin-1 or UTF-8")
    if not raw.strip():
        raise DataFormatError(f"{source.label}: the file is empty; re-download {dataset}")
    if not raw.endswith(b"\n"):
        raise row_error(
            source, raw.count(b"\n"), f"the file ends inside this line (truncated?); re-download {dataset}"
        )
    return raw, encoding


_DIGITS = np.zeros(256, dtype=bool)
_DIGITS[list(b"0123456789")] = True
_SCAN_BYTES = 1 << 26


def plain_numbers(body: bytes, separator: bytes, points: bool) -> bool:
    """Whether `body` holds only digits, line ends, the one-byte separator, '-' and, with points, '.' between two
    digits ("3." and ".5" are not plain): text that pandas' number parsers read as it is written. A numpy scan
    in 64 MB pieces (a regular expression over a 0.9 GB ratings file took most of its reading time)."""
    allowed = _DIGITS.copy()
    allowed[list(b"\n-" + separator + (b"." if points else b""))] = True
    data = np.frombuffer(body, dtype=np.uint8)
    for start in range(0, len(data), _SCAN_BYTES):
        piece = data[start : start + _SCAN_BYTES]
        if not allowed[piece].all():
            return False
        if points:
            dots = np.flatnonzero(piece == ord(".")) + start
            if dots.size and (dots[0] == 0 or dots[-1] == len(data) - 1 or not _DIGITS[data[dots - 1]].all()
                              or not _DIGITS[data[dots + 1]].all()):
                return False
    return True


def read_table(
    source: SourceFile,
    columns: tuple[str, ...],
    int_columns: tuple[str, ...],
    float_columns: tuple[str, ...] = (),
    separator: bytes = b"::",
    header: str | None = None,
    dataset: str = "ML-1M",
) -> pd.DataFrame:
    """Parse an unquoted table (ML-1M's '::', or a one-byte separator; latin-1, or UTF-8: source_encoding; CRLF
    line ends allowed) with pandas' C engine ('::' becomes a tab first). `header`: the first line, which must read
    exactly so. Number columns must be written as numbers: pandas alone would also take "3.0" or "1e5" as an
    integer and "1e5" or " 3" as a number, so they are checked as text (a byte scan when every column is a number).
    Other columns are text. Errors name the file, the line and its content."""
    raw, encoding = checked_text(source, dataset)
    table = raw.replace(b"::", b"\t") if separator == b"::" else raw
    split = b"\t" if separator == b"::" else separator
    check_field_counts(source, table, len(columns), split, separator.decode().replace("\t", "\\t"))
    if separator == b"::" and (stray := re.search(rb"(?m)(?:^|\t):|:(?:\t|$)", table)):  # ":::", a lone ':'
        raise row_error(source, table.count(b"\n", 0, stray.start()),
                        "a field begins or ends with ':' (a broken '::' separator?)")
    skip = 0
    if header is not None:
        first_line = table[: table.index(b"\n")].decode(encoding)
        if first_line.split(split.decode()) != header.split(separator.decode()):
            raise row_error(source, 0, f"expected the header {header!r}")
        skip = 1

    def parse(dtypes: dict[str, Any]) -> pd.DataFrame:
        return pd.read_csv(
            io.BytesIO(table),
            sep=split.decode(),
            header=None,
            skiprows=skip,
            names=list(columns),
            dtype=dtypes,
            quoting=csv.QUOTE_NONE,
            na_filter=False,
            encoding=encoding,
            engine="c",
        )

    numbers = {**dict.fromkeys(int_columns, np.int64), **dict.fromkeys(float_columns, np.float64)}
    if len(numbers) == len(columns):  # ratings: a fast byte scan, then pandas' number parsers
        body = table[table.index(b"\n") + 1 :] if skip else table
        if plain_numbers(body, split, points=bool(float_columns)):
            with contextlib.suppress(ValueError, OverflowError):  # e.g. "1-2": found by the text check below
                return parse(numbers)
    as_text = parse(dict.fromkeys(columns, str))
    patterns = dict.fromkeys(int_columns, INTEGER_TEXT) | dict.fromkeys(float_columns, NUMBER_TEXT)
    first_bad = [
        (int(rows[0]), name)
        for name, pattern in patterns.items()
        if (rows := np.flatnonzero(~as_text[name].str.fullmatch(pattern).to_numpy())).size
    ]
    if first_bad:
        row, name = min(first_bad)
        raise row_error(source, row + skip, f"{name} is not {'an integer' if name in int_columns else 'a number'}")
    return as_text.astype(numbers)


class MovieTable(NamedTuple):
    """movies.dat sorted by MovieID: genres multi-hot over GENRES, release year (-1 = none in the title)."""

    movie_ids: np.ndarray
    titles: np.ndarray
    genres: np.ndarray
    years: np.ndarray


class UserTable(NamedTuple):
    """users.dat sorted by UserID, features as indices (conventions at the top of this module); rows = 0-based line
    of each user."""

    user_ids: np.ndarray
    gender: np.ndarray
    age: np.ndarray
    occupation: np.ndarray
    rows: np.ndarray


def release_years(titles: pd.Series) -> np.ndarray:
    """The year in each title's trailing "(YYYY)", -1 if there is none.

    Other parentheses are ignored: "City of Lost Children, The (Cité des enfants perdus, La) (1995)" -> 1995.
    """
    year = titles.str.extract(r"\((\d{4})\)\s*$", expand=False)
    return pd.to_numeric(year).fillna(-1).to_numpy(np.int64)


def parse_movies(source: SourceFile) -> MovieTable:
    """Parse and validate movies.dat (MovieID::Title::Genres)."""
    movies = read_table(source, ("movie_id", "title", "genres"), ("movie_id",))
    check_rows(source, ~movies["movie_id"].between(1, MAX_ID), f"MovieID must be 1..{MAX_ID:,}")
    check_rows(source, movies["movie_id"].duplicated(), "duplicate MovieID")
    dummies = movies["genres"].str.get_dummies(sep="|")
    unknown = [name for name in dummies.columns if name not in GENRES]
    genres = dummies.reindex(columns=list(GENRES), fill_value=0).to_numpy(np.float32)
    check_rows(
        source,
        dummies[unknown].any(axis=1).to_numpy() | (genres.sum(axis=1) == 0),
        f"genres must be '|'-separated names from {', '.join(GENRES)}",
    )
    order = np.argsort(movies["movie_id"].to_numpy(), kind="stable")
    return MovieTable(
        movie_ids=movies["movie_id"].to_numpy()[order],
        titles=movies["title"].to_numpy(str)[order],
        genres=genres[order],
        years=release_years(movies["title"])[order],
    )


def parse_users(source: SourceFile) -> UserTable:
    """Parse and validate users.dat (UserID::Gender::Age::Occupation::Zip-code)."""
    columns = ("user_id", "gender", "age", "occupation", "zip_code")
    users = read_table(source, columns, ("user_id", "age", "occupation"))
    check_rows(source, ~users["user_id"].between(1, MAX_ID), f"UserID must be 1..{MAX_ID:,}")
    check_rows(source, users["user_id"].duplicated(), "duplicate UserID")
    check_rows(source, ~users["gender"].isin(GENDERS), "gender must be F or M")
    check_rows(
        source, ~users["age"].isin(list(AGE_GROUPS)), f"age must be one of {', '.join(map(str, AGE_GROUPS))}"
    )
    check_rows(source, ~users["occupation"].between(0, len(OCCUPATIONS) - 1), "occupation must be 0..20")
    order = np.argsort(users["user_id"].to_numpy(), kind="stable")
    return UserTable(
        user_ids=users["user_id"].to_numpy()[order],
        gender=np.searchsorted(GENDERS, users["gender"].to_numpy(str))[order] + 1,
        age=np.searchsorted(list(AGE_GROUPS), users["age"].to_numpy())[order] + 1,
        occupation=users["occupation"].to_numpy()[order] + 1,
        rows=order,
    )


def parse_ratings(source: SourceFile, movie_ids: np.ndarray, user_ids: np.ndarray) -> pd.DataFrame:
    """Parse and validate ratings.dat (UserID::MovieID::Rating::Timestamp) against known movies and users."""
    columns = ("user_id", "movie_id", "rating", "timestamp")
    ratings = read_table(source, columns, columns)
    check_rows(source, ~ratings["rating"].between(1, 5), "rating must be 1..5")
    check_rows(source, ~ratings["timestamp"].between(EARLIEST_RATING_TIME, time.time() + 86400),
                "timestamp must be Unix seconds between 1995-01-01 and today (MovieLens ratings are from 1997 on)")
    check_rows(source, ~np.isin(ratings["movie_id"], movie_ids), "MovieID not in movies.dat")
    check_rows(source, ~np.isin(ratings["user_id"], user_ids), "UserID not in users.dat")
    repeated = np.flatnonzero(ratings.duplicated(["user_id", "movie_id"]).to_numpy())
    if repeated.size:
        user, movie = ratings.loc[repeated[0], ["user_id", "movie_id"]]
        first = np.flatnonzero(
            (ratings["user_id"] == user).to_numpy() & (ratings["movie_id"] == movie).to_numpy()
        )[0]
        raise row_error(
            source, int(repeated[0]), f"user {user} already rated movie {movie} on line {first + 1}"
        )
    return ratings


# ----------------------------------------------------------------------------------------------------------
# Features, timelines and windows


def left_padded(values: np.ndarray, ends: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Row i = values[max(starts[i], ends[i] - width):ends[i]], left-padded with 0 to `width`."""
    positions = ends[:, None] - width + np.arange(width)
    return np.where(positions >= starts[:, None], values[np.maximum(positions, 0)], 0)


def window_ends(
    train_lengths: np.ndarray, seq_length: int, window_stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Where each user's training windows end, as (user row, end position within the training part).

    A part of at most seq_length events gives one window. A longer one gives windows ending at its newest
    event and every window_stride events before it while a full window fits, plus one covering its oldest
    seq_length events, so every training event is in at least one window. A user's windows are in
    chronological order.
    """
    longer = train_lengths > seq_length
    counts = np.where(longer, -(-(train_lengths - seq_length) // window_stride) + 1, 1)
    user_rows = np.repeat(np.arange(len(train_lengths)), counts)
    rank = np.arange(len(user_rows)) - np.repeat(np.cumsum(counts) - counts, counts)  # 0 = oldest window
    length, count = train_lengths[user_rows], counts[user_rows]
    ends = np.where(rank == 0, np.minimum(length, seq_length), length - (count - 1 - rank) * window_stride)
    return user_rows, ends


def _timelines(
    interactions: pd.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """CSR offsets and per-event arrays over users `user_ids` and items `item_ids` (both sorted), each user's
    events stably sorted by timestamp (ties: file order)."""
    user_index = np.searchsorted(user_ids, interactions["user_id"].to_numpy()) + 1
    timestamps = interactions["timestamp"].to_numpy()
    order = np.argsort(timestamps, kind="stable")
    order = order[np.argsort(user_index[order], kind="stable")]
    counts = np.bincount(user_index, minlength=len(user_ids) + 1)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    events = {
        "seq_items": np.searchsorted(item_ids, interactions["item_id"].to_numpy()[order]) + 1,
        "seq_ratings": interactions["rating"].to_numpy()[order],
        "seq_days": day_of_year(timestamps[order]),
        "seq_timestamps": timestamps[order],
    }
    return offsets, events


def training_part(offsets: np.ndarray) -> np.ndarray:
    """Per event of CSR timelines (user u's events at offsets[u]:offsets[u + 1], time order), whether it is in
    its user's training part: every event but the last EVAL_EVENTS (validation and test targets). The one
    definition of the split's training part; counts, baselines and profiles all read it."""
    lengths = np.diff(offsets)
    users = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(users)) - offsets[users]
    return position < lengths[users] - EVAL_EVENTS


def _preference_profiles(seq_offsets: np.ndarray, seq_items: np.ndarray, item_hot: np.ndarray) -> np.ndarray:
    """Distribution of each user's training part over a multi feature's values (item_hot: the item multi-hot);
    row 0 over all training events. A row without any value is all zeros."""
    train_lengths = np.diff(seq_offsets)[1:] - EVAL_EVENTS
    train_values = item_hot[seq_items[training_part(seq_offsets)]]
    per_user = np.add.reduceat(train_values, np.cumsum(train_lengths) - train_lengths, axis=0)
    profiles = np.vstack([per_user.sum(axis=0, keepdims=True), per_user])
    totals = profiles.sum(axis=1, keepdims=True)
    return np.divide(profiles, totals, out=np.zeros_like(profiles), where=totals > 0).astype(np.float32)


def remove_held_out(
    interactions: pd.DataFrame, users: pd.DataFrame, holdout: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The interactions and users left after the cold-start hold-outs: "users" drops the held-out users entirely
    (table rows and ratings), "items" drops every rating of a held-out movie (the movie stays in the item table as
    a never-rated movie). Users left with fewer than MIN_RATINGS_PER_USER ratings are dropped too."""
    keep = np.ones(len(interactions), dtype=bool)
    if "items" in holdout.split(","):
        keep &= ~held_out_movies(interactions["item_id"].to_numpy())
    if "users" in holdout.split(","):
        keep &= ~held_out_users(interactions["user_id"].to_numpy())
    interactions = interactions[keep].reset_index(drop=True)
    user_ids = users["user_id"].to_numpy()
    counts = interactions["user_id"].value_counts()
    enough = counts.reindex(user_ids, fill_value=0).to_numpy() >= MIN_RATINGS_PER_USER
    interactions = interactions[np.isin(interactions["user_id"].to_numpy(), user_ids[enough])].reset_index(drop=True)
    return interactions, users[enough].reset_index(drop=True)


# ML-1M's features, declared once: the arrays below are encoded from these declarations (data_model.encode)
ML1M_ITEM_FEATURES = [
    Feature("title", "display"), Feature("genres", "multi", list(GENRES)), Feature("year", "bucketed")
]
ML1M_USER_FEATURES = [
    Feature("gender", "categorical", list(GENDERS)),
    Feature("age", "categorical", list(AGE_GROUPS)),
    Feature("occupation", "categorical", list(range(len(OCCUPATIONS)))),
]


def read_ml1m(sources: dict[str, SourceFile], source_md5: dict[str, str] | None = None) -> RawTables:
    """ML-1M's three files as the data model (validated by parse_movies, parse_users and parse_ratings): items with
    title, genres ('|', README order) and the release year of the title; users with gender, age code and
    occupation code; ratings in file order. source_md5: the files' md5 when already computed."""
    movies = parse_movies(sources["movies.dat"])
    users = parse_users(sources["users.dat"])
    ratings = parse_ratings(sources["ratings.dat"], movies.movie_ids, users.user_ids)
    items = pd.DataFrame({"item_id": movies.movie_ids, "title": movies.titles,
                          "genres": multi_text(movies.genres, GENRES), "year": optional_integers(movies.years)})
    user_table = pd.DataFrame({
        "user_id": users.user_ids,
        "gender": np.array(GENDERS)[users.gender - 1],
        "age": np.array(list(AGE_GROUPS))[users.age - 1],
        "occupation": users.occupation - 1,
    })
    interactions = pd.DataFrame({"user_id": ratings["user_id"].to_numpy(), "item_id": ratings["movie_id"].to_numpy(),
                                 "timestamp": ratings["timestamp"].to_numpy(), "rating": ratings["rating"].to_numpy()})
    return RawTables(name="ml-1m", interactions=interactions, items=items, users=user_table,
                     item_features=list(ML1M_ITEM_FEATURES), user_features=list(ML1M_USER_FEATURES),
                     source_md5=source_md5 or {name: hashlib.md5(source.raw).hexdigest()
                                               for name, source in sources.items()})


def process_sources(fmt: str, sources: dict[str, SourceFile], source_md5: dict[str, str], seq_length: int,
                    window_stride: int, holdout: str = "") -> SequenceData:
    """Read the source files into the data model (the format's reader; ML-1M: read_ml1m) and featurise them (no
    cache), without the held-out users/items. ML-1M refuses a user with too few ratings (its files have none); any
    other dataset leaves such users out and says how many."""
    import readers  # readers builds on this module: imported here, not at the top

    tables = read_ml1m(sources, source_md5) if fmt == "ml-1m" else readers.READERS[fmt](sources)
    if holdout:
        interactions, users = remove_held_out(tables.interactions, tables.users, holdout)
        tables = replace(tables, interactions=interactions, users=users)
    counts = tables.interactions["user_id"].value_counts().reindex(tables.users["user_id"], fill_value=0)
    too_few = tables.users["user_id"].to_numpy()[counts.to_numpy() < MIN_RATINGS_PER_USER]
    if too_few.size and fmt == "ml-1m":
        parsed = parse_users(sources["users.dat"])  # only for the line numbers of the error
        raise row_error(sources["users.dat"], int(parsed.rows[np.searchsorted(parsed.user_ids, too_few)].min()),
                        f"user has fewer than {MIN_RATINGS_PER_USER} ratings (leave-one-out needs them)")
    if too_few.size:
        log.warning("left out %d of %d users with fewer than %d interactions (leave-one-out needs them)",
                    too_few.size, len(tables.users), MIN_RATINGS_PER_USER)
        keep = ~tables.users["user_id"].isin(too_few)
        tables = replace(tables, users=tables.users[keep.to_numpy()].reset_index(drop=True),
                         interactions=tables.interactions[~tables.interactions["user_id"].isin(too_few)
                                                          ].reset_index(drop=True))
    if tables.users.empty:
        raise DataError(f"{tables.name}: no user has {MIN_RATINGS_PER_USER} or more interactions: nothing to train")
    return featurise(tables, seq_length, window_stride, holdout)


def _declaration(feature: Feature, column: pd.Series) -> dict[str, Any]:
    """A resolved feature as plain data: its JSON declaration, name, size and (bucketed) the range of known values."""
    declared = {"name": feature.name, **feature.to_json(), "size": vocabulary_size(feature)}
    if feature.kind == "bucketed":
        known = pd.to_numeric(column).dropna()
        declared["range"] = [_plain_number(known.min()), _plain_number(known.max())] if len(known) else None
    return declared


def _plain_number(value: Any) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def _numbers(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column).to_numpy(np.float64, na_value=np.nan)


def featurise(tables: RawTables, seq_length: int, window_stride: int, holdout: str) -> SequenceData:
    """The arrays of SequenceData from the data model (hold-outs already removed): items are the interacted-with
    ones (by id), each feature encoded as its declaration says; timelines, the leave-one-out split and the training
    windows from the interactions. Every user needs MIN_RATINGS_PER_USER interactions. Display features other than
    the title are not carried."""
    items, users, interactions = tables.items, tables.users, tables.interactions
    for side, ids in (("user", users["user_id"]), ("item", items["item_id"])):
        if ids.dtype == object:
            raise DataError(f"{tables.name}: {side} ids are text ({ids.iloc[0]!r}); training and serving take integer "
                            f"ids: number them first, e.g. {side}s.{side}_id = pd.factorize(ids)[0] + 1, keeping the "
                            "map for your application")
    item_features = [resolved(f, items[f.name]) for f in tables.item_features if f.kind != "display"]
    skipped = [f.name for f in tables.user_features if f.kind == "multi"]
    if skipped:
        log.warning("note: user feature(s) %s are multi-valued: the engine reads one value per user feature, so "
                    "they are left out", ", ".join(skipped))
    user_features = [resolved(f, users[f.name]) for f in tables.user_features if f.kind not in ("display", "multi")]
    rated_ids = np.unique(interactions["item_id"].to_numpy())
    user_ids = users["user_id"].to_numpy()
    if not tables.has_ratings:
        interactions = interactions.assign(rating=np.zeros(len(interactions), np.int64))
    seq_offsets, events = _timelines(interactions, user_ids, rated_ids)

    catalog_values = {f.name: encode(f, items[f.name]) for f in item_features}
    item_rows = np.searchsorted(items["item_id"].to_numpy(), rated_ids)
    item_values = {}
    for name, values in catalog_values.items():
        rows = np.zeros((len(rated_ids) + 2, *values.shape[1:]), values.dtype)  # pad and mask rows stay 0
        rows[1:-1] = values[item_rows]
        item_values[name] = rows
    user_values = {f.name: np.concatenate([np.zeros((1, *v.shape[1:]), v.dtype), v])
                   for f in user_features for v in [encode(f, users[f.name])]}
    preference = next((f.name for f in item_features if f.kind == "multi"), "")
    profile = (_preference_profiles(seq_offsets, events["seq_items"], item_values[preference]) if preference else
               np.zeros((len(user_ids) + 1, 0), np.float32))
    titles = items["title"] if "title" in items.columns else items["item_id"].astype(str)

    starts = seq_offsets[1:-1]
    train_lengths = np.diff(seq_offsets)[1:] - EVAL_EVENTS
    user_rows, ends = window_ends(train_lengths, seq_length, window_stride)
    window_starts, window_stops = starts[user_rows], starts[user_rows] + ends
    return SequenceData(
        name=tables.name,
        num_items=len(rated_ids),
        num_users=len(user_ids),
        seq_length=seq_length,
        window_stride=window_stride,
        has_ratings=tables.has_ratings,
        item_features=[_declaration(f, items[f.name]) for f in item_features],
        user_features=[_declaration(f, users[f.name]) for f in user_features],
        preference_feature=preference,
        item_ids=np.concatenate([[-1], rated_ids, [-1]]),
        item_values=item_values,
        user_ids=np.concatenate([[-1], user_ids]),
        user_values=user_values,
        user_numbers={f.name: np.concatenate([[np.nan], _numbers(users[f.name])])
                      for f in user_features if f.kind == "bucketed"},
        seq_offsets=seq_offsets,
        **events,
        user_preference_profile=profile,
        window_items=left_padded(events["seq_items"], window_stops, window_starts, seq_length),
        window_ratings=left_padded(events["seq_ratings"], window_stops, window_starts, seq_length),
        window_days=left_padded(events["seq_days"], window_stops, window_starts, seq_length),
        window_users=user_rows + 1,
        catalog_ids=items["item_id"].to_numpy(),
        catalog_titles=titles.to_numpy(str),
        catalog_values=catalog_values,
        catalog_numbers={f.name: _numbers(items[f.name]) for f in item_features if f.kind == "bucketed"},
        source_md5=tables.source_md5,
        holdout=holdout,
    )


def scoring_input(items: np.ndarray, days: np.ndarray, starts: np.ndarray, ends: np.ndarray, seq_length: int,
                  mask_token: int, empty_day: int) -> tuple[np.ndarray, np.ndarray]:
    """The layout every next-item score reads, in evaluation and in the engine: row i's events are
    items[starts[i]:ends[i]] (flat, time order); its input is the newest seq_length - 1 of them, left-padded with
    0, then [MASK] carrying the newest event's day (empty_day for a row without events). Returns the (rows,
    seq_length) item and day arrays. Training's next-item rows are the same layout (trainer.mask_last_item).
    """
    check_seq_length(seq_length)
    width = seq_length - 1
    items, days = np.append(items, PAD_INDEX), np.append(days, 0)  # keeps the gathers valid when all rows are empty
    newest_day = np.where(ends > starts, days[np.maximum(ends - 1, 0)], empty_day)
    return (np.column_stack([left_padded(items, ends, starts, width), np.full(len(ends), mask_token)]),
            np.column_stack([left_padded(days, ends, starts, width), newest_day]))


def eval_inputs(data: SequenceData, split: Literal["val", "test"], seq_length: int) -> EvalInputs:
    """Inputs and targets for scoring every user's validation ("val") or test ("test") item.

    The input is the training part for "val" and the training part + validation item for "test".
    """
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    starts = data.seq_offsets[1:-1]
    counts = np.diff(data.seq_offsets)[1:]
    target_positions = data.seq_offsets[2:] - (2 if split == "val" else 1)
    items, days = scoring_input(data.seq_items, data.seq_days, starts, target_positions, seq_length,
                                mask_index(data.num_items), empty_day=0)
    input_lengths = target_positions - starts
    position = np.arange(len(data.seq_items)) - np.repeat(starts, counts)
    return EvalInputs(
        users=np.arange(1, data.num_users + 1),
        items=items,
        days=days,
        targets=data.seq_items[target_positions],
        target_ratings=data.seq_ratings[target_positions],
        seen_offsets=np.concatenate([[0], np.cumsum(input_lengths)]),
        seen_items=data.seq_items[position < np.repeat(input_lengths, counts)],
    )


# ----------------------------------------------------------------------------------------------------------
# Loading with a cache


def _cache_key(source_md5: dict[str, str], seq_length: int, window_stride: int, holdout: str) -> str:
    spec = {
        "format_version": FORMAT_VERSION,
        "cache_version": CACHE_VERSION,
        "source_fingerprint": source_fingerprint(source_md5, holdout),
        "seq_length": seq_length,
        "window_stride": window_stride,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


# A source file's stamp (size, modification time) stands for its md5 only when the file was last changed this long
# before the cache was written: a file rewritten within the file system's timestamp granularity of an earlier
# version, with the same size, could otherwise keep its stamp (the "racy" case); such files are hashed instead.
_STAMP_MARGIN_NS = 2_000_000_000
_CACHE_INDEX = "cache.json"


class _Cache(NamedTuple):
    """A cache folder's index: its key, the md5 its sources had, their stamps and when it was written."""

    path: Path
    index: dict[str, Any]

    def md5_by_stamp(self, sources: dict[str, SourceFile]) -> dict[str, str] | None:
        """The sources' md5 as recorded, when every source still has the stamp it had, changed long enough
        before the cache was written; None when any source must be read and hashed."""
        stamps, written = self.index.get("source_stamps"), self.index.get("written_ns", 0)
        if stamps != {name: source.stamp for name, source in sources.items()} or any(
                stamp is None or stamp[1] > written - _STAMP_MARGIN_NS for stamp in stamps.values()):
            return None
        return self.index["source_md5"]

    def load(self) -> SequenceData:
        """The arrays, memory-mapped copy-on-write (read from disk as they are used; writes stay private)."""
        arrays = {name: _load_array(self.path / f"{name}.npy") for name in self.index["arrays"]}
        groups = {group: {name: arrays.pop(f"{group}.{i}") for i, name in enumerate(names)}
                  for group, names in self.index["array_groups"].items()}
        return SequenceData(**self.index["scalars"], **arrays, **groups)


def _load_array(path: Path) -> np.ndarray:
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    return np.array(array) if array.size == 0 else array  # an empty map is of no use and cannot be made on some OSes


def _read_cache(path: Path) -> _Cache | None:
    """The cache folder's index, or None when there is no cache or its index is unreadable."""
    index_path = path / _CACHE_INDEX
    if not index_path.is_file():
        return None
    try:
        index = json.loads(index_path.read_text())
        if index.get("cache_version") != CACHE_VERSION:
            return None
        return _Cache(path, index)
    except (OSError, ValueError) as exc:
        log.warning("cache %s is unreadable (%s): rebuilding", path, exc)
        return None


def _write_cache(path: Path, key: str, data: SequenceData, sources: dict[str, SourceFile]) -> None:
    """A folder of .npy files (no pickle: arrays by field name, a dict of arrays such as item_values as
    "<field>.<i>") and cache.json (the key, the sources' md5 and stamps, the other fields). Written beside the
    old one and renamed into place, so that a reader sees either cache whole; an .npz cache of the same name
    (the earlier layout) is removed."""
    values = {field.name: getattr(data, field.name) for field in fields(data)}
    arrays = {name: value for name, value in values.items() if isinstance(value, np.ndarray)}
    groups = {name: value for name, value in values.items()
              if isinstance(value, dict) and all(isinstance(v, np.ndarray) for v in value.values())}
    for group, members in groups.items():
        arrays |= {f"{group}.{i}": value for i, value in enumerate(members.values())}
    scalars = {name: value for name, value in values.items()
               if name not in arrays and name not in groups}
    index = {"cache_version": CACHE_VERSION, "cache_key": key, "source_md5": data.source_md5,
             "source_stamps": {name: source.stamp for name, source in sources.items()}, "written_ns": time.time_ns(),
             "arrays": list(arrays), "array_groups": {group: list(members) for group, members in groups.items()},
             "scalars": scalars}
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")
    old = path.with_name(f".{path.name}.{secrets.token_hex(6)}.old")
    try:
        temp.mkdir()
        for name, array in arrays.items():
            np.save(temp / f"{name}.npy", array, allow_pickle=False)
        (temp / _CACHE_INDEX).write_text(json.dumps(index))
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(temp, path)
        except OSError as exc:
            # Another process building the same cache (each rank of a torchrun, two runs started together) renamed
            # its copy into place between the two renames: the same sources and key, so its copy stands.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (path / _CACHE_INDEX).is_file():
                raise
    finally:
        for leftover in (temp, old):
            shutil.rmtree(leftover, ignore_errors=True)
    path.with_suffix(".npz").unlink(missing_ok=True)


def _restamp(cache: _Cache, sources: dict[str, SourceFile]) -> None:
    """Record the sources' current stamps in a cache their md5 matched, so that the next load need not hash them
    (the sources were copied or touched, not changed)."""
    index = cache.index | {"source_stamps": {name: source.stamp for name, source in sources.items()},
                           "written_ns": time.time_ns()}
    with atomic_file(cache.path / _CACHE_INDEX) as handle:
        handle.write(json.dumps(index).encode())


def load_dataset(
    data_dir: str | Path | None,
    cache_dir: str | Path | None = None,
    seq_length: int = SEQ_LENGTH,
    window_stride: int | None = None,
    verify: bool = True,
    strict: bool = False,
    holdout_users: bool = False,
    holdout_items: bool = False,
    dataset: str | None = None,
) -> SequenceData:
    """Load a dataset (ML-1M, any MovieLens release, or the generic format: readers.py) as a SequenceData.

    data_dir: a dataset folder or zip; None downloads `dataset` (default ML-1M) into ./<name> (skipped when
        already there). dataset: the format by name (readers.DATASET_FORMATS); None detects it from the files.
    cache_dir: where processed arrays are cached (None: no cache). The cache is keyed by the md5 of the source
        files, seq_length, window_stride and FORMAT_VERSION; a stale or unreadable cache is rebuilt. Sources whose
        size and modification time are those the cache recorded are not read again (their recorded md5 is used).
    window_stride: stride of the training windows (default seq_length // 2).
    verify: compare ML-1M's source files' md5 with the GroupLens originals; a difference is a
        SourceChecksumWarning, or a ChecksumMismatchError when `strict`.
    holdout_users / holdout_items: leave out the cold-start hold-outs of EVALUATION.md (remove_held_out).
    Raises DataError (DataFormatError for a malformed file, naming file, line and content) or
    FileNotFoundError for a bad data_dir.
    """
    import readers  # readers builds on this module: imported here, not at the top

    window_stride = _window_stride(seq_length, window_stride)
    if data_dir is None:
        data_dir = download_ml1m() if dataset in (None, "ml-1m") else readers.download_dataset(dataset)
    fmt, sources = readers.dataset_sources(data_dir, dataset)
    holdout = holdout_spec(holdout_users, holdout_items)
    cache = None
    if cache_dir is not None:
        suffix = f"_holdout-{holdout.replace(',', '-')}" if holdout else ""
        where = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:12]
        prefix = "ml1m" if fmt == "ml-1m" else f"{fmt}-{where}"
        cache_path = Path(cache_dir) / f"{prefix}_T{seq_length}_S{window_stride}{suffix}"
        cache = _read_cache(cache_path)
    by_stamp = cache.md5_by_stamp(sources) if cache is not None else None
    source_md5 = by_stamp or {name: hashlib.md5(source.raw).hexdigest() for name, source in sources.items()}
    if verify and fmt == "ml-1m":
        _verify_sources(sources, source_md5, strict)
    if cache_dir is None:
        return process_sources(fmt, sources, source_md5, seq_length, window_stride, holdout)
    key = _cache_key(source_md5, seq_length, window_stride, holdout)
    if cache is not None and cache.index["cache_key"] == key:
        try:
            data = cache.load()
            if by_stamp is None:
                _restamp(cache, sources)
            return data
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("cache %s is unreadable (%s): rebuilding", cache_path, exc)
    elif cache is not None:
        log.info("cache %s is stale (source files, parameters or format changed): rebuilding", cache_path)
    data = process_sources(fmt, sources, source_md5, seq_length, window_stride, holdout)
    _write_cache(cache_path, key, data, sources)
    log.info("cached the processed arrays in %s", cache_path)
    return data


# ----------------------------------------------------------------------------------------------------------
# Statistics and metadata.json


def dataset_statistics(data: SequenceData) -> dict[str, Any]:
    """Counts and ranges of the processed dataset (printed by the CLI, stored in metadata.json). MovieLens
    datasets count ratings and movies, any other interactions and items; each item feature gets a line (ML-1M's
    with the names it always had: genres, release_years, movies_without_year)."""
    counts = np.diff(data.seq_offsets)[1:]
    event_users = np.repeat(np.arange(1, data.num_users + 1), counts)
    timestamps = data.seq_timestamps
    tie = (timestamps[1:] == timestamps[:-1]) & (event_users[1:] == event_users[:-1])
    in_tie = np.zeros(len(timestamps), dtype=bool)
    in_tie[1:] |= tie
    in_tie[:-1] |= tie
    first, last = (
        str(np.datetime64(int(t), "s").astype("datetime64[D]")) for t in (timestamps.min(), timestamps.max())
    )
    events, items = ("ratings", "movies") if data.name.startswith("ml-") else ("interactions", "items")
    features: dict[str, Any] = {}
    for feature in data.item_features:
        name, legacy = feature["name"], data.name == "ml-1m"
        if feature["kind"] in ("multi", "categorical"):
            features["genres" if legacy and name == "genres" else f"{name}_values"] = feature["size"] - (
                feature["kind"] == "categorical")
        else:
            low, high = feature["range"] or (None, None)
            missing = int((data.catalog_values[name] == 1).sum())
            if legacy and name == "year":
                features |= {"release_years": f"{low}-{high}", "movies_without_year": missing}
            else:
                features |= {f"{name}_range": f"{low}-{high}", f"{items}_without_{name}": missing}
    return {
        events: len(data.seq_items),
        "users": data.num_users,
        items: len(data.catalog_ids),
        f"rated_{items}" if events == "ratings" else f"interacted_{items}": data.num_items,
        f"never_rated_{items}" if events == "ratings" else f"never_interacted_{items}":
            len(data.catalog_ids) - data.num_items,
        **features,
        f"{events[:-1]}_dates_utc": f"{first} .. {last}",
        "mean_rating": round(float(data.seq_ratings.mean()), 4) if data.has_ratings else None,
        "density": round(len(data.seq_items) / (data.num_users * data.num_items), 6),
        f"{events}_per_user_min": int(counts.min()),
        f"{events}_per_user_median": float(np.median(counts)),
        f"{events}_per_user_max": int(counts.max()),
        f"{events}_sharing_user_and_timestamp": int(in_tie.sum()),
        "training_events": int(training_part(data.seq_offsets).sum()),
        "validation_targets": data.num_users,
        "test_targets": data.num_users,
        "training_windows": len(data.window_users),
        "seq_length": data.seq_length,
        "window_stride": data.window_stride,
    }


def _feature_value(feature: dict[str, Any], index: Any, number: float = math.nan) -> Any:
    """A feature's value as the dataset writes it, from its encoded index (multi: its multi-hot row; bucketed: the
    raw number beside it): a vocabulary entry (None when unknown), a list of entries, or a number (None)."""
    if feature["kind"] == "multi":
        return [feature["vocabulary"][i] for i in np.flatnonzero(index)]
    if feature["kind"] == "categorical":
        return feature["vocabulary"][index - 1] if index > 0 else None
    return None if math.isnan(number) else _plain_number(number)


def _encoded_fields(features: list[dict[str, Any]], values: dict[str, np.ndarray], numbers: dict[str, np.ndarray],
                    row: int) -> dict[str, Any]:
    """One item's or user's features for metadata.json: each feature's value by its name and, for one-index
    features, the index beside it as "<name>_index" (ML-1M: "genres", "year", "year_index")."""
    fields_ = {}
    for feature in features:
        name = feature["name"]
        index = values[name][row]
        fields_[name] = _feature_value(feature, index, numbers[name][row] if name in numbers else math.nan)
        if feature["kind"] != "multi":
            fields_[f"{name}_index"] = int(index)
    return fields_


def _ml1m_user_labels(user: dict[str, Any]) -> dict[str, Any]:
    """ML-1M's user fields beside the codes: the age group's label, the occupation's name (its code moved to
    occupation_code)."""
    return {"age_group": AGE_GROUPS[user["age"]], "occupation_code": user["occupation"],
            "occupation": OCCUPATIONS[user["occupation"]]}


def _ml1m_vocabularies(data: SequenceData) -> dict[str, Any]:
    low, high = data.feature("item", "year")["range"]
    return {
        "genres": list(GENRES),
        "genders": [UNKNOWN, *GENDERS],
        "age_groups": [{"age": None, "label": UNKNOWN}]
        + [{"age": age, "label": label} for age, label in AGE_GROUPS.items()],
        "occupations": [{"code": None, "name": UNKNOWN}]
        + [{"code": code, "name": name} for code, name in enumerate(OCCUPATIONS)],
        "years": {
            "min_year": low,
            "max_year": high,
            "encoding": "0 = padding, 1 = unknown year, 2 + (year - min_year)",
        },
        "day_of_year": DAY_OF_YEAR_ENCODING,
    }


def _vocabularies(data: SequenceData) -> dict[str, Any]:
    """Each feature's values by name: a vocabulary (index = position + 1; multi: the multi-hot column = position),
    or a bucketed feature's edges (index 2 + the number of edges <= value, 1 = missing)."""
    vocabularies: dict[str, Any] = {}
    for feature in (*data.item_features, *data.user_features):
        if feature["kind"] == "bucketed":
            vocabularies[feature["name"]] = {"edges": feature["edges"], "range": feature["range"],
                                             "encoding": "0 = padding, 1 = missing, 2 + number of edges <= value"}
        else:
            vocabularies[feature["name"]] = feature["vocabulary"]
    return vocabularies | {"day_of_year": DAY_OF_YEAR_ENCODING}


def build_metadata(data: SequenceData) -> dict[str, Any]:
    """Everything inference needs except the weights, as plain JSON-able values.

    Dicts keyed by item/user id have int keys here (strings in the JSON file; load_metadata converts back).
    "movies" is the whole item table (ML-1M: movies.dat, including never-rated movies, which have no item index,
    for cold start), each item's title and features; "users" holds each user's features; "histories" every
    user's chronological history as item indices, days and ratings: one array each over all users (CSR rows by user
    index, "offsets"), stored as base64 of the little-endian bytes with dtype and length (encode_array), so that
    histories of tens of millions of events load as a few strings, not as Python numbers. "schema" declares the
    features (SequenceData.item_features ...).
    ML-1M's metadata keeps its own vocabularies, sizes and user labels (age group, occupation name).
    """
    ml1m = data.name == "ml-1m"
    item_ids = data.item_ids.tolist()
    user_ids = data.user_ids.tolist()
    movies = {
        item_id: {"title": title,
                  **_encoded_fields(data.item_features, data.catalog_values, data.catalog_numbers, row)}
        for row, (item_id, title) in enumerate(zip(data.catalog_ids.tolist(), data.catalog_titles.tolist(),
                                                   strict=True))
    }
    users = {}
    for u in range(1, data.num_users + 1):
        user = _encoded_fields(data.user_features, data.user_values, data.user_numbers, u)
        if ml1m:
            user |= _ml1m_user_labels(user)
        users[user_ids[u]] = user
    sizes = {"pad_index": PAD_INDEX, "mask_index": mask_index(data.num_items), "num_items": data.num_items,
             "vocab_size": data.num_items + 2, "num_users": data.num_users}
    if ml1m:
        sizes |= {f"num_{name}": data.feature(side, feature)["size"] for name, side, feature in (
            ("genres", "item", "genres"), ("years", "item", "year"), ("genders", "user", "gender"),
            ("ages", "user", "age"), ("occupations", "user", "occupation"))}
    histories = {"offsets": data.seq_offsets, "items": _smallest_integers(data.seq_items),
                 "days": _smallest_integers(data.seq_days), "ratings": _smallest_integers(data.seq_ratings)}
    return {
        "format_version": METADATA_FORMAT,
        "fingerprint": data.fingerprint,
        "source_md5": dict(data.source_md5),
        "matches_grouplens_original": data.source_md5 == GROUPLENS_MD5,
        "params": {"seq_length": data.seq_length, "window_stride": data.window_stride, "holdout": data.holdout},
        "schema": {"name": data.name, "items": data.item_features, "users": data.user_features,
                   "preference_feature": data.preference_feature, "has_ratings": data.has_ratings},
        "sizes": sizes,
        "vocabularies": _ml1m_vocabularies(data) if ml1m else _vocabularies(data),
        "item_index_by_movie_id": {item_id: index for index, item_id in enumerate(item_ids) if item_id >= 0},
        "movie_id_by_item_index": [None if item_id < 0 else item_id for item_id in item_ids],
        "user_index_by_user_id": {user_id: index for index, user_id in enumerate(user_ids) if user_id >= 0},
        "user_id_by_user_index": [None if user_id < 0 else user_id for user_id in user_ids],
        "movies": movies,
        "users": users,
        "histories": {name: encode_array(values) for name, values in histories.items()},
        "statistics": dataset_statistics(data),
    }


def encode_array(values: np.ndarray) -> dict[str, Any]:
    """A 1-D array as JSON: its dtype (little-endian, numpy's notation), length and bytes in base64."""
    values = np.ascontiguousarray(values, dtype=np.dtype(values.dtype).newbyteorder("<"))
    return {"dtype": values.dtype.str, "length": len(values), "base64": base64.b64encode(values.data).decode("ascii")}


def _smallest_integers(values: np.ndarray) -> np.ndarray:
    """The values in the smallest integer type that holds them exactly (int8 ... int64); other numbers as float32
    when that holds them exactly (half stars), else as they are."""
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        return values.astype(np.float32) if np.array_equal(values.astype(np.float32), values) else values
    low, high = (int(values.min()), int(values.max())) if len(values) else (0, 0)
    dtype = next(t for t in (np.int8, np.int16, np.int32, np.int64)
                 if np.iinfo(t).min <= low and high <= np.iinfo(t).max)
    return values.astype(dtype)


def decode_array(encoded: dict[str, Any]) -> np.ndarray:
    """encode_array's array back (read-only: a view of the decoded bytes)."""
    values = np.frombuffer(base64.b64decode(encoded["base64"], validate=True), dtype=np.dtype(encoded["dtype"]))
    if len(values) != encoded["length"]:
        raise ValueError(f"{len(values)} values where {encoded['length']} were written")
    return values


def _inline_histories(users: dict[int, dict[str, Any]], user_ids: list[int | None]) -> dict[str, np.ndarray]:
    """Format 2's histories (JSON lists in each user) as format 3's arrays, taken out of the users."""
    lists = [{"items": [], "days": [], "ratings": []}] + [users[u].pop("history") for u in user_ids[1:]]
    lengths = [len(history["items"]) for history in lists]
    flat = {name: np.array([v for history in lists for v in history[name]]) for name in ("items", "days", "ratings")}
    return {"offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), **flat}


_ID_KEYED = ("item_index_by_movie_id", "user_index_by_user_id", "movies", "users")
READ_METADATA_FORMATS = (2, METADATA_FORMAT)


_CHECKSUM_HEAD = re.compile(rb'\{"content_sha256":"([0-9a-f]{64})",')


def save_metadata(data: SequenceData, path: str | Path) -> Path:
    """Write build_metadata(data) as JSON, atomically (temporary file + os.replace). Returns the path.

    The file opens with "content_sha256", the sha256 of the bytes after it, so load_metadata finds any change
    made since (a flipped digit in a history would otherwise be read as data)."""
    path = Path(path)
    body = json.dumps(build_metadata(data), ensure_ascii=False, separators=(",", ":")).encode("utf-8")[1:]
    with atomic_file(path) as handle:
        handle.write(b'{"content_sha256":"' + hashlib.sha256(body).hexdigest().encode() + b'",' + body)
    return path


def load_metadata(path: str | Path) -> dict[str, Any]:
    """Read metadata.json as written by save_metadata (MovieID/UserID keys back to int); DataError, naming the
    file, for a file this version did not write or one changed since."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error})") from None
    head = _CHECKSUM_HEAD.match(raw)
    readable = " and ".join(map(str, READ_METADATA_FORMATS))
    if head is None or hashlib.sha256(raw[head.end():]).hexdigest() != head.group(1).decode():
        version = re.search(rb'"format_version":(\d+)', raw)
        if version and int(version.group(1)) not in READ_METADATA_FORMATS:
            raise DataError(f"{path}: metadata format {int(version.group(1))}, this code reads {readable}; rerun "
                            "data_processor.py (or the training) to write it again")
        raise DataError(f"{path}: not a metadata.json of this version, or changed since it was written (its "
                        "content_sha256 does not match); rerun data_processor.py (or the training) to write it again")
    metadata = json.loads(raw)
    del raw
    del metadata["content_sha256"]
    if metadata.get("format_version") not in READ_METADATA_FORMATS:
        raise DataError(f"{path}: metadata format {metadata.get('format_version')}, this code reads {readable}; "
                        "rerun data_processor.py")
    for name in _ID_KEYED:
        metadata[name] = {int(key): value for key, value in metadata[name].items()}
    if metadata["format_version"] == 2:
        metadata["histories"] = _inline_histories(metadata["users"], metadata["user_id_by_user_index"])
    else:
        try:
            metadata["histories"] = {name: decode_array(encoded) for name, encoded in metadata["histories"].items()}
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"{path}: its histories cannot be decoded ({error}); rerun data_processor.py") from None
    return metadata


# ----------------------------------------------------------------------------------------------------------
# Synthetic data in ML-1M's format, for fast tests of every stage

_SYNTHETIC_TITLES = (
    "Misérables, Les",
    "City of Lost Children, The (Cité des enfants perdus, La)",
    "Seven (Se7en)",
    "Eighth Day, The (Le Huitième jour )",
    "Cold Fever (Á köldum klaka)",
    "Fantasia 2000",
    "Toy Story",
    "Shanghai Triad (Yao a yao yao dao waipo qiao)",
)


def write_synthetic_ml1m(
    folder: str | Path, num_users: int = 40, num_movies: int = 120, seed: int = 0
) -> Path:
    """Write a small random dataset in ML-1M's format (ratings.dat, movies.dat, users.dat) into `folder`.

    Titles are latin-1 with accents and extra parentheses, every 7th movie has no year, about a tenth of the
    movies are never rated, MovieIDs have gaps, every user has >= 5 ratings with at least one timestamp tie,
    and ratings are grouped by user but not sorted by time within a user (as in ML-1M). Returns `folder`.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    movie_ids = np.sort(rng.choice(np.arange(1, 3 * num_movies + 1), size=num_movies, replace=False))
    movie_lines = []
    for number, movie_id in enumerate(movie_ids.tolist()):
        title = f"{_SYNTHETIC_TITLES[number % len(_SYNTHETIC_TITLES)]} {number}"
        if number % 7 != 3:
            title += f" ({rng.integers(1919, 2001)})"
        genres = rng.choice(GENRES, size=rng.integers(1, 4), replace=False)
        movie_lines.append(f"{movie_id}::{title}::{'|'.join(genres)}\n")

    user_lines = [
        f"{user_id}::{rng.choice(GENDERS)}::{rng.choice(list(AGE_GROUPS))}::{rng.integers(0, 21)}::"
        f"{rng.integers(10000, 99999)}\n"
        for user_id in range(1, num_users + 1)
    ]

    rated_pool = movie_ids[rng.permutation(num_movies)[: max(num_movies - max(num_movies // 10, 1), 5)]]
    rating_lines = []
    for user_id in range(1, num_users + 1):
        count = int(rng.integers(5, min(80, len(rated_pool)) + 1))
        gaps = rng.exponential(3 * 86400, size=count).astype(np.int64)
        gaps[rng.integers(1, count)] = 0  # a timestamp tie
        timestamps = rng.integers(946684800, 1025481600) + np.cumsum(gaps)  # 2000-01-01 .. 2002-07-01
        shuffled = rng.permutation(count)
        movies = rng.choice(rated_pool, size=count, replace=False)
        stars = rng.integers(1, 6, size=count)
        rating_lines += [f"{user_id}::{movies[i]}::{stars[i]}::{timestamps[i]}\n" for i in shuffled.tolist()]
    for name, lines in (
        ("movies.dat", movie_lines),
        ("users.dat", user_lines),
        ("ratings.dat", rating_lines),
    ):
        (folder / name).write_bytes("".join(lines).encode("latin-1"))
    return folder


# ----------------------------------------------------------------------------------------------------------
# Command line


def format_statistics(statistics: dict[str, Any]) -> str:
    """The statistics as aligned 'name  value' lines."""
    width = max(map(len, statistics))
    return "\n".join(
        f"{name:<{width}}  {value:,}" if isinstance(value, int) else f"{name:<{width}}  {value}"
        for name, value in statistics.items()
    )


def export_ml1m_generic(data_dir: str | None, folder: Path, strict: bool) -> int:
    """ML-1M -> the generic format, then read back and compared: the proof that the generic path is exact."""
    import readers  # readers builds on this module: imported here, not at the top

    try:
        sources = read_source_files(data_dir)
        source_md5 = {name: hashlib.md5(source.raw).hexdigest() for name, source in sources.items()}
        _verify_sources(sources, source_md5, strict)
        tables = read_ml1m(sources, source_md5)
        readers.export_generic(tables, folder)
        difference = readers.tables_differ(readers.read_dataset(folder), tables)
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if difference is not None:
        print(f"error: {folder} reads back differently: {difference}", file=sys.stderr)
        return 1
    print(f"wrote ML-1M in the generic format to {folder}; read back: the same tables "
          f"({len(tables.interactions):,} interactions, {len(tables.items):,} items, {len(tables.users):,} users)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Process a dataset (ML-1M by default), write metadata.json and the cache, print the statistics. Returns the
    exit status."""
    parser = argparse.ArgumentParser(description="a dataset (ML-1M by default) -> processed arrays (cached) + "
                                     "metadata.json")
    parser.add_argument("--data_dir", help="a dataset folder or zip: ML-1M, another MovieLens release or the generic "
                        "format (readers.py) (default: download --dataset into ./<name>)")
    parser.add_argument("--dataset", choices=tuple(DATASET_FORMATS), help="the format by name (default: told from "
                        "the files; ML-1M when downloading)")
    parser.add_argument("--output_dir", default="data", help="where metadata.json is written (default: data)")
    parser.add_argument("--cache_dir", help="where the processed arrays are cached (default: --output_dir)")
    parser.add_argument("--seq_length", type=int, default=SEQ_LENGTH,
                        help=f"model positions T: training windows of T events (default: {SEQ_LENGTH})")
    parser.add_argument("--window_stride", type=int, help="stride between windows (default: seq_length // 2)")
    parser.add_argument("--holdout_users", action="store_true", help="leave out the cold-start new users "
                        "(UserID %% 10 == 0), as trainer.py --holdout_users")
    parser.add_argument("--holdout_items", action="store_true", help="leave out the cold-start new movies "
                        "(MovieID %% 20 == 0), as trainer.py --holdout_items")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail, instead of warning, when a file differs from the GroupLens original",
    )
    parser.add_argument("--export_generic", metavar="DIR", help="write ML-1M in the generic format (readers.py: "
                        "interactions.csv, items.csv, users.csv, schema.json) into DIR, check that reading it back "
                        "gives the same tables, and stop")
    args = parser.parse_args(argv)
    try:
        window_stride = _window_stride(args.seq_length, args.window_stride)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    if args.export_generic:
        return export_ml1m_generic(args.data_dir, Path(args.export_generic), args.strict)
    output_dir = Path(args.output_dir)
    try:
        data = load_dataset(
            args.data_dir,
            dataset=args.dataset,
            cache_dir=args.cache_dir or output_dir,
            seq_length=args.seq_length,
            window_stride=window_stride,
            strict=args.strict,
            holdout_users=args.holdout_users,
            holdout_items=args.holdout_items,
        )
        metadata_path = save_metadata(data, output_dir / "metadata.json")
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_statistics(dataset_statistics(data)))
    print(f"wrote {metadata_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
