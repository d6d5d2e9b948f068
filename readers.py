"""Readers: a dataset's files (a folder or a zip) -> data_model.RawTables, one function per format.

    MovieLens 100K   u.data (tab: user item rating timestamp), u.item ('|', 19 genre flags), u.user ('|'); latin-1
    MovieLens 1M     ratings.dat, movies.dat, users.dat ('::'): data_processor.read_ml1m
    MovieLens 10M    ratings.dat (half-star ratings), movies.dat ('::'); no users file
    MovieLens 20M/25M/32M/latest-small   ratings.csv, movies.csv (quoted titles, '(no genres listed)')
    generic          interactions.csv or .parquet (user_id, item_id, timestamp[, rating]), optional items.csv and
                     users.csv whose columns schema.json declares: {"items": {"genres": {"kind": "multi",
                     "separator": "|"}, "title": "display"}, "users": {"gender": "categorical"}}

`read_dataset(path)` picks the reader from the files present (detect_format); `download_dataset(name)` fetches a
MovieLens zip by name (DATASETS). Every reader keeps the project's guarantees: a bad row is a DataFormatError
naming the file, the line and its content; CRLF line ends and a UTF-8 BOM are read as the plain file; latin-1 and
UTF-8 are told apart as in data_processor.source_encoding. tags files are not read (no stage uses tags yet).
`export_generic(tables, folder)` writes any RawTables in the generic format, atomically.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import posixpath
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import requests

import data_processor as dp
from data_model import INTERACTION_COLUMNS, Feature, RawTables, feature_from_json, multi_text, optional_integers, schema
from data_processor import DataError, SourceFile, check_rows, read_ml1m, read_table, row_error
from model_config import DATASET_FORMATS

# ----------------------------------------------------------------------------------------------------------
# Published facts about each format

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip  # u.genre's order: the order of u.item's 19 flag columns
ML100K_AGE_EDGES = [18, 25, 35, 45, 50, 56]  # exact ages bucketed as ML-1M's age groups (Under 18, 18-24, ... 56+)
NO_GENRES = "(no genres listed)"  # ML-10M and later write this for a movie without genres: the empty set
GENRE_LIST = r"[^|\s](?:[^|]*[^|\s])?(?:\|[^|\s](?:[^|]*[^|\s])?)*"  # names, no blank one, no spaces around
HALF_STARS = "rating must be 0.5..5 in half stars"
GENERIC_FILES = ("interactions.csv", "interactions.parquet", "items.csv", "users.csv", "schema.json")
# one file of each format: a zip's dataset is the folder holding one (GroupLens: ml-100k/, ml-10M100K/, ml-25m/)
_MARKERS = ("u.data", "ratings.dat", "ratings.csv", "interactions.csv", "interactions.parquet")


class Download(NamedTuple):
    """Where a dataset is published and how to check it. md5/sha256: pinned digests of the zip; md5_url: the md5
    file GroupLens publishes beside the zip (read at download time when no digest is pinned)."""

    url: str
    md5: str | None = None
    sha256: str | None = None
    md5_url: str | None = None


_GROUPLENS = "https://files.grouplens.org/datasets/movielens"
# ml-1m's digests were checked against the GroupLens zip (data_processor). ml-25m's md5 is the one its published
# ml-25m.zip.md5 states (as quoted by its users; not fetched from here: this code was written offline). ml-32m and
# ml-latest-small are checked against the .md5 file fetched with them (ml-latest-small changes over time, so a
# pinned digest would go stale). GroupLens publishes no checksum for ml-100k, ml-10m and ml-20m: those downloads
# are unverified, and download_dataset says so.
DATASETS = {
    "ml-100k": Download(f"{_GROUPLENS}/ml-100k.zip"),
    "ml-1m": Download(dp.ML1M_URL, dp.ML1M_ZIP_MD5, dp.ML1M_ZIP_SHA256),
    "ml-10m": Download(f"{_GROUPLENS}/ml-10m.zip"),
    "ml-20m": Download(f"{_GROUPLENS}/ml-20m.zip"),
    "ml-25m": Download(f"{_GROUPLENS}/ml-25m.zip", md5="6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-32m": Download(f"{_GROUPLENS}/ml-32m.zip", md5_url=f"{_GROUPLENS}/ml-32m.zip.md5"),
    "ml-latest-small": Download(f"{_GROUPLENS}/ml-latest-small.zip", md5_url=f"{_GROUPLENS}/ml-latest-small.zip.md5"),
}


# ----------------------------------------------------------------------------------------------------------
# Shared parsing steps


def _md5(files: dict[str, SourceFile]) -> dict[str, str]:
    return {name: hashlib.md5(source.raw).hexdigest() for name, source in files.items()}


def _check_lines(source: SourceFile, bad_rows: np.ndarray | pd.Series, problem: str, lines: np.ndarray) -> None:
    """check_rows for tables whose row i is on 0-based line lines[i] (a header, quoted line ends)."""
    bad = np.flatnonzero(np.asarray(bad_rows))
    if bad.size:
        raise row_error(source, int(lines[bad[0]]), problem)


def _read_csv(source: SourceFile, dataset: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A comma-separated file with a header, every field as text, and the 0-based line of each row.

    Without a '"' it is a plain table (pandas' C engine); with quotes (titles holding commas) Python's csv
    reader, strict, so an unclosed or stray quote is an error on its line (such files are the small item tables).
    """
    raw, encoding = dp.checked_text(source, dataset)
    header = raw[: raw.index(b"\n")].decode(encoding)
    names = next(csv.reader([header]))
    if len(set(names)) != len(names) or "" in names:
        raise row_error(source, 0, "the header must name every column once")
    if b'"' not in raw:
        columns = tuple(header.split(","))
        table = read_table(source, columns, (), separator=b",", header=header, dataset=dataset)
        return table, np.arange(len(table)) + 1
    reader = csv.reader(io.StringIO(raw.decode(encoding), newline=""), strict=True)
    rows, lines, line = [], [], 0
    try:
        for row in reader:
            if rows and len(row) != len(rows[0]):
                raise row_error(source, line, f"expected {len(rows[0])} fields separated by ',', found {len(row)}")
            rows.append(row)
            lines.append(line)
            line = reader.line_num
    except csv.Error as error:
        raise row_error(source, line, f"broken quoting ({error})") from None
    return pd.DataFrame(rows[1:], columns=rows[0], dtype=object), np.array(lines[1:], dtype=np.int64)


def _known(source: SourceFile, ids: pd.Series, known_ids: np.ndarray, what: str, lines: np.ndarray) -> None:
    _check_lines(source, ~np.isin(ids.to_numpy(), known_ids), what, lines)


def _movielens_ratings(
    source: SourceFile, table: pd.DataFrame, lines: np.ndarray, known_movies: np.ndarray, half_stars: bool
) -> pd.DataFrame:
    """Checks every MovieLens ratings file shares; returns user_id, item_id, timestamp, rating in file order."""
    rating = table["rating"].to_numpy()
    valid = (rating >= 0.5) & (rating <= 5) & (rating * 2 == np.round(rating * 2)) if half_stars else (
        (rating >= 1) & (rating <= 5))
    _check_lines(source, ~valid, HALF_STARS if half_stars else "rating must be 1..5", lines)
    _check_lines(source, ~table["timestamp"].between(dp.EARLIEST_RATING_TIME, time.time() + 86400),
                 "timestamp must be Unix seconds between 1995-01-01 and today", lines)
    _check_lines(source, ~table["user_id"].between(1, dp.MAX_ID), f"UserID must be 1..{dp.MAX_ID:,}", lines)
    _known(source, table["movie_id"], known_movies, "MovieID not in the movies file", lines)
    repeated = table.duplicated(["user_id", "movie_id"]).to_numpy()
    _check_lines(source, repeated, "the user already rated this movie on an earlier line", lines)
    return pd.DataFrame({"user_id": table["user_id"].to_numpy(), "item_id": table["movie_id"].to_numpy(),
                         "timestamp": table["timestamp"].to_numpy(), "rating": rating})


def _movie_ids(source: SourceFile, ids: pd.Series, lines: np.ndarray) -> None:
    _check_lines(source, ~ids.between(1, dp.MAX_ID), f"MovieID must be 1..{dp.MAX_ID:,}", lines)
    _check_lines(source, ids.duplicated(), "duplicate MovieID", lines)


def _users_of(interactions: pd.DataFrame) -> pd.DataFrame:
    """The user table of a dataset without a user file: the users that rated, no features."""
    return pd.DataFrame({"user_id": np.unique(interactions["user_id"].to_numpy())})


def _sorted_by(table: pd.DataFrame, column: str) -> pd.DataFrame:
    return table.sort_values(column, kind="stable").reset_index(drop=True)


def _movies_table(ids: np.ndarray, titles: np.ndarray, genres: pd.Series) -> pd.DataFrame:
    """The item table of ML-10M and later: title, genres ('|', NO_GENRES = empty), year from the title."""
    items = pd.DataFrame({"item_id": ids, "title": titles.astype(str),
                          "genres": genres.where(genres != NO_GENRES, "").to_numpy(object)})
    items["year"] = optional_integers(dp.release_years(items["title"]))
    return _sorted_by(items, "item_id")


def _movie_features() -> list[Feature]:
    """ML-10M and later: the genre vocabulary is the names the file uses (10M and 20M write "Children", not 1M's
    "Children's"; later releases add "IMAX")."""
    return [Feature("title", "display"), Feature("genres", "multi", separator="|"), Feature("year", "bucketed")]


# ----------------------------------------------------------------------------------------------------------
# MovieLens readers


def read_ml100k(files: dict[str, SourceFile]) -> RawTables:
    """MovieLens 100K: u.data (tab: user item rating timestamp), u.item (movie id|title|release date|video release
    date|IMDb URL|19 genre flags), u.user (user id|age|gender|occupation|zip code), latin-1."""
    item_source, user_source, data_source = files["u.item"], files["u.user"], files["u.data"]
    item_columns = ("item_id", "title", "release_date", "video_release_date", "imdb_url", *ML100K_GENRES)
    movies = read_table(item_source, item_columns, ("item_id", *ML100K_GENRES), separator=b"|", dataset="ML-100K")
    lines = np.arange(len(movies))
    _movie_ids(item_source, movies["item_id"], lines)
    flags = movies[list(ML100K_GENRES)].to_numpy()
    _check_lines(item_source, ((flags != 0) & (flags != 1)).any(axis=1), "genre flags must be 0 or 1", lines)
    dates = movies["release_date"].str.fullmatch(r"(?:[0-3][0-9]-[A-Z][a-z]{2}-[0-9]{4})?")
    _check_lines(item_source, ~dates, "release date must be like 01-Jan-1995, or empty", lines)
    year = pd.to_numeric(movies["release_date"].str[-4:], errors="coerce").fillna(-1).to_numpy(np.int64)
    items = pd.DataFrame({
        "item_id": movies["item_id"].to_numpy(), "title": movies["title"].to_numpy(object),
        "genres": multi_text(flags, ML100K_GENRES), "year": optional_integers(year),
        "release_date": movies["release_date"].to_numpy(object), "imdb_url": movies["imdb_url"].to_numpy(object),
    })

    users = read_table(user_source, ("user_id", "age", "gender", "occupation", "zip_code"), ("user_id", "age"),
                       separator=b"|", dataset="ML-100K")
    check_rows(user_source, ~users["user_id"].between(1, dp.MAX_ID), f"user id must be 1..{dp.MAX_ID:,}")
    check_rows(user_source, users["user_id"].duplicated(), "duplicate user id")
    check_rows(user_source, ~users["age"].between(1, 120), "age must be 1..120 years")
    check_rows(user_source, ~users["gender"].isin(dp.GENDERS), "gender must be F or M")
    check_rows(user_source, ~users["occupation"].str.fullmatch(r"[a-z]+"), "occupation must be a lower-case name")

    columns = ("user_id", "movie_id", "rating", "timestamp")
    ratings = read_table(data_source, columns, columns, separator=b"\t", dataset="ML-100K")
    lines = np.arange(len(ratings))
    _known(data_source, ratings["user_id"], users["user_id"].to_numpy(), "user id not in u.user", lines)
    interactions = _movielens_ratings(data_source, ratings, lines, items["item_id"].to_numpy(), half_stars=False)
    return RawTables(
        name="ml-100k",
        interactions=interactions,
        items=_sorted_by(items, "item_id"),
        users=_sorted_by(users.drop(columns="zip_code").astype({"age": "Int64"}), "user_id"),
        item_features=[Feature("title", "display"), Feature("genres", "multi", list(ML100K_GENRES)),
                       Feature("year", "bucketed"), Feature("release_date", "display"), Feature("imdb_url", "display")],
        user_features=[Feature("age", "bucketed", edges=ML100K_AGE_EDGES), Feature("gender", "categorical",
                       list(dp.GENDERS)), Feature("occupation", "categorical")],
        source_md5=_md5(files),
    )


def read_ml10m(files: dict[str, SourceFile]) -> RawTables:
    """MovieLens 10M: ratings.dat (UserID::MovieID::Rating::Timestamp, half stars) and movies.dat
    (MovieID::Title::Genres); no user file. A title may hold '::' itself: the id is before the first '::', the
    genres after the last."""
    movie_source, rating_source = files["movies.dat"], files["ratings.dat"]
    raw, encoding = dp.checked_text(movie_source, "ML-10M")
    lines = pd.Series(raw.decode(encoding).split("\n")[:-1], dtype=object)
    fields = lines.str.extract(r"^(-?[0-9]{1,18})::(.*)::([^:]*)$")
    row_numbers = np.arange(len(lines))
    _check_lines(movie_source, fields[0].isna() | fields[1].str.contains(r"^:|:$", na=False),
                 "expected MovieID::Title::Genres (a broken '::' separator?)", row_numbers)
    movie_ids = fields[0].astype(np.int64)
    _movie_ids(movie_source, movie_ids, row_numbers)
    _check_lines(movie_source, ~fields[2].str.fullmatch(GENRE_LIST),
                 f"genres must be '|'-separated names, or {NO_GENRES}", row_numbers)
    items = _movies_table(movie_ids.to_numpy(), fields[1].to_numpy(object), fields[2])

    columns = ("user_id", "movie_id", "rating", "timestamp")
    ratings = read_table(rating_source, columns, ("user_id", "movie_id", "timestamp"), ("rating",), dataset="ML-10M")
    interactions = _movielens_ratings(rating_source, ratings, np.arange(len(ratings)), items["item_id"].to_numpy(),
                                      half_stars=True)
    return RawTables(name="ml-10m", interactions=interactions, items=items, users=_users_of(interactions),
                     item_features=_movie_features(), source_md5=_md5(files))


def read_ml_csv(files: dict[str, SourceFile]) -> RawTables:
    """MovieLens 20M, 25M, 32M and latest(-small): ratings.csv (userId,movieId,rating,timestamp; half stars) and
    movies.csv (movieId,title,genres; titles with commas quoted), UTF-8, each with its header; no user file."""
    movie_source, rating_source = files["movies.csv"], files["ratings.csv"]
    movies, lines = _read_csv(movie_source, "MovieLens")
    if list(movies.columns) != ["movieId", "title", "genres"]:
        raise row_error(movie_source, 0, "expected the header 'movieId,title,genres'")
    _check_lines(movie_source, ~movies["movieId"].str.fullmatch(dp.INTEGER_TEXT), "movieId is not an integer", lines)
    movie_ids = movies["movieId"].astype(np.int64)
    _movie_ids(movie_source, movie_ids, lines)
    _check_lines(movie_source, ~movies["genres"].str.fullmatch(GENRE_LIST),
                 f"genres must be '|'-separated names, or {NO_GENRES}", lines)
    items = _movies_table(movie_ids.to_numpy(), movies["title"].to_numpy(object), movies["genres"])

    columns = ("user_id", "movie_id", "rating", "timestamp")
    ratings = read_table(rating_source, columns, ("user_id", "movie_id", "timestamp"), ("rating",), separator=b",",
                         header="userId,movieId,rating,timestamp", dataset="MovieLens")
    interactions = _movielens_ratings(rating_source, ratings, np.arange(len(ratings)) + 1,
                                      items["item_id"].to_numpy(), half_stars=True)
    return RawTables(name="ml-csv", interactions=interactions, items=items, users=_users_of(interactions),
                     item_features=_movie_features(), source_md5=_md5(files))


# ----------------------------------------------------------------------------------------------------------
# The generic format


def _ids(source: SourceFile, column: pd.Series, name: str, lines: np.ndarray) -> pd.Series:
    """An id column: int64 when every id is an integer written plainly, else text; never empty."""
    _check_lines(source, column == "", f"{name} is empty", lines)
    return _lossless_integers(column)


def _lossless_integers(column: pd.Series) -> pd.Series:
    """int64 when every value is an integer written as str(int) would ("7", not "07" or "+7"), so that reading
    back what export_generic wrote gives the same column; the text otherwise."""
    if column.str.fullmatch(r"0|-?[1-9][0-9]{0,17}").all():
        return column.astype(np.int64)
    return column.astype(str)


def _numbers(source: SourceFile, column: pd.Series, name: str, lines: np.ndarray) -> pd.Series:
    """A number column (empty = missing): Int64 when every value is an integer, else float64."""
    present = column != ""
    _check_lines(source, present & ~column.str.fullmatch(dp.NUMBER_TEXT), f"{name} is not a number", lines)
    numbers = pd.to_numeric(column.where(present, None))
    return numbers.astype("Int64" if column[present].str.fullmatch(dp.INTEGER_TEXT).all() else np.float64)


def _read_schema(files: dict[str, SourceFile]) -> dict:
    """schema.json's name and declared item and user features (none without the file)."""
    if "schema.json" not in files:
        return {"name": "generic", "items": [], "users": []}
    source = files["schema.json"]
    try:
        spec = json.loads(source.raw.decode("utf-8-sig"))
        if not isinstance(spec, dict) or set(spec) - {"name", "items", "users"}:
            raise ValueError('expected an object with "items", "users" and, optionally, "name"')
        features = {table: [feature_from_json(name, kind) for name, kind in spec.get(table, {}).items()]
                    for table in ("items", "users")}
        if {"item_id", "user_id"} & {feature.name for table in features.values() for feature in table}:
            raise ValueError("item_id and user_id are the tables' keys, not features")
    except (ValueError, AttributeError) as error:
        raise DataError(f"{source.label}: {error}; see readers.py for the schema's form") from None
    return {"name": str(spec.get("name", "generic"))} | features


def _feature_table(source: SourceFile, key: str, features: list[Feature], dataset: str) -> pd.DataFrame:
    """items.csv or users.csv: the key column and each declared feature, typed by its kind (data_model.RawTables)."""
    table, lines = _read_csv(source, dataset)
    missing = [name for name in (key, *(feature.name for feature in features)) if name not in table.columns]
    if missing:
        raise DataError(f"{source.label}: no column {missing[0]!r} (the header has {', '.join(table.columns)}); "
                        "schema.json declares it")
    typed = pd.DataFrame({key: _ids(source, table[key], key, lines)})
    _check_lines(source, typed[key].duplicated(), f"duplicate {key}", lines)
    for feature in features:
        column = table[feature.name]
        if feature.kind == "bucketed":
            typed[feature.name] = _numbers(source, column, feature.name, lines)
        elif feature.kind == "categorical":
            typed[feature.name] = _lossless_integers(column) if (column != "").all() else column.astype(str)
        else:
            typed[feature.name] = column.astype(str)
    return _sorted_by(typed, key)


def _generic_interactions(files: dict[str, SourceFile]) -> tuple[pd.DataFrame, SourceFile, np.ndarray]:
    """The interactions, their source and the line (parquet: row + 1) of each, for later errors."""
    if "interactions.csv" in files:
        source = files["interactions.csv"]
        table, lines = _read_csv(source, "the dataset")
    else:
        source = files["interactions.parquet"]
        table = _parquet_as_text(source)
        lines = np.arange(len(table)) + 1
    missing = [name for name in INTERACTION_COLUMNS if name not in table.columns]
    if missing:
        raise DataError(f"{source.label}: no column {missing[0]!r}; interactions need user_id, item_id, timestamp "
                        "and, optionally, rating")
    _check_lines(source, ~table["timestamp"].str.fullmatch(dp.INTEGER_TEXT), "timestamp is not an integer", lines)
    timestamps = table["timestamp"].astype(np.int64)
    _check_lines(source, ~timestamps.between(0, time.time() + 86400),
                 "timestamp must be Unix seconds, not in the future (milliseconds? divide by 1000)", lines)
    interactions = pd.DataFrame({"user_id": _ids(source, table["user_id"], "user_id", lines),
                                 "item_id": _ids(source, table["item_id"], "item_id", lines),
                                 "timestamp": timestamps.to_numpy()})
    if "rating" in table.columns:
        rating = _numbers(source, table["rating"], "rating", lines)
        _check_lines(source, pd.isna(rating), "rating is empty", lines)
        interactions["rating"] = rating.to_numpy(np.int64 if rating.dtype == "Int64" else np.float64)
    return interactions, source, lines


def _parquet_as_text(source: SourceFile) -> pd.DataFrame:
    """A parquet table with every value as its text (so one set of checks serves csv and parquet); rows count from
    line 1 in errors, as if it had a header."""
    try:
        table = pd.read_parquet(io.BytesIO(source.raw))
    except ImportError:
        raise DataError(f"{source.label}: reading parquet needs pyarrow (pip install pyarrow), or write the "
                        "interactions as interactions.csv") from None
    except Exception as error:  # pyarrow's errors have no common base class of their own
        raise DataError(f"{source.label}: not a readable parquet file ({error})") from None
    return table.astype(str).where(table.notna(), "")


def read_generic(files: dict[str, SourceFile]) -> RawTables:
    """The generic format: interactions.csv or interactions.parquet (user_id, item_id, timestamp in Unix seconds,
    optional rating; other columns ignored), optional items.csv (item_id + features) and users.csv (user_id +
    features), with their features declared in schema.json (data_model.feature_from_json). Columns a schema does
    not declare are not read. Items and users without a table are those the interactions name."""
    declared = _read_schema(files)
    interactions, source, lines = _generic_interactions(files)
    tables = {}
    for key, name, file_name in (("item_id", "items", "items.csv"), ("user_id", "users", "users.csv")):
        if file_name in files:
            tables[name] = _feature_table(files[file_name], key, declared[name], "the dataset")
            known = tables[name][key].to_numpy()
            _known(source, interactions[key], known, f"{key} not in {file_name}", lines)
        elif declared[name]:
            raise DataError(f"schema.json declares {name} features but there is no {file_name}")
        else:
            tables[name] = pd.DataFrame({key: np.unique(interactions[key].to_numpy())})
    return RawTables(name=declared["name"], interactions=interactions, items=tables["items"], users=tables["users"],
                     item_features=declared["items"], user_features=declared["users"], source_md5=_md5(files))


def export_generic(tables: RawTables, folder: str | Path) -> Path:
    """Write `tables` in the generic format (interactions.csv, items.csv, users.csv, schema.json; UTF-8, LF), each
    file atomically: read_generic(folder) gives the same tables back. Returns the folder."""
    folder = Path(folder)
    for name, table in (("interactions.csv", tables.interactions), ("items.csv", tables.items),
                        ("users.csv", tables.users)):
        with dp.atomic_file(folder / name) as handle:
            handle.write(table.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    with dp.atomic_file(folder / "schema.json") as handle:
        handle.write(json.dumps(schema(tables), ensure_ascii=False, indent=1).encode("utf-8") + b"\n")
    return folder


# ----------------------------------------------------------------------------------------------------------
# Choosing the reader, reading a folder or zip, downloading


READERS: dict[str, Callable[[dict[str, SourceFile]], RawTables]] = {
    "ml-100k": read_ml100k, "ml-1m": read_ml1m, "ml-10m": read_ml10m, "ml-csv": read_ml_csv, "generic": read_generic,
}
# format -> (files it needs, files it reads when present)
FORMAT_FILES = {
    "ml-100k": (("u.data", "u.item", "u.user"), ()),
    "ml-1m": (dp.SOURCE_FILES, ()),
    "ml-10m": (("ratings.dat", "movies.dat"), ()),
    "ml-csv": (("ratings.csv", "movies.csv"), ()),
    "generic": ((), GENERIC_FILES),
}


def detect_format(names: set[str] | list[str], where: str = "the folder") -> str:
    """The reader for a folder holding these file names (READERS' key); DataError naming what is expected."""
    names = set(names)
    for name in ("ml-100k", "ml-1m", "ml-10m", "ml-csv"):
        if set(FORMAT_FILES[name][0]) <= names:
            return name
    if {"interactions.csv", "interactions.parquet"} & names:
        return "generic"
    raise DataError(f"{where}: no dataset found; expected MovieLens' u.data + u.item + u.user (100K), ratings.dat + "
                    "movies.dat (+ users.dat: 1M), ratings.csv + movies.csv (20M and later), or interactions.csv / "
                    "interactions.parquet (the generic format)")


def dataset_sources(path: str | Path, dataset: str | None = None) -> tuple[str, dict[str, SourceFile]]:
    """The format of the dataset in a folder or zip (`dataset`'s when named, else detect_format's) and the files
    its reader takes, read but not parsed (so that their md5 can key a cache first). ML-1M keeps its own reading
    and messages (data_processor.read_source_files)."""
    if dataset is not None and dataset not in DATASET_FORMATS:
        raise DataError(f"unknown --dataset {dataset!r}; choose one of {', '.join(DATASET_FORMATS)}")
    path = Path(path)
    if dataset == "ml-1m" or (dataset is None and _holds_ml1m(path)):
        return "ml-1m", dp.read_source_files(path)
    found: dict[str, str] = {}

    def collect(names: set[str], where: str, load: Callable[[str], SourceFile]) -> dict[str, SourceFile]:
        fmt = DATASET_FORMATS[dataset] if dataset is not None else detect_format(names, where)
        needed, optional = FORMAT_FILES[fmt]
        missing = [name for name in needed if name not in names]
        if missing:
            raise DataError(f"{where}: missing {', '.join(missing)}, which the {dataset} format needs")
        found["format"] = fmt
        return {name: load(name) for name in (*needed, *optional) if name in names}

    if path.is_dir():
        names = {child.name for child in path.iterdir() if child.is_file()}
        files = collect(names, str(path), lambda name: SourceFile.file(path / name))
    elif path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = dp.data_members(archive, path, _MARKERS)
            files = collect(set(members), str(path),
                            lambda name: SourceFile.member(path, archive, members[name]))
    elif path.exists():
        raise DataError(f"{path}: neither a dataset folder nor a zip file")
    else:
        raise FileNotFoundError(f"{path}: no such file or folder; pass a dataset folder or zip, or omit it to "
                                "download ML-1M")
    return found["format"], files


def _holds_ml1m(path: Path) -> bool:
    """Whether `path` is read as ML-1M without --dataset: a folder with users.dat or ratings.dat, none of the other
    formats' files, and not ML-10M's tags.dat without users.dat (so that an ML-1M folder missing a file is told so,
    not read as ML-10M), or a zip holding users.dat."""
    if path.is_dir():
        names = {child.name for child in path.iterdir() if child.is_file()}
        others = {"u.data", "ratings.csv", "interactions.csv", "interactions.parquet"}
        return bool({"users.dat", "ratings.dat"} & names) and not names & others and (
            "users.dat" in names or "tags.dat" not in names)
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(posixpath.basename(name) == "users.dat" for name in archive.namelist())
    return False


def read_dataset(path: str | Path) -> RawTables:
    """Read the dataset in a folder or zip with the reader its files call for (detect_format)."""
    path = Path(path)
    if path.is_dir():
        names = {child.name for child in path.iterdir() if child.is_file()}
        return _read_format(names, str(path), lambda name: SourceFile.file(path / name))
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = dp.data_members(archive, path, _MARKERS)
            return _read_format(set(members), str(path),
                                lambda name: SourceFile.member(path, archive, members[name]))
    if path.exists():
        raise DataError(f"{path}: neither a dataset folder nor a zip file")
    raise FileNotFoundError(f"{path}: no such file or folder")


def _read_format(names: set[str], where: str, load: Callable[[str], SourceFile]) -> RawTables:
    """Detect the format from the file names, load the files its reader takes (load(name)) and read them."""
    fmt = detect_format(names, where)
    needed, optional = FORMAT_FILES[fmt]
    return READERS[fmt]({name: load(name) for name in (*needed, *optional) if name in names})


def _published_md5(url: str, timeout_s: float) -> str:
    """The md5 in a GroupLens .md5 file ("<md5>  ml-32m.zip")."""
    try:
        response = requests.get(url, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as error:
        raise dp.DownloadError(f"could not fetch the published checksum {url}: {error}") from error
    digest = response.text.split()[0].lower() if response.text.split() else ""
    if not re.fullmatch(r"[0-9a-f]{32}", digest):
        raise dp.DownloadError(f"{url}: not an md5 file ({response.text[:60]!r})")
    return digest


def download_dataset(name: str, dest_dir: str | Path | None = None, retries: int = 4, backoff_s: float = 1.0,
                     timeout_s: float = 30.0) -> Path:
    """Download a MovieLens dataset by name (DATASETS) as <dest_dir>.zip, verified where a checksum is published,
    and extract its data folder into dest_dir (default ./<name>). Skipped when dest_dir already holds a dataset;
    the download shows a progress bar and is retried on connection errors (data_processor's downloader).
    Returns dest_dir."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    source = DATASETS[name]
    dest_dir = Path(dest_dir or name).resolve()
    if dest_dir.is_dir():
        with contextlib.suppress(DataError):  # no dataset there yet
            detect_format({child.name for child in dest_dir.iterdir()})
            return dest_dir
    md5 = source.md5 or (_published_md5(source.md5_url, timeout_s) if source.md5_url else None)
    if md5 is None and source.sha256 is None:
        dp.log.warning("%s: GroupLens publishes no checksum for this zip; it is used unverified", source.url)
    return dp.download_zip(dest_dir, source.url, md5, source.sha256, retries, backoff_s, timeout_s, _MARKERS)


def tables_differ(a: RawTables, b: RawTables) -> str | None:
    """What differs between two RawTables (None: the same tables, features and name; md5s aside)."""
    for name in ("interactions", "items", "users"):
        try:
            pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True)
        except AssertionError as error:
            return f"{name}: {error}"
    if schema(a) != schema(b):
        return f"schema: {schema(a)} != {schema(b)}"
    return None

