"""readers + data_model: each MovieLens format read from files written exactly as GroupLens publishes them (separators,
headers, quoting, encodings, the odd rows the real files hold), the generic format, its exact round trip, the
choice of reader, file-and-line errors, and the download by name against a server on 127.0.0.1."""

import hashlib
import io
import json
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_data_processor import assert_same_data

import readers
from data_model import Feature, encode, feature_from_json, resolved, schema, vocabulary_size
from data_processor import (
    GENRES,
    ChecksumMismatchError,
    DataError,
    DataFormatError,
    DownloadError,
    featurise,
    load_dataset,
)
from readers import detect_format, export_generic, read_dataset, tables_differ

# ML-100K, written as the real files are: u.item and u.user '|'-separated, latin-1; movie 267 is the real
# "unknown" row with an empty release date and URL; u.data tab-separated, not sorted.
U_ITEM = [
    "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|0|0|0|1|1|1|0|0|0|0|0|0|0|0"
    "|0|0|0|0|0",
    "2|GoldenEye (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?GoldenEye%20(1995)|0|1|1|0|0|0|0|0|0|0|0|0|0|0"
    "|0|0|1|0|0",
    "10|Richard III (1995)|22-Jan-1996||http://us.imdb.com/M/title-exact?Richard%20III%20(1995)|0|0|0|0|0|0|0|0|1|0"
    "|0|0|0|0|0|0|0|1|0",
    "267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "1300|Misérables, Les (1995)|15-Dec-1995||http://us.imdb.com/M/title-exact?Mis%E9rables%2C%20Les%20(1995)|0|0|0"
    "|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0",
]
U_USER = ["1|24|M|technician|85711", "2|53|F|other|94043", "3|17|M|student|T8H1N"]
U_DATA = ["3\t2\t3\t889237269", "1\t1\t5\t874965758", "1\t267\t4\t875692955", "2\t10\t2\t888550871",
          "1\t2\t3\t876893171", "3\t1\t4\t889237455"]

# ML-10M: '::' everywhere, half-star ratings written "4.5" and whole ones "5", one movie with no genres.
ML10M_MOVIES = ["1::Toy Story (1995)::Adventure|Animation|Children|Comedy|Fantasy",
                "2::Jumanji (1995)::Adventure|Children|Fantasy",
                "8606::Pull My Daisy (1958)::(no genres listed)"]
ML10M_RATINGS = ["1::122::5::838985046", "1::2::4.5::838983525", "7::8606::0.5::1136075500", "7::1::3::1136075494"]
ML10M_RATINGS = [line.replace("::122::", "::1::") for line in ML10M_RATINGS]  # movies of ML10M_MOVIES only

# ML-20M and later: CSV with a header; titles with commas quoted, quotes doubled; ratings always with a decimal.
MOVIES_CSV = [
    "movieId,title,genres",
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
    '11,"American President, The (1995)",Comedy|Drama|Romance',
    '98279,"""Great Performances"" Cats (1998)",Musical',
    "131260,Rentun Ruusu (2001),(no genres listed)",
    "176601,Black Mirror,(no genres listed)",
]
RATINGS_CSV = ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,11,3.5,964981247", "2,98279,0.5,1445714835",
               "2,1,5.0,1445714926", "2,131260,2.5,1445715013"]


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8", newline: str = "\n", bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "".join(f"{line}{newline}" for line in lines).encode(encoding))


@pytest.fixture
def ml100k_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-100k"
    write_lines(folder / "u.item", U_ITEM, "latin-1")
    write_lines(folder / "u.user", U_USER, "latin-1")
    write_lines(folder / "u.data", U_DATA, "latin-1")
    return folder


@pytest.fixture
def ml10m_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-10M100K"
    write_lines(folder / "movies.dat", ML10M_MOVIES)
    write_lines(folder / "ratings.dat", ML10M_RATINGS)
    write_lines(folder / "tags.dat", ["15::4973::excellent!::1215184630"])
    return folder


@pytest.fixture
def ml_csv_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-latest-small"
    write_lines(folder / "movies.csv", MOVIES_CSV)
    write_lines(folder / "ratings.csv", RATINGS_CSV)
    write_lines(folder / "tags.csv", ["userId,movieId,tag,timestamp", '2,1,"funny, clever",1445714994'])
    return folder


# ----------------------------------------------------------------------------------------------------------
# The data model


BAD_DECLARATIONS = [
    ("colour", "kind must be one of"),
    ({"kind": "multi", "separator": ""}, "separator"),
    ({"kind": "bucketed", "edges": [5, 1]}, "increasing"),
    ({"kind": "bucketed", "edges": ["a", "b"]}, "numbers"),
    ({"kind": "bucketed", "width": 0}, "positive"),
    ({"kind": "multi", "vocabulary": ["a", "a"]}, "distinct"),
    ({"kind": "categorical", "vocabulary": [[1]]}, "texts or integers"),
    ({"vocab": []}, "kind"),
    ({"kind": "categorical", "size": 3}, "unknown setting 'size'"),
]


def test_feature_declarations_round_trip_through_json():
    declared = {"genres": {"kind": "multi", "separator": ";"}, "gender": "categorical", "title": "display",
                "year": {"kind": "bucketed", "width": 10}, "age": {"kind": "bucketed", "edges": [18, 25]}}
    features = [feature_from_json(name, spec) for name, spec in declared.items()]
    assert [feature.to_json() for feature in features] == [
        {"kind": "multi", "separator": ";"}, {"kind": "categorical"}, {"kind": "display"},
        {"kind": "bucketed", "width": 10}, {"kind": "bucketed", "edges": [18, 25]}]
    for bad, problem in BAD_DECLARATIONS:
        with pytest.raises(ValueError, match=problem):
            feature_from_json("x", bad)


def test_encoding_each_kind_exactly():
    genres = pd.Series(["Drama|War", "", "Comedy"])
    multi = resolved(Feature("genres", "multi"), genres)
    assert multi.vocabulary == ["Comedy", "Drama", "War"]
    np.testing.assert_array_equal(encode(multi, genres), [[0, 1, 1], [0, 0, 0], [1, 0, 0]])
    gender = Feature("gender", "categorical", ["F", "M"])
    np.testing.assert_array_equal(encode(gender, pd.Series(["M", "F", "x"])), [2, 1, 0])  # 0: unknown
    years = pd.Series([1995, None, 1919, 2000], dtype="Int64")
    year = resolved(Feature("year", "bucketed"), years)
    assert year.edges == list(range(1920, 2001)) and vocabulary_size(year) == 2000 - 1919 + 3
    np.testing.assert_array_equal(encode(year, years), [2 + 76, 1, 2, 2 + 81])  # ML-1M: 2 + year - min_year
    age = Feature("age", "bucketed", edges=readers.ML100K_AGE_EDGES)
    np.testing.assert_array_equal(encode(age, pd.Series([7, 18, 24, 25, 56, 73])), [2, 3, 3, 4, 8, 8])


# ----------------------------------------------------------------------------------------------------------
# Choosing the reader


@pytest.mark.parametrize("names, expected", [
    ({"u.data", "u.item", "u.user", "u.genre", "u1.base"}, "ml-100k"),
    ({"ratings.dat", "movies.dat", "users.dat", "README"}, "ml-1m"),
    ({"ratings.dat", "movies.dat", "tags.dat"}, "ml-10m"),
    ({"ratings.csv", "movies.csv", "tags.csv", "links.csv", "genome-scores.csv"}, "ml-csv"),
    ({"interactions.csv"}, "generic"),
    ({"interactions.parquet", "items.csv", "schema.json"}, "generic"),
])
def test_detect_format(names, expected):
    assert detect_format(names) == expected


def test_detect_format_names_what_it_expects():
    with pytest.raises(DataError, match=r"somewhere: no dataset found; expected MovieLens' u.data"):
        detect_format({"ratings.dat", "notes.txt"}, "somewhere")


# ----------------------------------------------------------------------------------------------------------
# MovieLens 100K


def test_ml100k_tables_exact(ml100k_dir):
    tables = read_dataset(ml100k_dir)
    assert tables.name == "ml-100k"
    assert tables.interactions.to_dict("list") == {
        "user_id": [3, 1, 1, 2, 1, 3], "item_id": [2, 1, 267, 10, 2, 1],
        "timestamp": [889237269, 874965758, 875692955, 888550871, 876893171, 889237455],
        "rating": [3, 5, 4, 2, 3, 4]}  # file order, not sorted
    items = tables.items
    assert items["item_id"].tolist() == [1, 2, 10, 267, 1300]
    assert items["title"].tolist() == ["Toy Story (1995)", "GoldenEye (1995)", "Richard III (1995)", "unknown",
                                       "Misérables, Les (1995)"]  # latin-1 decoded
    assert items["genres"].tolist() == ["Animation|Children's|Comedy", "Action|Adventure|Thriller", "Drama|War",
                                        "unknown", "Drama|Musical"]
    assert items["year"].dtype == "Int64" and items["year"].isna().tolist() == [False, False, False, True, False]
    assert items["year"].fillna(0).tolist() == [1995, 1995, 1996, 0, 1995]  # from the release date; 267 has none
    assert items["release_date"].tolist()[2:4] == ["22-Jan-1996", ""]
    assert tables.users.to_dict("list") == {"user_id": [1, 2, 3], "age": [24, 53, 17], "gender": ["M", "F", "M"],
                                            "occupation": ["technician", "other", "student"]}
    assert schema(tables)["users"] == {"age": {"kind": "bucketed", "edges": [18, 25, 35, 45, 50, 56]},
                                       "gender": {"kind": "categorical", "vocabulary": ["F", "M"]},
                                       "occupation": {"kind": "categorical"}}
    assert schema(tables)["items"]["genres"]["vocabulary"][0] == "unknown"
    assert tables.source_md5["u.data"] == hashlib.md5((ml100k_dir / "u.data").read_bytes()).hexdigest()


@pytest.mark.parametrize("file_name, line_number, bad_line, problem", [
    ("u.data", 2, "1\t1\t6\t874965758", "rating must be 1..5"),
    ("u.data", 3, "1\t999\t4\t875692955", "MovieID not in the movies file"),
    ("u.data", 4, "9\t10\t2\t888550871", "user id not in u.user"),
    ("u.data", 5, "1\t1\t3\t876893171", "the user already rated this movie on an earlier line"),
    ("u.item", 4, "267|unknown|1-1-1995|||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0", "release date must be like"),
    ("u.item", 2, "2|GoldenEye (1995)|01-Jan-1995||x|0|2|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0", "genre flags must be 0"),
    ("u.item", 1, "1|Toy Story (1995)|01-Jan-1995||x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0",
     r"expected 24 fields separated by '\|', found 23"),
    ("u.user", 3, "3|17|X|student|T8H1N", "gender must be F or M"),
    ("u.user", 2, "2|fifty|F|other|94043", "age is not an integer"),
])
def test_ml100k_bad_rows_name_file_and_line(ml100k_dir, file_name, line_number, bad_line, problem):
    lines = {"u.data": list(U_DATA), "u.item": list(U_ITEM), "u.user": list(U_USER)}[file_name]
    lines[line_number - 1] = bad_line
    write_lines(ml100k_dir / file_name, lines, "latin-1")
    with pytest.raises(DataFormatError, match=rf"{file_name}, line {line_number}: {problem}"):
        read_dataset(ml100k_dir)


# ----------------------------------------------------------------------------------------------------------
# MovieLens 10M


def test_ml10m_tables_exact(ml10m_dir):
    tables = read_dataset(ml10m_dir)
    assert tables.interactions.to_dict("list") == {
        "user_id": [1, 1, 7, 7], "item_id": [1, 2, 8606, 1], "timestamp": [838985046, 838983525, 1136075500,
                                                                          1136075494],
        "rating": [5.0, 4.5, 0.5, 3.0]}
    assert tables.interactions["rating"].dtype == np.float64
    assert tables.items.to_dict("list") == {
        "item_id": [1, 2, 8606], "title": ["Toy Story (1995)", "Jumanji (1995)", "Pull My Daisy (1958)"],
        "genres": ["Adventure|Animation|Children|Comedy|Fantasy", "Adventure|Children|Fantasy", ""],
        "year": [1995, 1995, 1958]}
    assert tables.users.to_dict("list") == {"user_id": [1, 7]}  # no users file: the users that rated
    assert set(tables.source_md5) == {"ratings.dat", "movies.dat"}  # tags.dat is not read


def test_ml10m_title_holding_the_separator(ml10m_dir):
    write_lines(ml10m_dir / "movies.dat", [*ML10M_MOVIES, "9::Star Trek::The Movie (1979)::Sci-Fi"])
    items = read_dataset(ml10m_dir).items
    assert items.loc[items["item_id"] == 9, ["title", "genres", "year"]].values.tolist() == [
        ["Star Trek::The Movie (1979)", "Sci-Fi", 1979]]


@pytest.mark.parametrize("file_name, line_number, bad_line, problem", [
    ("ratings.dat", 2, "1::2::4.25::838983525", "rating must be 0.5..5 in half stars"),
    ("ratings.dat", 3, "7::8606::.5::1136075500", "rating is not a number"),
    ("ratings.dat", 1, "1::1::5::1e9", "timestamp is not an integer"),
    ("movies.dat", 2, "2::Jumanji (1995)::", "genres must be '|'-separated names"),
    ("movies.dat", 3, "x::Pull My Daisy (1958)::Drama", r"expected MovieID::Title::Genres"),
    ("movies.dat", 3, "1::Pull My Daisy (1958)::Drama", "duplicate MovieID"),
])
def test_ml10m_bad_rows_name_file_and_line(ml10m_dir, file_name, line_number, bad_line, problem):
    lines = list(ML10M_RATINGS if file_name == "ratings.dat" else ML10M_MOVIES)
    lines[line_number - 1] = bad_line
    write_lines(ml10m_dir / file_name, lines)
    with pytest.raises(DataFormatError, match=rf"{file_name}, line {line_number}: {problem}"):
        read_dataset(ml10m_dir)


# ----------------------------------------------------------------------------------------------------------
# MovieLens 20M / 25M / 32M / latest-small


def test_ml_csv_tables_exact(ml_csv_dir):
    tables = read_dataset(ml_csv_dir)
    assert tables.interactions.to_dict("list") == {
        "user_id": [1, 1, 2, 2, 2], "item_id": [1, 11, 98279, 1, 131260],
        "timestamp": [964982703, 964981247, 1445714835, 1445714926, 1445715013], "rating": [4.0, 3.5, 0.5, 5.0, 2.5]}
    assert tables.items.to_dict("list") == {
        "item_id": [1, 11, 98279, 131260, 176601],
        "title": ["Toy Story (1995)", "American President, The (1995)", '"Great Performances" Cats (1998)',
                  "Rentun Ruusu (2001)", "Black Mirror"],
        "genres": ["Adventure|Animation|Children|Comedy|Fantasy", "Comedy|Drama|Romance", "Musical", "", ""],
        "year": [1995, 1995, 1998, 2001, None]}  # Int64, <NA> for a title without a year
    assert tables.users.to_dict("list") == {"user_id": [1, 2]}


@pytest.mark.parametrize("newline, bom", [("\r\n", False), ("\n", True), ("\r\n", True)])
def test_ml_csv_crlf_and_bom_read_the_same(ml_csv_dir, tmp_path, newline, bom):
    clean = read_dataset(ml_csv_dir)
    other = tmp_path / "windows"
    write_lines(other / "movies.csv", MOVIES_CSV, newline=newline, bom=bom)
    write_lines(other / "ratings.csv", RATINGS_CSV, newline=newline, bom=bom)
    assert tables_differ(read_dataset(other), clean) is None


@pytest.mark.parametrize("file_name, line_number, bad_line, problem", [
    ("ratings.csv", 1, "user,movie,rating,timestamp", "expected the header 'userId,movieId,rating,timestamp'"),
    ("ratings.csv", 3, "1,11,3.5", "expected 4 fields separated by ',', found 3"),
    ("ratings.csv", 4, "2,98279,0.0,1445714835", "rating must be 0.5..5 in half stars"),
    ("ratings.csv", 5, "2,98279,5.0,1445714926", "the user already rated this movie"),
    ("ratings.csv", 6, "2,131261,2.5,1445715013", "MovieID not in the movies file"),
    ("movies.csv", 3, '11,"American President, The (1995),Comedy|Drama|Romance', "broken quoting|expected 3 fields"),
    ("movies.csv", 4, "98279,Cats (1998),Musical,Drama", "expected 3 fields separated by ',', found 4"),
    ("movies.csv", 5, "131260,Rentun Ruusu (2001),", "genres must be '|'-separated names, or"),
    ("movies.csv", 6, "1,Black Mirror,(no genres listed)", "duplicate MovieID"),
])
def test_ml_csv_bad_rows_name_file_and_line(ml_csv_dir, file_name, line_number, bad_line, problem):
    lines = list(RATINGS_CSV if file_name == "ratings.csv" else MOVIES_CSV)
    lines[line_number - 1] = bad_line
    write_lines(ml_csv_dir / file_name, lines)
    with pytest.raises(DataFormatError, match=rf"{file_name}, line {line_number}: ({problem})"):
        read_dataset(ml_csv_dir)


def test_line_numbers_count_quoted_line_ends(ml_csv_dir):
    """A quoted title spanning two lines: errors after it still name the physical line."""
    lines = [*MOVIES_CSV[:2], '11,"American President,\nThe (1995)",Comedy', *MOVIES_CSV[3:5], "1,dup (2000),Drama"]
    write_lines(ml_csv_dir / "movies.csv", lines)
    with pytest.raises(DataFormatError, match=r"movies.csv, line 7: duplicate MovieID: '1,dup \(2000\),Drama'"):
        read_dataset(ml_csv_dir)


def test_zip_of_a_dataset_reads_the_same(ml_csv_dir, tmp_path):
    zip_path = tmp_path / "ml-latest-small.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name in ("movies.csv", "ratings.csv", "tags.csv"):
            archive.write(ml_csv_dir / name, f"ml-latest-small/{name}")
    assert tables_differ(read_dataset(zip_path), read_dataset(ml_csv_dir)) is None


# ----------------------------------------------------------------------------------------------------------
# The generic format

SCHEMA = {"name": "shop", "items": {"title": "display", "tags": {"kind": "multi", "separator": ";"},
                                    "brand": "categorical", "price": {"kind": "bucketed", "edges": [10, 100]}}}
INTERACTIONS = ["user_id,item_id,timestamp", "u1,sku-9,1700000000", "u2,sku-1,1700000100", "u1,sku-1,1700000050",
                "u1,sku-9,1700000200"]  # repeats are allowed: logs are not ratings
ITEMS = ["item_id,title,tags,brand,price,colour", 'sku-1,"Kettle, steel",kitchen;metal,7,24.5,grey',
         "sku-9,Mug,kitchen,3,,white", "sku-5,Never bought,,7,150,red"]


@pytest.fixture
def generic_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "shop"
    write_lines(folder / "interactions.csv", INTERACTIONS)
    write_lines(folder / "items.csv", ITEMS)
    (folder / "schema.json").write_text(json.dumps(SCHEMA))
    return folder


def test_generic_tables_exact(generic_dir):
    tables = read_dataset(generic_dir)
    assert tables.name == "shop" and not tables.has_ratings
    assert tables.interactions.to_dict("list") == {
        "user_id": ["u1", "u2", "u1", "u1"], "item_id": ["sku-9", "sku-1", "sku-1", "sku-9"],
        "timestamp": [1700000000, 1700000100, 1700000050, 1700000200]}
    assert tables.items.drop(columns="price").to_dict("list") == {  # undeclared "colour" is not read
        "item_id": ["sku-1", "sku-5", "sku-9"], "title": ["Kettle, steel", "Never bought", "Mug"],
        "tags": ["kitchen;metal", "", "kitchen"], "brand": [7, 7, 3]}
    np.testing.assert_array_equal(tables.items["price"].to_numpy(np.float64), [24.5, 150.0, np.nan])
    assert tables.users.to_dict("list") == {"user_id": ["u1", "u2"]}  # no users.csv: the users of the log
    tags = resolved(tables.item_features[1], tables.items["tags"])
    np.testing.assert_array_equal(encode(tags, tables.items["tags"]), [[1, 1], [0, 0], [1, 0]])
    price = tables.item_features[3]
    np.testing.assert_array_equal(encode(price, tables.items["price"]), [3, 4, 1])


def test_generic_interactions_only(tmp_path):
    write_lines(tmp_path / "log" / "interactions.csv",
                ["user_id,item_id,timestamp,rating,session", "1,10,1600000000,4,a", "2,10,1600000001,2,b"])
    tables = read_dataset(tmp_path / "log")
    assert tables.name == "generic" and tables.items.to_dict("list") == {"item_id": [10]}
    assert tables.interactions["rating"].tolist() == [4, 2] and tables.interactions["rating"].dtype == np.int64


@pytest.mark.parametrize("file_name, line_number, bad_line, problem", [
    ("interactions.csv", 3, "u2,sku-1,1700000100000", "timestamp must be Unix seconds, not in the future"),
    ("interactions.csv", 4, "u1,sku-2,1700000050", "item_id not in items.csv"),
    ("interactions.csv", 2, ",sku-9,1700000000", "user_id is empty"),
    ("items.csv", 3, "sku-9,Mug,kitchen,3,cheap,white", "price is not a number"),
    ("items.csv", 4, "sku-1,Again,,7,1,red", "duplicate item_id"),
])
def test_generic_bad_rows_name_file_and_line(generic_dir, file_name, line_number, bad_line, problem):
    lines = list(INTERACTIONS if file_name == "interactions.csv" else ITEMS)
    lines[line_number - 1] = bad_line
    write_lines(generic_dir / file_name, lines)
    with pytest.raises(DataFormatError, match=rf"{file_name}, line {line_number}: {problem}"):
        read_dataset(generic_dir)


def test_generic_schema_errors_name_the_file(generic_dir):
    (generic_dir / "schema.json").write_text(json.dumps({"items": {"tags": "list"}}))
    with pytest.raises(DataError, match=r"schema.json: feature 'tags': kind must be one of"):
        read_dataset(generic_dir)
    (generic_dir / "schema.json").write_text(json.dumps({"items": {"weight": "bucketed"}}))
    with pytest.raises(DataError, match=r"items.csv: no column 'weight'"):
        read_dataset(generic_dir)
    (generic_dir / "schema.json").write_text(json.dumps({"items": {"item_id": "categorical"}}))
    with pytest.raises(DataError, match=r"schema.json: item_id and user_id are the tables' keys, not features"):
        read_dataset(generic_dir)
    (generic_dir / "schema.json").write_text(json.dumps({"users": {"age": "bucketed"}}))
    with pytest.raises(DataError, match=r"declares users features but there is no users.csv"):
        read_dataset(generic_dir)


def test_generic_parquet(generic_dir):
    pytest.importorskip("pyarrow", reason="pyarrow is not installed (requirements-extra.txt; optional for parquet)")
    table = pd.read_csv(generic_dir / "interactions.csv")
    table.to_parquet(generic_dir / "interactions.parquet")
    (generic_dir / "interactions.csv").unlink()
    assert read_dataset(generic_dir).interactions.to_dict("list") == {
        "user_id": ["u1", "u2", "u1", "u1"], "item_id": ["sku-9", "sku-1", "sku-1", "sku-9"],
        "timestamp": [1700000000, 1700000100, 1700000050, 1700000200]}


def test_parquet_without_pyarrow_is_one_clear_error(generic_dir, monkeypatch):
    for engine in ("pyarrow", "fastparquet"):  # as on a machine without either: their import fails
        monkeypatch.setitem(sys.modules, engine, None)
    (generic_dir / "interactions.csv").rename(generic_dir / "interactions.parquet")
    with pytest.raises(DataError, match=r"interactions.parquet: reading parquet needs pyarrow"):
        read_dataset(generic_dir)


# ----------------------------------------------------------------------------------------------------------
# The exact round trip: any reader's tables -> export_generic -> read_generic gives the same tables


@pytest.mark.parametrize("fixture", ["ml100k_dir", "ml10m_dir", "ml_csv_dir", "generic_dir", "synthetic_ml1m_dir"])
def test_export_generic_round_trip(fixture, request, tmp_path):
    tables = read_dataset(request.getfixturevalue(fixture))
    exported = export_generic(tables, tmp_path / "generic")
    assert sorted(path.name for path in exported.iterdir()) == ["interactions.csv", "items.csv", "schema.json",
                                                                 "users.csv"]
    assert tables_differ(read_dataset(exported), tables) is None


def test_ml1m_tables_exact(synthetic_ml1m_dir):
    """ML-1M's reader: the columns come from data_processor's parsers, genres in README order."""
    (synthetic_ml1m_dir / "movies.dat").write_bytes(
        "1::Misérables, Les (1995)::Musical|Drama\n7::Cold Fever (Á köldum klaka)::Comedy\n".encode("latin-1"))
    (synthetic_ml1m_dir / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (synthetic_ml1m_dir / "ratings.dat").write_text("2::7::3::978300760\n1::1::5::978300275\n")
    tables = read_dataset(synthetic_ml1m_dir)
    assert tables.items.to_dict("list") == {"item_id": [1, 7], "title": ["Misérables, Les (1995)",
                                                                         "Cold Fever (Á köldum klaka)"],
                                            "genres": ["Drama|Musical", "Comedy"], "year": [1995, None]}
    assert tables.users.to_dict("list") == {"user_id": [1, 2], "gender": ["F", "M"], "age": [1, 56],
                                            "occupation": [10, 16]}
    assert tables.interactions.to_dict("list") == {"user_id": [2, 1], "item_id": [7, 1],
                                                   "timestamp": [978300760, 978300275], "rating": [3, 5]}
    assert schema(tables)["items"]["genres"] == {"kind": "multi", "vocabulary": list(GENRES), "separator": "|"}


@pytest.mark.filterwarnings("ignore::data_processor.SourceChecksumWarning")
def test_cli_export_generic(synthetic_ml1m_dir, tmp_path, capsys):
    from data_processor import main

    assert main(["--data_dir", str(synthetic_ml1m_dir), "--export_generic", str(tmp_path / "out")]) == 0
    assert "read back: the same tables" in capsys.readouterr().out
    assert tables_differ(read_dataset(tmp_path / "out"), read_dataset(synthetic_ml1m_dir)) is None


def test_generic_ml1m_gives_the_same_arrays(synthetic_ml1m_dir, tmp_path):
    """ML-1M through the generic format featurises to exactly the arrays load_dataset makes from the .dat files."""
    back = read_dataset(export_generic(read_dataset(synthetic_ml1m_dir), tmp_path / "generic"))
    assert_same_data(featurise(back, 12, 6, ""), load_dataset(synthetic_ml1m_dir, seq_length=12, verify=False),
                     skip=("source_md5",))  # other files, same content


def test_real_ml1m_generic_round_trip(real_ml1m_dir, tmp_path):
    tables = read_dataset(real_ml1m_dir)
    assert (len(tables.interactions), len(tables.items), len(tables.users)) == (1_000_209, 3883, 6040)
    back = read_dataset(export_generic(tables, tmp_path / "generic"))
    assert tables_differ(back, tables) is None
    assert_same_data(featurise(back, 50, 25, ""), load_dataset(real_ml1m_dir, strict=True), skip=("source_md5",))


# ----------------------------------------------------------------------------------------------------------
# Download by name, against a server on 127.0.0.1


class Server(ThreadingHTTPServer):
    files: dict[str, bytes] = {}


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.files = {}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()


def zipped(folder: Path, inner: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{inner}/{path.name}")
    return buffer.getvalue()


def test_download_verified_by_the_published_md5_file(server, ml_csv_dir, tmp_path, monkeypatch):
    body = zipped(ml_csv_dir, "ml-latest-small")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    server.files = {"/ml-latest-small.zip": body,
                    "/ml-latest-small.zip.md5": f"{hashlib.md5(body).hexdigest()}  ml-latest-small.zip\n".encode()}
    monkeypatch.setitem(readers.DATASETS, "ml-latest-small", readers.Download(
        f"{base}/ml-latest-small.zip", md5_url=f"{base}/ml-latest-small.zip.md5"))
    folder = readers.download_dataset("ml-latest-small", tmp_path / "download" / "ml-latest-small", retries=0)
    assert tables_differ(read_dataset(folder), read_dataset(ml_csv_dir)) is None
    assert (tmp_path / "download" / "ml-latest-small.zip").read_bytes() == body


def test_download_with_a_wrong_checksum_keeps_nothing(server, ml100k_dir, tmp_path, monkeypatch):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    server.files = {"/ml-100k.zip": zipped(ml100k_dir, "ml-100k")}
    monkeypatch.setitem(readers.DATASETS, "ml-100k", readers.Download(f"{base}/ml-100k.zip", md5="0" * 32))
    with pytest.raises(ChecksumMismatchError, match="md5"):
        readers.download_dataset("ml-100k", tmp_path / "download" / "ml-100k", retries=0)
    assert not (tmp_path / "download").exists() or not any((tmp_path / "download").iterdir())


def test_download_refuses_without_the_published_md5(server, tmp_path, monkeypatch):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    server.files = {"/ml-32m.zip.md5": b"<html>not found</html>"}
    monkeypatch.setitem(readers.DATASETS, "ml-32m", readers.Download(f"{base}/ml-32m.zip",
                                                                     md5_url=f"{base}/ml-32m.zip.md5"))
    with pytest.raises(DownloadError, match=r"ml-32m.zip.md5: not an md5 file"):
        readers.download_dataset("ml-32m", tmp_path / "ml-32m", retries=0)
    server.files = {}
    with pytest.raises(DownloadError, match=r"could not fetch the published checksum .*ml-32m.zip.md5"):
        readers.download_dataset("ml-32m", tmp_path / "ml-32m", retries=0)
    assert not any(tmp_path.iterdir())


def test_download_unknown_name():
    with pytest.raises(DataError, match="unknown dataset 'ml-2m'; choose one of ml-100k, ml-1m"):
        readers.download_dataset("ml-2m")


def test_dataset_table_is_plain():
    assert all(source.url.startswith("https://files.grouplens.org/datasets/movielens/")
               for source in readers.DATASETS.values())
