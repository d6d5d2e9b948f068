"""data_processor: parsing, features, the stable split, windows, eval inputs, errors, cache, metadata, CLI."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
import zipfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

import data_processor as dp
from data_processor import (
    GENRES,
    ChecksumMismatchError,
    DataFormatError,
    SequenceData,
    SourceChecksumWarning,
    build_metadata,
    eval_inputs,
    load_dataset,
    load_metadata,
    save_metadata,
    write_synthetic_ml1m,
)

REPO = Path(__file__).resolve().parents[1]


def day(k: int) -> int:
    """Timestamp k days after 2001-01-01 00:00 UTC (day of year k + 1)."""
    return 978307200 + 86400 * k


# A hand-built ML-1M. Items are the rated movies by MovieID: 1->1, 2->2, 3->3, 5->4, 7->5, 10->6, 20->7,
# 30->8, 50->9 (movie 40 is never rated); [MASK] = 10. Users by UserID: 3 -> 1, 7 -> 2.
MOVIES = [
    "1::Toy Story (1995)::Animation|Children's|Comedy",
    "2::Jumanji (1995)::Adventure|Children's|Fantasy",
    "3::Grumpier Old Men (1995)::Comedy|Romance",
    "5::Misérables, Les (1995)::Drama|Musical",
    "7::City of Lost Children, The (Cité des enfants perdus, La) (1995)::Adventure|Sci-Fi",
    "10::Fantasia 2000::Animation|Musical",
    "20::Shanghai Triad (Yao a yao yao dao waipo qiao) (1998)::Drama",
    "30::Seven (Se7en) (1919)::Crime|Thriller",
    "40::Never Rated (2000)::Comedy",
    "50::Heat (1995)::Action|Crime|Thriller",
]
USERS = ["7::M::25::12::55117", "3::F::1::10::48067"]
RATINGS = [
    f"7::5::4::{day(10)}",
    f"7::1::3::{day(12)}",
    f"7::30::5::{day(11)}",
    f"7::10::2::{day(13)}",
    f"3::20::4::{day(5)}",
    f"3::1::5::{day(0)}",
    f"3::30::2::{day(3)}",  # tie with the next line: file order decides
    f"3::5::3::{day(3)}",
    f"3::7::1::{day(1)}",
    f"3::10::4::{day(8)}",
    f"3::2::5::{day(6)}",
    f"3::50::3::{day(7)}",
    f"3::3::2::{day(2)}",
]
# In time order, user 3: items 1 5 3 8 4 7 2, validation 9, test 6; user 7: 4 8, validation 1, test 6.


def write_ml1m(folder: Path, movies=MOVIES, users=USERS, ratings=RATINGS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in (("movies.dat", movies), ("users.dat", users), ("ratings.dat", ratings)):
        (folder / name).write_bytes("".join(f"{line}\n" for line in lines).encode("latin-1"))
    return folder


def load_hand_built(folder: Path, **kwargs) -> SequenceData:
    return load_dataset(write_ml1m(folder), verify=False, **kwargs)


def assert_same_data(a: SequenceData, b: SequenceData, skip: tuple[str, ...] = ()) -> None:
    """Every field equal (but those in `skip`): arrays (alone or in a dict by feature name) by dtype and content,
    the rest by ==."""
    for field in fields(SequenceData):
        if field.name in skip:
            continue
        left, right = getattr(a, field.name), getattr(b, field.name)
        if isinstance(left, dict) and any(isinstance(value, np.ndarray) for value in left.values()):
            assert list(left) == list(right), field.name
            pairs = [(left[name], right[name]) for name in left]
        elif isinstance(left, np.ndarray):
            pairs = [(left, right)]
        else:
            assert left == right, field.name
            continue
        for x, y in pairs:
            assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), field.name


# ---------------------------------------------------------------------------------------------------------
# Hand-built dataset: exact arrays


def test_items_users_and_side_information(tmp_path):
    data = load_hand_built(tmp_path)
    assert (data.num_items, data.num_users, data.feature("item", "genres")["size"]) == (9, 2, 18)
    assert [data.feature("user", name)["size"] for name in ("gender", "age", "occupation")] == [3, 8, 22]
    assert data.item_ids.tolist() == [-1, 1, 2, 3, 5, 7, 10, 20, 30, 50, -1]
    assert dp.mask_index(data.num_items) == 10
    # years 1919..2000 -> index 2 + year - 1919; "Fantasia 2000" has no "(YYYY)" -> 1 (unknown)
    assert (data.feature("item", "year")["range"][0], data.feature("item", "year")["size"]) == (1919, 84)
    assert data.item_values["year"].tolist() == [0, 78, 78, 78, 78, 78, 1, 81, 2, 78, 0]
    toy_story = [GENRES.index(name) for name in ("Animation", "Children's", "Comedy")]
    assert np.flatnonzero(data.item_values["genres"][1]).tolist() == toy_story
    assert data.item_values["genres"].dtype == np.float32 and data.item_values["genres"].shape == (11, 18)
    assert not data.item_values["genres"][[0, 10]].any()
    assert data.user_ids.tolist() == [-1, 3, 7]
    assert data.user_values["gender"].tolist() == [0, 1, 2]  # F = 1, M = 2
    assert data.user_values["age"].tolist() == [0, 1, 3]  # ages 1 and 25 -> groups 1 and 3
    assert data.user_values["occupation"].tolist() == [0, 11, 13]  # codes 10 and 12, + 1
    # all of movies.dat, for cold start
    assert data.catalog_ids.tolist() == [1, 2, 3, 5, 7, 10, 20, 30, 40, 50]
    assert data.catalog_titles[3] == "Misérables, Les (1995)"
    assert data.catalog_values["year"].tolist() == [78, 78, 78, 78, 78, 1, 81, 2, 83, 78]


def test_timelines_sorted_stably_with_days(tmp_path):
    data = load_hand_built(tmp_path)
    assert data.seq_offsets.tolist() == [0, 0, 9, 13]
    # the tie at day(3): movie 30 (item 8) is before movie 5 (item 4) in ratings.dat, so it stays first
    assert data.seq_items.tolist() == [1, 5, 3, 8, 4, 7, 2, 9, 6, 4, 8, 1, 6]
    assert data.seq_ratings.tolist() == [5, 1, 2, 2, 3, 4, 5, 3, 4, 4, 5, 3, 2]
    assert data.seq_days.tolist() == [1, 2, 3, 4, 4, 6, 7, 8, 9, 11, 12, 13, 14]
    assert data.seq_timestamps.tolist() == [day(k) for k in (0, 1, 2, 3, 3, 5, 6, 7, 8, 10, 11, 12, 13)]


def test_stable_tie_order_follows_the_file(tmp_path):
    user_3 = [(30, 1), (10, 0), (20, 1), (40, 0), (50, 1)]  # (MovieID, day) in file order
    user_7 = [(1, 0), (2, 0), (3, 0)]
    ratings = [
        f"{user}::{movie}::5::{day(k)}" for user, pairs in ((3, user_3), (7, user_7)) for movie, k in pairs
    ]
    data = load_dataset(write_ml1m(tmp_path, ratings=ratings), verify=False)
    movie_order = data.item_ids[data.seq_items].tolist()
    # sorting by (timestamp, MovieID) would give 10 40 20 30 50; an unstable sort may give anything
    assert movie_order == [10, 40, 30, 20, 50, 1, 2, 3]


def test_day_of_year_is_utc_and_leap_aware():
    timestamps = np.array([978300760, 978307199, 978307200, 951782400, 1046454590])
    assert dp.day_of_year(timestamps).tolist() == [366, 366, 1, 60, 59]  # 2000-02-29 is day 60


def test_release_year_ignores_other_parentheses():
    titles = ["City of Lost Children, The (Cité des enfants perdus, La) (1995)", "Fantasia 2000",
              "Seven (Se7en) (1995) ", "Kådisbellan (1993) (re-release)", "Heat (1995)"]  # fmt: skip
    assert dp.release_years(__import__("pandas").Series(titles)).tolist() == [1995, -1, 1995, -1, 1995]


def test_training_windows_exact(tmp_path):
    data = load_hand_built(tmp_path, seq_length=4)
    assert data.window_stride == 2  # default seq_length // 2
    # user 3's training part 1 5 3 8 4 7 2 (7 events): windows end at events 4, 5 and 7
    assert data.window_items.tolist() == [[1, 5, 3, 8], [5, 3, 8, 4], [8, 4, 7, 2], [0, 0, 4, 8]]
    assert data.window_ratings.tolist() == [[5, 1, 2, 2], [1, 2, 2, 3], [2, 3, 4, 5], [0, 0, 4, 5]]
    assert data.window_days.tolist() == [[1, 2, 3, 4], [2, 3, 4, 4], [4, 4, 6, 7], [0, 0, 11, 12]]
    assert data.window_users.tolist() == [1, 1, 1, 2]
    for name in ("window_items", "window_ratings", "window_days", "window_users"):
        assert getattr(data, name).dtype == np.int64


@pytest.mark.parametrize(
    ("length", "stride", "ends"),
    [(3, 2, [3]), (4, 2, [4]), (5, 2, [4, 5]), (6, 2, [4, 6]), (7, 2, [4, 5, 7]), (7, 3, [4, 7]),
     (9, 4, [4, 5, 9])],
)  # fmt: skip
def test_window_ends_cover_every_event(length, stride, ends):
    user_rows, window_stops = dp.window_ends(np.array([length]), seq_length=4, window_stride=stride)
    assert window_stops.tolist() == ends
    assert user_rows.tolist() == [0] * len(ends)


def test_window_stride_must_leave_no_gaps(tmp_path):
    with pytest.raises(ValueError, match="window_stride must be in 1..seq_length"):
        load_hand_built(tmp_path, seq_length=4, window_stride=5)


def test_genre_profile_over_training_part_only(tmp_path):
    data = load_hand_built(tmp_path)
    user_3_movies = [1, 7, 3, 30, 5, 20, 2]  # training part; validation (50) and test (10) excluded
    user_7_movies = [5, 30]
    genre_lists = {int(line.split("::")[0]): line.split("::")[2].split("|") for line in MOVIES}

    def distribution(movies):
        counts = np.zeros(18)
        for movie in movies:
            for genre in genre_lists[movie]:
                counts[GENRES.index(genre)] += 1
        return counts / counts.sum()

    expected = [
        distribution(user_3_movies + user_7_movies),
        distribution(user_3_movies),
        distribution(user_7_movies),
    ]
    np.testing.assert_allclose(data.user_preference_profile, np.array(expected), rtol=1e-6)
    assert data.user_preference_profile.dtype == np.float32


def test_eval_inputs_exact(tmp_path):
    data = load_hand_built(tmp_path)
    val = eval_inputs(data, "val", seq_length=4)
    assert val.users.tolist() == [1, 2]
    assert val.items.tolist() == [[4, 7, 2, 10], [0, 4, 8, 10]]
    assert val.days.tolist() == [[4, 6, 7, 7], [0, 11, 12, 12]]
    assert val.targets.tolist() == [9, 1]
    assert val.target_ratings.tolist() == [3, 3]
    assert val.seen_offsets.tolist() == [0, 7, 9]
    assert val.seen_items.tolist() == [1, 5, 3, 8, 4, 7, 2, 4, 8]

    test = eval_inputs(data, "test", seq_length=4)
    assert test.items.tolist() == [[7, 2, 9, 10], [4, 8, 1, 10]]
    assert test.days.tolist() == [[6, 7, 8, 8], [11, 12, 13, 13]]
    assert test.targets.tolist() == [6, 6]
    assert test.target_ratings.tolist() == [4, 2]
    assert test.seen_offsets.tolist() == [0, 8, 11]
    assert test.seen_items.tolist() == [1, 5, 3, 8, 4, 7, 2, 9, 4, 8, 1]


def test_eval_inputs_rejects_unknown_split(tmp_path):
    with pytest.raises(ValueError, match="'val' or 'test'"):
        eval_inputs(load_hand_built(tmp_path), "train", seq_length=4)


# ---------------------------------------------------------------------------------------------------------
# Malformed input: a specific error naming file, line and content


@pytest.mark.parametrize(
    ("file_name", "line_number", "bad_line", "problem"),
    [
        ("ratings.dat", 2, "7::1::3", "expected 4 fields separated by '::', found 3"),
        ("ratings.dat", 2, "7::1::3::978307200::9", "expected 4 fields separated by '::', found 5"),
        ("ratings.dat", 4, "", "expected 4 fields separated by '::', found 1"),
        ("ratings.dat", 3, "7::x30::5::978307200", "movie_id is not an integer"),
        ("ratings.dat", 6, "3::1::5::1.5", "timestamp is not an integer"),
        ("ratings.dat", 5, "3::20::6::978307200", "rating must be 1..5"),
        ("ratings.dat", 5, "3::20::0::978307200", "rating must be 1..5"),
        ("ratings.dat", 7, "3::99::2::978307200", "MovieID not in movies.dat"),
        ("ratings.dat", 8, "9::5::3::978307200", "UserID not in users.dat"),
        ("ratings.dat", 9, "3::20::1::978307200", "user 3 already rated movie 20 on line 5"),
        ("ratings.dat", 3, "7::2::4::97830720", "timestamp must be Unix seconds between 1995-01-01 and today"),
        ("ratings.dat", 3, "7::2::4::97830720000", "timestamp must be Unix seconds between 1995-01-01 and today"),
        ("ratings.dat", 3, "7::2::4::-978307200", "timestamp must be Unix seconds between 1995-01-01 and today"),
        ("movies.dat", 3, "1::Toy Story Again (1995)::Comedy", "duplicate MovieID"),
        ("movies.dat", 2, "2::Jumanji (1995)::Adventure|Sci-fi", "genres must be '|'-separated names"),
        ("movies.dat", 2, "2::Jumanji (1995)::", "genres must be '|'-separated names"),
        ("movies.dat", 3, "3::Grumpier Old Men (1995)", "expected 3 fields separated by '::', found 2"),
        ("movies.dat", 1, "one::Toy Story (1995)::Comedy", "movie_id is not an integer"),
        ("users.dat", 2, "7::F::1::10::48067", "duplicate UserID"),
        ("users.dat", 2, "3::X::1::10::48067", "gender must be F or M"),
        ("users.dat", 2, "3::F::20::10::48067", "age must be one of 1, 18, 25, 35, 45, 50, 56"),
        ("users.dat", 2, "3::F::1::21::48067", "occupation must be 0..20"),
        ("users.dat", 1, "7::M::25::12", "expected 5 fields separated by '::', found 4"),
    ],
)
def test_malformed_row_names_file_line_and_content(tmp_path, file_name, line_number, bad_line, problem):
    tables = {"movies.dat": list(MOVIES), "users.dat": list(USERS), "ratings.dat": list(RATINGS)}
    tables[file_name][line_number - 1] = bad_line
    folder = write_ml1m(tmp_path, tables["movies.dat"], tables["users.dat"], tables["ratings.dat"])
    with pytest.raises(DataFormatError) as error:
        load_dataset(folder, verify=False)
    message = str(error.value)
    assert message.startswith(f"{folder / file_name}, line {line_number}: {problem}")
    assert message.endswith(f": {bad_line!r}")


def test_latin1_line_content_in_error(tmp_path):
    movies = [*MOVIES[:3], "5::Misérables, Les (1995)::Drama|Opéra", *MOVIES[4:]]
    with pytest.raises(
        DataFormatError, match="line 4: genres must be .*'5::Misérables, Les \\(1995\\)::Drama\\|Opéra'"
    ):
        load_dataset(write_ml1m(tmp_path, movies=movies), verify=False)


def test_a_copy_re_encoded_to_utf8_reads_the_same_text(tmp_path):
    original = load_hand_built(tmp_path / "latin1")
    folder = write_ml1m(tmp_path / "utf8")
    for name in ("movies.dat", "users.dat", "ratings.dat"):
        text = (folder / name).read_bytes().decode("latin-1")
        (folder / name).write_bytes(text.encode("utf-8"))
    assert b"Mis\xc3\xa9rables" in (folder / "movies.dat").read_bytes()  # really re-encoded
    again = load_dataset(folder, verify=False)
    assert again.catalog_titles.tolist() == original.catalog_titles.tolist()
    assert "Misérables, Les (1995)" in again.catalog_titles.tolist()
    assert dp.source_encoding("Misérables".encode("latin-1")) == "latin-1"
    assert dp.source_encoding("Misérables".encode()) == "utf-8"
    assert dp.source_encoding(b"plain ascii") == "latin-1"


def test_user_with_too_few_ratings(tmp_path):
    users = [*USERS, "9::F::18::4::12345"]
    ratings = [*RATINGS, f"9::1::4::{day(1)}", f"9::2::4::{day(2)}"]
    with pytest.raises(
        DataFormatError, match=r"users.dat, line 3: user has fewer than 3 ratings .*'9::F::18::4"
    ):
        load_dataset(write_ml1m(tmp_path, users=users, ratings=ratings), verify=False)


@pytest.mark.parametrize("file_name", ["ratings.dat", "movies.dat", "users.dat"])
@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_empty_file(tmp_path, file_name, content):
    folder = write_ml1m(tmp_path)
    (folder / file_name).write_bytes(content)
    with pytest.raises(DataFormatError, match=re.escape(f"{file_name}: the file is empty")):
        load_dataset(folder, verify=False)


def test_truncated_file(tmp_path):
    folder = write_ml1m(tmp_path)
    raw = (folder / "ratings.dat").read_bytes()
    (folder / "ratings.dat").write_bytes(raw[:-6])  # cut inside the last line
    last = RATINGS[-1][:-5]
    with pytest.raises(DataFormatError) as error:
        load_dataset(folder, verify=False)
    assert str(error.value) == (
        f"{folder / 'ratings.dat'}, line 13: the file ends inside this line (truncated?); re-download ML-1M: "
        f"{last!r}"
    )


# ---------------------------------------------------------------------------------------------------------
# Sources: folder, zip, bad paths, checksums


def test_zip_source_gives_the_same_data(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    zip_path = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for name in ("ratings.dat", "movies.dat", "users.dat", "README"):
            archive.writestr(f"ml-1m/{name}", (folder / name).read_bytes() if name != "README" else b"readme")
    assert_same_data(load_dataset(zip_path, verify=False), load_dataset(folder, verify=False))


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_dataset(tmp_path / "nowhere")
    folder = write_ml1m(tmp_path / "ml-1m")
    (folder / "users.dat").unlink()
    with pytest.raises(FileNotFoundError, match="missing users.dat"):
        load_dataset(folder)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(dp.DataError, match="neither a dataset folder nor a zip file"):
        load_dataset(tmp_path / "notes.txt")


def test_source_checksums_warn_or_fail(tmp_path):
    folder = write_ml1m(tmp_path)
    with pytest.warns(
        SourceChecksumWarning, match=r"ratings.dat has md5 [0-9a-f]{32}, the GroupLens original a89a"
    ):
        load_dataset(folder)
    with pytest.raises(ChecksumMismatchError, match="movies.dat has md5"):
        load_dataset(folder, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(folder, verify=False)


# ---------------------------------------------------------------------------------------------------------
# Cache


@pytest.fixture
def parse_counter(monkeypatch) -> list[int]:
    """Counts calls of parse_ratings, the step a cache hit must skip."""
    calls: list[int] = []
    real_parse = dp.parse_ratings

    def counting_parse(*args):
        calls.append(1)
        return real_parse(*args)

    monkeypatch.setattr(dp, "parse_ratings", counting_parse)
    return calls


def test_cache_hit_skips_parsing(tmp_path, parse_counter):
    folder = write_ml1m(tmp_path / "ml-1m")
    cache = tmp_path / "cache"
    first = load_dataset(folder, cache_dir=cache, seq_length=4, verify=False)
    second = load_dataset(folder, cache_dir=cache, seq_length=4, verify=False)
    assert len(parse_counter) == 1
    assert_same_data(first, second)
    assert_same_data(second, load_dataset(folder, seq_length=4, verify=False))
    assert [path.name for path in cache.iterdir()] == ["ml1m_T4_S2"]  # no temporary folder left
    assert isinstance(second.seq_items, np.memmap)  # read back memory-mapped


def test_a_cache_reload_reads_no_source_whose_stamp_is_unchanged(tmp_path, parse_counter):
    folder = write_ml1m(tmp_path / "ml-1m")
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for source in folder.iterdir():
        os.utime(source, ns=(an_hour_ago, an_hour_ago))
    cache = tmp_path / "cache"
    original = load_dataset(folder, cache_dir=cache, verify=False)
    # the same size and modification time: the cache's recorded md5 stands for the file, which is not read again
    ratings = folder / "ratings.dat"
    ratings.write_bytes(ratings.read_bytes().replace(b"::2::", b"::5::", 1))
    os.utime(ratings, ns=(an_hour_ago, an_hour_ago))
    assert_same_data(original, load_dataset(folder, cache_dir=cache, verify=False))
    assert len(parse_counter) == 1
    # touched: the file is read and hashed, its md5 no longer matches, the cache is rebuilt from the new content
    os.utime(ratings)
    changed = load_dataset(folder, cache_dir=cache, verify=False)
    assert len(parse_counter) == 2 and changed.fingerprint != original.fingerprint


def test_a_copied_source_is_hashed_once_then_matched_by_stamp(tmp_path, parse_counter, monkeypatch):
    folder = write_ml1m(tmp_path / "ml-1m")
    cache = tmp_path / "cache"
    load_dataset(folder, cache_dir=cache, verify=False)
    index = json.loads((cache / "ml1m_T50_S25" / "cache.json").read_text())
    assert set(index["source_stamps"]) == {"ratings.dat", "movies.dat", "users.dat"}
    hashed = []
    real_md5 = dp.hashlib.md5
    monkeypatch.setattr(dp.hashlib, "md5", lambda data=b"": hashed.append(len(data)) or real_md5(data))
    # just written, so within the timestamp margin: every load hashes the sources and matches by md5
    load_dataset(folder, cache_dir=cache, verify=False)
    assert len(hashed) == 3 and len(parse_counter) == 1
    # the margin passed (the cache recorded as written later than the files by more than it): no source is read
    index = json.loads((cache / "ml1m_T50_S25" / "cache.json").read_text())
    index["written_ns"] += 10 * dp._STAMP_MARGIN_NS
    (cache / "ml1m_T50_S25" / "cache.json").write_text(json.dumps(index))
    hashed.clear()
    load_dataset(folder, cache_dir=cache, verify=False)
    assert hashed == [] and len(parse_counter) == 1


def test_stale_cache_is_rebuilt(tmp_path, parse_counter, monkeypatch):
    folder = write_ml1m(tmp_path / "ml-1m")
    cache = tmp_path / "cache"
    original = load_dataset(folder, cache_dir=cache, verify=False)
    # same size, same layout, one rating changed: the md5 changes, so the cache must not be reused
    write_ml1m(folder, ratings=[*RATINGS[:-1], RATINGS[-1].replace("::2::", "::5::")])
    changed = load_dataset(folder, cache_dir=cache, verify=False)
    assert len(parse_counter) == 2
    assert changed.seq_ratings[2] == 5
    assert changed.fingerprint != original.fingerprint
    load_dataset(folder, cache_dir=cache, verify=False)
    assert len(parse_counter) == 2  # the rebuilt cache is used

    monkeypatch.setattr(dp, "FORMAT_VERSION", dp.FORMAT_VERSION + 1)
    load_dataset(folder, cache_dir=cache, verify=False)
    assert len(parse_counter) == 3

    load_dataset(folder, cache_dir=cache, seq_length=8, verify=False)  # other parameters: another file
    assert len(parse_counter) == 4
    assert sorted(path.name for path in cache.iterdir()) == ["ml1m_T50_S25", "ml1m_T8_S4"]


def test_unreadable_cache_is_rebuilt(tmp_path, parse_counter):
    folder = write_ml1m(tmp_path / "ml-1m")
    cache = tmp_path / "cache"
    (cache / "ml1m_T50_S25").mkdir(parents=True)
    (cache / "ml1m_T50_S25" / "cache.json").write_text("not json")
    (cache / "ml1m_T50_S25.npz").write_bytes(b"a cache of the earlier layout")
    data = load_dataset(folder, cache_dir=cache, verify=False)
    assert len(parse_counter) == 1
    assert_same_data(data, load_dataset(folder, cache_dir=cache, verify=False))
    assert len(parse_counter) == 1
    assert sorted(path.name for path in cache.iterdir()) == ["ml1m_T50_S25"]  # the .npz is gone
    items = cache / "ml1m_T50_S25" / "seq_items.npy"
    items.write_bytes(items.read_bytes()[:-8])  # an array cut short
    assert_same_data(data, load_dataset(folder, cache_dir=cache, verify=False))
    assert len(parse_counter) == 2


def test_a_cache_renamed_into_place_by_another_process_first_stands(tmp_path, monkeypatch):
    """Two processes building the same cache (the ranks of a torchrun): the one that renames its folder into place
    second finds the name taken by a whole cache, keeps that one and removes its own."""
    folder = write_ml1m(tmp_path / "ml-1m")
    cache = tmp_path / "cache"
    first = load_dataset(folder, cache_dir=cache, seq_length=4, verify=False)
    other = shutil.copytree(cache / "ml1m_T4_S2", tmp_path / "other")
    shutil.rmtree(cache / "ml1m_T4_S2")
    real_replace = os.replace

    def the_other_process_first(source, target):
        if str(source).endswith(".part"):
            shutil.copytree(other, target)  # the other writer's rename, just before this one's
        return real_replace(source, target)

    monkeypatch.setattr(dp.os, "replace", the_other_process_first)
    second = load_dataset(folder, cache_dir=cache, seq_length=4, verify=False)
    monkeypatch.undo()
    assert_same_data(first, second)
    assert [path.name for path in cache.iterdir()] == ["ml1m_T4_S2"]  # this writer's folder removed
    assert_same_data(first, load_dataset(folder, cache_dir=cache, seq_length=4, verify=False))


def test_cache_holds_no_pickles(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    load_dataset(folder, cache_dir=tmp_path, verify=False)
    arrays = list((tmp_path / "ml1m_T50_S25").glob("*.npy"))
    assert len(arrays) > 10 and all(np.load(path, allow_pickle=False).dtype != object for path in arrays)


# ---------------------------------------------------------------------------------------------------------
# metadata.json


def test_metadata_round_trip(tmp_path):
    data = load_hand_built(tmp_path / "ml-1m")
    path = save_metadata(data, tmp_path / "out" / "metadata.json")
    assert [p.name for p in path.parent.iterdir()] == ["metadata.json"]
    plain = json.loads(path.read_text(encoding="utf-8"))
    assert plain["movies"]["5"]["title"] == "Misérables, Les (1995)"

    metadata = load_metadata(path)
    built = build_metadata(data)
    assert {key: metadata[key] for key in metadata if key != "histories"} == {
        key: built[key] for key in built if key != "histories"}
    assert metadata["sizes"]["mask_index"] == 10 and metadata["sizes"]["vocab_size"] == 11
    assert metadata["movie_id_by_item_index"] == [None, 1, 2, 3, 5, 7, 10, 20, 30, 50, None]
    assert metadata["item_index_by_movie_id"] == {1: 1, 2: 2, 3: 3, 5: 4, 7: 5, 10: 6, 20: 7, 30: 8, 50: 9}
    assert metadata["user_index_by_user_id"] == {3: 1, 7: 2}
    assert metadata["user_id_by_user_index"] == [None, 3, 7]
    assert metadata["movies"][40] == {
        "title": "Never Rated (2000)",
        "genres": ["Comedy"],
        "year": 2000,
        "year_index": 83,
    }
    assert metadata["movies"][10]["year"] is None and metadata["movies"][10]["year_index"] == 1
    assert metadata["users"][3] == {
        "gender": "F", "age": 1, "age_group": "Under 18", "occupation_code": 10, "occupation": "K-12 student",
        "gender_index": 1, "age_index": 1, "occupation_index": 11,
    }  # fmt: skip
    histories = metadata["histories"]  # CSR rows by user index: user 3 is index 1
    assert histories["offsets"].tolist() == [0, 0, 9, 13]
    assert histories["items"][:9].tolist() == [1, 5, 3, 8, 4, 7, 2, 9, 6]
    assert histories["days"][:9].tolist() == [1, 2, 3, 4, 4, 6, 7, 8, 9]
    assert histories["ratings"][:9].tolist() == [5, 1, 2, 2, 3, 4, 5, 3, 4]
    assert {name: built["histories"][name]["length"] for name in histories} == {
        name: len(values) for name, values in histories.items()}
    vocabularies = metadata["vocabularies"]
    assert vocabularies["genders"] == ["unknown", "F", "M"]
    assert vocabularies["age_groups"][3] == {"age": 25, "label": "25-34"}
    assert vocabularies["occupations"][1] == {"code": 0, "name": '"other" or not specified'}
    assert vocabularies["occupations"][21] == {"code": 20, "name": "writer"}
    assert vocabularies["years"]["min_year"] == 1919 and vocabularies["years"]["max_year"] == 2000
    assert metadata["params"] == {"seq_length": 50, "window_stride": 25, "holdout": ""}
    assert (
        metadata["source_md5"]["ratings.dat"]
        == dp.hashlib.md5((tmp_path / "ml-1m" / "ratings.dat").read_bytes()).hexdigest()
    )
    assert metadata["matches_grouplens_original"] is False
    assert metadata["fingerprint"] == data.fingerprint == dp.source_fingerprint(metadata["source_md5"])
    assert metadata["statistics"]["ratings"] == 13 and metadata["statistics"]["never_rated_movies"] == 1


def test_histories_are_arrays_in_base64_of_any_dtype():
    for values in (np.array([], dtype=np.int64), np.arange(-3, 300, dtype=np.int16), np.array([0.5, 4.5, 5.0]),
                   np.arange(10, dtype=">i4")):
        encoded = json.loads(json.dumps(dp.encode_array(values)))
        assert encoded["dtype"].startswith(("<", "|")) and encoded["length"] == len(values)
        assert np.array_equal(dp.decode_array(encoded), values)
    assert [dp._smallest_integers(np.array(values)).dtype for values in (
        [1, 5], [1, 366], [0, 87_585], [0.5, 5.0], [0.1, 5.0], [1.0, 5.0], [])] == [
        np.int8, np.int16, np.int32, np.float32, np.float64, np.int8, np.int8]
    with pytest.raises(ValueError, match="3 values where 4 were written"):
        dp.decode_array(dp.encode_array(np.arange(3)) | {"length": 4})


def test_metadata_of_format_2_histories_in_each_user_still_loads(tmp_path):
    """metadata.json as the earlier version wrote it (format 2: each user's history as JSON lists) loads with the
    same histories, as arrays, and without the lists in the users."""
    data = load_hand_built(tmp_path / "ml-1m")
    current = load_metadata(save_metadata(data, tmp_path / "metadata.json"))
    old = build_metadata(data) | {"format_version": 2}
    histories = {name: dp.decode_array(encoded).tolist() for name, encoded in old.pop("histories").items()}
    offsets = histories["offsets"]
    for index, user_id in enumerate(old["user_id_by_user_index"][1:], start=1):
        old["users"][user_id]["history"] = {name: histories[name][offsets[index]:offsets[index + 1]]
                                            for name in ("items", "days", "ratings")}
    body = json.dumps(old, separators=(",", ":")).encode()[1:]
    path = tmp_path / "format2.json"
    path.write_bytes(b'{"content_sha256":"' + dp.hashlib.sha256(body).hexdigest().encode() + b'",' + body)
    loaded = load_metadata(path)
    assert loaded["users"] == current["users"] and loaded["format_version"] == 2
    for name, values in current["histories"].items():
        assert loaded["histories"][name].tolist() == values.tolist(), name


def test_metadata_of_another_format_is_refused(tmp_path):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps({"format_version": 0}))
    with pytest.raises(dp.DataError, match="rerun data_processor.py"):
        load_metadata(path)


# ---------------------------------------------------------------------------------------------------------
# Synthetic data


def test_synthetic_dataset_has_the_promised_traits(synthetic_ml1m_dir):
    movies = (synthetic_ml1m_dir / "movies.dat").read_bytes()
    assert "é".encode("latin-1") in movies and b"(Cit" in movies
    data = load_dataset(synthetic_ml1m_dir, verify=False)
    counts = np.diff(data.seq_offsets)[1:]
    assert data.num_users == 40 and len(data.catalog_ids) == 120
    assert counts.min() >= 5
    assert data.num_items < len(data.catalog_ids)  # never-rated movies
    assert (data.catalog_values["year"] == 1).any()  # movies without year
    assert dp.dataset_statistics(data)["ratings_sharing_user_and_timestamp"] >= 2 * data.num_users
    file_timestamps = np.array(
        [int(line.split(b"::")[3]) for line in (synthetic_ml1m_dir / "ratings.dat").read_bytes().splitlines()]
    )
    assert (np.diff(file_timestamps[: counts[0]]) < 0).any()  # not sorted within a user


def test_synthetic_dataset_is_deterministic(tmp_path):
    first, second, other = (
        write_synthetic_ml1m(tmp_path / name, seed=seed) for name, seed in (("a", 1), ("b", 1), ("c", 2))
    )
    for name in ("ratings.dat", "movies.dat", "users.dat"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "ratings.dat").read_bytes() != (other / "ratings.dat").read_bytes()


# ---------------------------------------------------------------------------------------------------------
# Command line


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "data_processor.py", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_prints_statistics_and_writes_outputs(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m")
    result = run_cli("--data_dir", str(folder), "--output_dir", str(tmp_path / "out"), "--seq_length", "4")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^ratings\s+13$", result.stdout, re.MULTILINE)
    assert re.search(r"^users\s+2$", result.stdout, re.MULTILINE)
    assert re.search(r"^never_rated_movies\s+1$", result.stdout, re.MULTILINE)
    assert re.search(r"^training_windows\s+4$", result.stdout, re.MULTILINE)
    assert "warning: " in result.stderr and "GroupLens original" in result.stderr
    assert load_metadata(tmp_path / "out" / "metadata.json")["params"] == {
        "seq_length": 4,
        "window_stride": 2,
        "holdout": "",
    }
    assert (tmp_path / "out" / "ml1m_T4_S2" / "cache.json").is_file()


def test_cli_bad_path_is_one_line(tmp_path):
    result = run_cli("--data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {tmp_path / 'nowhere'}: no such file or folder; pass a dataset folder or zip, "
        "or omit it to download ML-1M"
    ]
    assert result.stdout == ""


def test_cli_malformed_file_and_strict_are_one_line_errors(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m", ratings=[*RATINGS[:4], "7::1::9::978307200", *RATINGS[5:]])
    result = run_cli("--data_dir", str(folder), "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.splitlines()[-1]
        == f"error: {folder / 'ratings.dat'}, line 5: rating must be 1..5: '7::1::9::978307200'"
    )
    strict = run_cli("--data_dir", str(folder), "--output_dir", str(tmp_path / "out"), "--strict")
    assert strict.returncode == 1
    assert len(strict.stderr.splitlines()) == 1 and strict.stderr.startswith("error: ")


def test_cli_rejects_bad_parameters(tmp_path):
    result = run_cli("--data_dir", str(tmp_path), "--window_stride", "0")
    assert result.returncode == 2
    assert "window_stride must be in 1..seq_length" in result.stderr


# ---------------------------------------------------------------------------------------------------------
# Real ML-1M (skipped when $ML1M_DIR is absent; tests/conftest.py)


@pytest.fixture(scope="module")
def real_data(real_ml1m_dir) -> SequenceData:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shared copy is byte-identical to GroupLens': no checksum warning
        return load_dataset(real_ml1m_dir, strict=True)


def test_real_counts(real_data):
    assert len(real_data.seq_items) == 1_000_209
    assert real_data.num_users == 6_040
    assert real_data.num_items == 3_706
    assert len(real_data.catalog_ids) == 3_883
    assert real_data.feature("item", "genres")["size"] == 18
    assert (real_data.feature("item", "year")["range"][0], real_data.feature("item", "year")["size"]) == (1919, 84)
    for split in ("val", "test"):
        inputs = eval_inputs(real_data, split, seq_length=50)
        assert inputs.targets.shape == (6_040,) and inputs.items.shape == (6_040, 50)
        assert (inputs.targets >= 1).all() and (inputs.targets <= 3_706).all()
    statistics = dp.dataset_statistics(real_data)
    assert statistics["ratings_sharing_user_and_timestamp"] == 774_028  # EVALUATION.md
    assert statistics["never_rated_movies"] == 177


def test_real_movie_and_user_features(real_data):
    item = int(np.searchsorted(real_data.item_ids[1:-1], 1)) + 1
    assert real_data.item_ids[item] == 1
    assert [GENRES[g] for g in np.flatnonzero(real_data.item_values["genres"][item])] == [
        "Animation",
        "Children's",
        "Comedy",
    ]
    assert real_data.item_values["year"][item] == 2 + 1995 - 1919
    titles = dict(zip(real_data.catalog_ids.tolist(), real_data.catalog_titles.tolist(), strict=True))
    assert titles[1] == "Toy Story (1995)"
    assert titles[73] == "Misérables, Les (1995)"
    movie_30 = int(np.searchsorted(real_data.catalog_ids, 30))
    assert titles[30] == "Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)"
    assert real_data.catalog_values["year"][movie_30] == 2 + 1995 - 1919
    assert real_data.user_ids[1] == 1
    assert [real_data.user_values[name][1] for name in ("gender", "age", "occupation")] == [1, 1, 11]


def test_real_rating_days_checked_by_hand(real_data):
    def event(user_id: int, movie_id: int) -> tuple[int, int, int]:
        start, stop = (
            real_data.seq_offsets[user_id],
            real_data.seq_offsets[user_id + 1],
        )  # UserIDs are 1..6040
        position = (
            start + np.flatnonzero(real_data.item_ids[real_data.seq_items[start:stop]] == movie_id)[0]
        )
        return (
            int(real_data.seq_ratings[position]),
            int(real_data.seq_timestamps[position]),
            int(real_data.seq_days[position]),
        )

    assert event(1, 1193) == (5, 978300760, 366)  # line 1: 2000-12-31 22:12:40 UTC, a leap year
    assert event(4958, 1924) == (4, 1046454590, 59)  # line 825604: 2003-02-28, the newest rating
    assert event(6040, 858) == (4, 956703932, 116)  # line 1000139: 2000-04-25, the oldest rating


def test_real_tie_order(real_data):
    # user 2 rated movies 2194 (line 58), 2268 (line 60) and 1442 (line 117) at the same second, 978299297
    start, stop = real_data.seq_offsets[2], real_data.seq_offsets[3]
    movies = real_data.item_ids[real_data.seq_items[start:stop]]
    tied = np.flatnonzero(real_data.seq_timestamps[start:stop] == 978299297)
    assert movies[tied].tolist() == [2194, 2268, 1442]


def test_real_windows_cover_exactly_the_training_events(real_data):
    counts = np.diff(real_data.seq_offsets)[1:]
    position = np.arange(len(real_data.seq_items)) - np.repeat(real_data.seq_offsets[1:-1], counts)
    training = position < np.repeat(counts - 2, counts)
    users = np.repeat(np.arange(1, real_data.num_users + 1), counts)
    vocabulary = real_data.num_items + 2
    training_pairs = np.unique(users[training] * vocabulary + real_data.seq_items[training])
    in_window = real_data.window_items > 0
    window_pairs = np.unique(
        (real_data.window_users[:, None] * vocabulary + real_data.window_items)[in_window]
    )
    assert np.array_equal(window_pairs, training_pairs)  # every training event, nothing from validation/test
    assert (real_data.window_items[:, -1] > 0).all()  # left-padded: the newest event is at position T - 1


def test_real_metadata_has_cold_start_movies(real_data):
    metadata = build_metadata(real_data)
    assert len(metadata["movies"]) == 3_883 and len(metadata["item_index_by_movie_id"]) == 3_706
    never_rated = set(metadata["movies"]) - set(metadata["item_index_by_movie_id"])
    assert len(never_rated) == 177 and all(metadata["movies"][m]["title"] for m in never_rated)
    assert metadata["users"][1]["age_group"] == "Under 18"
    assert metadata["users"][1]["occupation"] == "K-12 student"
    assert metadata["matches_grouplens_original"] is True
    assert metadata["fingerprint"] == real_data.fingerprint == dp.source_fingerprint(dp.GROUPLENS_MD5)
