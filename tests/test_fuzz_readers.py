"""A seeded fuzz test of every reader of outside input: ratings.dat, movies.dat, users.dat, the files of the other
dataset formats (readers.py), metadata.json, a checkpoint's plain-data fields and the CLI's id lists.

Each mutated input must either be read exactly as the clean input or be refused with the project's own error, on
one line, naming the file (and, for the .dat files, the line). A traceback (any other exception) or a silent
change (read without error but different) fails the test. The mutations keep away from changes no reader can
see: a valid value turned into another valid value (a rating 4 into a 5) is found only by the md5 check against
GroupLens' files (load_dataset's verify) or by the checksums of metadata.json and the checkpoint.
"""

import csv
import io
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import readers
from data_processor import DataError, load_dataset, load_metadata, source_encoding
from enhanced_model import CheckpointFileError, model_from_checkpoint, read_checkpoint
from inference import _id_list
from trainer import parse_args, train

SEED = 20261129
DAT_RUNS = 400  # per .dat file
METADATA_RUNS = 600
CHECKPOINT_RUNS = 200
ID_LIST_RUNS = 1000
NON_DIGITS = [b"a", b"Z", b"-", b"+", b".", b" ", b":", b"|", b",", b"\t", b"\x00", b"\xff", b"\xe9", b"#", b"\""]
SEPARATORS = [b":", b",", b"\t", b";", b":::", b" :: ", b"", b"::::"]
NUMBERS = [b"-1", b"-5", b"99999999", b"99999999999999999999", b"-99999999", b"1e5", b"3.0", b"", b"0x10", b"1_000",
           b"\xef\xbc\x91"]  # the last: a full-width digit one
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "cp1252", "cp437", "utf-32"]
# the fields a reader interprets (free text such as titles and zip codes is data, not structure)
STRUCTURED_FIELDS = {"ratings.dat": (0, 1, 2, 3), "movies.dat": (0, 2), "users.dat": (0, 1, 2, 3)}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def fingerprint_free(data) -> dict:
    """The dataset's arrays, the source checksums left out (a re-encoded file has other bytes, same content)."""
    return {name: value for name, value in vars(data).items() if name not in ("source_md5",)}


def same_dataset(a, b) -> bool:
    for name, value in fingerprint_free(a).items():
        other = getattr(b, name)
        if isinstance(value, dict) and any(isinstance(v, np.ndarray) for v in value.values()):
            pairs = [(value[key], other.get(key)) for key in value] if list(value) == list(other) else None
        else:
            pairs = [(value, other)] if isinstance(value, np.ndarray) else []
        if pairs is None:
            return False
        if not pairs and value != other:
            return False
        for x, y in pairs:
            if x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
                return False
    return True


def one_line(error: Exception, *names: str) -> None:
    text = str(error)
    assert "\n" not in text.strip() and all(name in text for name in names), text


def mutate_dat(raw: bytes, name: str, rng: random.Random, separator: bytes = b"::",
               structured: tuple[int, ...] | None = None, header: bool = False,
               numbers: list[bytes] = NUMBERS) -> tuple[str, bytes]:
    """One seeded mutation of a line-based file: fields split by `separator`, only the `structured` ones (the
    fields a reader interprets) flipped or replaced by `numbers`. A CSV (`header`: its first line is left alone) may
    quote a title holding commas, so there fields are joined or inserted only at the first and last separator."""
    structured = STRUCTURED_FIELDS[name] if structured is None else structured
    lines = raw.split(b"\n")[:-1]
    row = rng.randrange(1 if header else 0, len(lines))
    fields = lines[row].split(separator)
    kind = rng.choice(["truncate", "flip", "separator", "number", "encoding", "crlf", "blank", "extra_field"])
    if kind == "truncate":  # cut inside a line
        cuts = [p for p in range(1, len(raw)) if raw[p - 1:p] != b"\n"]
        return kind, raw[: rng.choice(cuts)]
    if kind == "flip":
        field = rng.choice(structured)
        value = bytearray(fields[field])
        if value:
            value[rng.randrange(len(value))] = rng.choice(NON_DIGITS)[0]
        fields[field] = bytes(value)
    elif kind == "separator":
        position = rng.choice([0, len(fields) - 2]) if header else rng.randrange(len(fields) - 1)
        joint = rng.choice([other for other in SEPARATORS if other != separator])
        fields[position:position + 2] = [fields[position] + joint + fields[position + 1]]
    elif kind == "number":
        numeric = [f for f in structured if fields[f].replace(b".", b"", 1).isdigit()]
        fields[rng.choice(numeric or list(structured))] = rng.choice(numbers)
    elif kind == "encoding":
        return kind, raw.decode(source_encoding(raw)).encode(rng.choice(ENCODINGS), errors="replace")
    elif kind == "crlf":
        return kind, raw.replace(b"\n", b"\r\n")
    elif kind == "blank":
        lines.insert(row, rng.choice([b"", b" ", b"\t"]))
        return kind, b"\n".join(lines) + b"\n"
    elif kind == "extra_field":
        fields.insert(rng.choice([0, len(fields)]) if header else rng.randrange(len(fields) + 1),
                      rng.choice([b"1", b"x", b""]))
    lines[row] = separator.join(fields)
    return kind, b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("name", ["ratings.dat", "movies.dat", "users.dat"])
def test_dat_readers(name, synthetic_ml1m_dir, tmp_path):
    clean = load_dataset(synthetic_ml1m_dir, verify=False)
    raw = (synthetic_ml1m_dir / name).read_bytes()
    rng = random.Random(f"{SEED}-{name}")
    folder = tmp_path / "mutated"
    folder.mkdir()
    for other in ("ratings.dat", "movies.dat", "users.dat"):
        if other != name:
            (folder / other).write_bytes((synthetic_ml1m_dir / other).read_bytes())
    outcomes = {"refused": 0, "identical": 0}
    for run in range(DAT_RUNS):
        kind, mutated = mutate_dat(raw, name, rng)
        (folder / name).write_bytes(mutated)
        try:
            data = load_dataset(folder, verify=False)
        except DataError as error:
            one_line(error, name)
            assert "line" in str(error) or "empty" in str(error), f"run {run} ({kind}): {error}"
            outcomes["refused"] += 1
        else:
            assert same_dataset(data, clean), f"run {run} ({kind}): read differently, without an error"
            outcomes["identical"] += 1
    assert outcomes["refused"] > DAT_RUNS // 2  # most mutations break the format


# The other formats, written from the synthetic ML-1M: file -> (separator, structured fields, has a header, the
# mutations that may be read as changed data). Genre names, titles, occupations and dates are data in these formats
# (their vocabularies come from the files). The generic format takes any id, number or timestamp as a valid value,
# and an ML-10M title may hold '::', so an extra field there is read as part of the title.
GENERIC_VALUES = ("flip", "number")
FORMAT_FILES = {
    "ml-100k": {"u.data": (b"\t", (0, 1, 2, 3), False, ()), "u.item": (b"|", (0, *range(5, 24)), False, ()),
                "u.user": (b"|", (0, 1, 2), False, ())},
    "ml-10m": {"ratings.dat": (b"::", (0, 1, 2, 3), False, ()), "movies.dat": (b"::", (0,), False, ("extra_field",))},
    "ml-csv": {"ratings.csv": (b",", (0, 1, 2, 3), True, ()), "movies.csv": (b",", (0,), True, ())},
    "generic": {"interactions.csv": (b",", (0, 1, 2, 3), True, GENERIC_VALUES),
                "items.csv": (b",", (0, -1), True, GENERIC_VALUES),
                "users.csv": (b",", (0, 1, 2, 3), True, GENERIC_VALUES)},
}
FORMAT_RUNS = 150  # per file
HALF_STAR_NUMBERS = [number for number in NUMBERS if number != b"3.0"]  # 3.0 is a valid half-star rating
OCCUPATION_NAMES = ("administrator", "artist", "doctor", "educator", "engineer", "other", "student", "writer")


def csv_text(rows: list[list[object]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def write_format(name: str, tables, folder: Path) -> Path:
    """The synthetic ML-1M tables in one of the other formats, as GroupLens (or export_generic) writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings = list(tables.interactions.itertuples(index=False))
    items = list(tables.items.itertuples(index=False))
    half_stars = [rating - 0.5 * (row % 3 == 0) for row, (*_, rating) in enumerate(ratings)]
    if name == "ml-100k":
        files = {
            "u.data": "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, t, r in ratings).encode("latin-1"),
            "u.item": "".join(
                f"{i}|{title}|{'' if year is pd.NA else f'01-Jan-{year}'}||http://us.imdb.com/M/title-exact?{i}|"
                + "|".join(str(int(genre in genres.split("|"))) for genre in readers.ML100K_GENRES) + "\n"
                for i, title, genres, year in items).encode("latin-1"),
            "u.user": "".join(f"{u}|{age}|{gender}|{OCCUPATION_NAMES[job % 8]}|{55000 + u}\n"
                              for u, gender, age, job in tables.users.itertuples(index=False)).encode("latin-1"),
        }
    elif name == "ml-10m":
        files = {
            "ratings.dat": "".join(f"{u}::{i}::{stars:g}::{t}\n"
                                   for (u, i, t, _), stars in zip(ratings, half_stars, strict=True)).encode(),
            "movies.dat": "".join(f"{i}::{title}::{genres}\n" for i, title, genres, _ in items).encode(),
        }
    elif name == "ml-csv":
        files = {
            "ratings.csv": csv_text([["userId", "movieId", "rating", "timestamp"]]
                                    + [[u, i, f"{stars:.1f}", t]
                                       for (u, i, t, _), stars in zip(ratings, half_stars, strict=True)]),
            "movies.csv": csv_text([["movieId", "title", "genres"]]
                                   + [[i, title, genres] for i, title, genres, _ in items]),
        }
    else:
        return readers.export_generic(tables, folder)
    for file_name, raw in files.items():
        (folder / file_name).write_bytes(raw)
    return folder


@pytest.mark.parametrize("name, file_name", [(name, file_name) for name, files in FORMAT_FILES.items()
                                             for file_name in files])
def test_other_format_readers(name, file_name, synthetic_ml1m_dir, tmp_path):
    """Every mutated file of every other format is read as the clean one or refused with a DataError naming the
    file and its line; the mutations FORMAT_FILES lets through may also be read as changed data, but never raise
    any other exception."""
    folder = write_format(name, readers.read_dataset(synthetic_ml1m_dir), tmp_path / name)
    clean = readers.read_dataset(folder)
    separator, structured, header, may_change = FORMAT_FILES[name][file_name]
    numbers = HALF_STAR_NUMBERS if name in ("ml-10m", "ml-csv") else NUMBERS
    raw = (folder / file_name).read_bytes()
    rng = random.Random(f"{SEED}-{name}-{file_name}")
    refused = 0
    for run in range(FORMAT_RUNS):
        kind, mutated = mutate_dat(raw, file_name, rng, separator, structured, header, numbers)
        (folder / file_name).write_bytes(mutated)
        try:
            tables = readers.read_dataset(folder)
        except DataError as error:
            one_line(error, file_name)
            assert "line" in str(error) or "empty" in str(error), f"run {run} ({kind}): {error}"
            refused += 1
        else:
            difference = readers.tables_differ(tables, clean)
            assert difference is None or kind in may_change, f"run {run} ({kind}): read differently: {difference[:300]}"
    assert refused > FORMAT_RUNS // 2


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from data_processor import write_synthetic_ml1m

    folder = tmp_path_factory.mktemp("fuzz_run")
    data_dir = write_synthetic_ml1m(folder / "ml-1m")
    train(parse_args(["--data_dir", str(data_dir), "--hidden_size", "16", "--num_heads", "2", "--num_layers", "1",
                      "--seq_length", "12", "--batch_size", "16", "--max_epochs", "1", "--no-progress",
                      "--checkpoint_dir", str(folder / "run")]))
    return folder / "run"


def mutate_json_text(text: str, rng: random.Random) -> str:
    kind = rng.choice(["truncate", "flip", "delete", "duplicate"])
    position = rng.randrange(len(text))
    if kind == "truncate":
        return text[:position]
    if kind == "flip":
        return text[:position] + rng.choice("0123456789abcxyz\"{}[],:-. \\") + text[position + 1:]
    if kind == "delete":
        return text[:position] + text[position + rng.randint(1, 20):]
    return text[:position] + text[position:position + rng.randint(1, 20)] + text[position:]


def same_metadata(a: dict, b: dict) -> bool:
    """Equal metadata: the same plain values and the same history arrays (values and dtypes)."""
    arrays = ("histories",)
    return ({k: v for k, v in a.items() if k not in arrays} == {k: v for k, v in b.items() if k not in arrays}
            and a["histories"].keys() == b["histories"].keys()
            and all(a["histories"][name].dtype == b["histories"][name].dtype
                    and np.array_equal(a["histories"][name], b["histories"][name]) for name in a["histories"]))


def test_metadata_reader(tiny_run, tmp_path):
    clean_text = (tiny_run / "metadata.json").read_text(encoding="utf-8")
    clean = load_metadata(tiny_run / "metadata.json")
    rng = random.Random(f"{SEED}-metadata")
    path = tmp_path / "metadata.json"
    refused = 0
    for run in range(METADATA_RUNS):
        mutated = mutate_json_text(clean_text, rng)
        path.write_text(mutated, encoding="utf-8")
        try:
            metadata = load_metadata(path)
        except DataError as error:
            one_line(error, str(path))
            refused += 1
        else:
            assert same_metadata(metadata, clean), f"run {run}: metadata read differently, without an error"
    assert refused > METADATA_RUNS * 0.9


CHECKPOINT_VALUES = [None, -1, 0, 10**12, "x", 1.5, True, [], {}, "sinusoidal"]


def test_checkpoint_plain_fields(tiny_run, tmp_path):
    """Mutate one plain-data field of best_model.pt (a config value, the fingerprint, the format, a key dropped):
    the checkpoint is refused with one line, or loads into exactly the clean model."""
    clean = read_checkpoint(tiny_run / "best_model.pt")
    clean_model = model_from_checkpoint(clean, "clean")
    probe = torch.randint(1, clean_model.config.num_items, (2, clean_model.config.seq_length))
    rng = random.Random(f"{SEED}-checkpoint")
    path = tmp_path / "best_model.pt"
    refused = 0
    for run in range(CHECKPOINT_RUNS):
        checkpoint = {key: (dict(value) if isinstance(value, dict) and key != "model_state" else value)
                      for key, value in clean.items()}
        place = rng.choice(["model_config", "train_config", "top"])
        target = checkpoint if place == "top" else checkpoint[place]
        key = rng.choice(sorted(target))
        if rng.random() < 0.2 and key != "model_state":
            del target[key]
        elif key != "model_state":
            target[key] = rng.choice([value for value in CHECKPOINT_VALUES if value != target[key]])
        torch.save(checkpoint, path)
        try:
            model = model_from_checkpoint(read_checkpoint(path), path)
        except CheckpointFileError as error:
            one_line(error, str(path))
            refused += 1
            continue
        if model.config != clean_model.config:
            pytest.fail(f"run {run}: {place}[{key!r}] changed the model without an error")
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                       clean_model.state_dict().values(), strict=True))
        ones = torch.ones(2, dtype=torch.long)
        user = {feature["name"]: ones for feature in clean_model.config.user_features}
        hidden = model(probe, torch.ones_like(probe), ones, **user).hidden
        clean_hidden = clean_model(probe, torch.ones_like(probe), ones, **user).hidden
        assert torch.equal(hidden, clean_hidden)
    assert refused > CHECKPOINT_RUNS // 3


def test_cli_id_lists():
    clean = [1, 5, 10, 3952]
    text = ",".join(map(str, clean))
    rng = random.Random(f"{SEED}-ids")
    import argparse

    refused = 0
    for run in range(ID_LIST_RUNS):
        position = rng.randrange(len(text) + 1)
        insert = rng.choice(["a", "-", "+", ".", " ", ",,", ";", "1e3", "99999999999999999999", "\x00", "１",
                             "0x1", "_", "\t", "/"])
        mutated = text[:position] + insert + text[position:]
        try:
            values = _id_list(mutated)
        except argparse.ArgumentTypeError as error:
            one_line(error, "integers")
            refused += 1
        else:
            assert values == clean, f"run {run}: {mutated!r} read as {values}"
    assert refused > ID_LIST_RUNS // 2


def test_the_runs_add_up():
    """The run count README states."""
    assert 3 * DAT_RUNS + METADATA_RUNS + CHECKPOINT_RUNS + ID_LIST_RUNS == 3000
    assert FORMAT_RUNS * sum(map(len, FORMAT_FILES.values())) == 1500
    assert Path(__file__).read_text().count("def test_") == 7
