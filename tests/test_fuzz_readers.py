"""A seeded fuzz test of every reader of outside input: ratings.dat, movies.dat, users.dat, metadata.json, a
checkpoint's plain-data fields and the CLI's id lists.

Each mutated input must either be read exactly as the clean input or be refused with the project's own error, on
one line, naming the file (and, for the .dat files, the line). A traceback (any other exception) or a silent
change (read without error but different) fails the test. The mutations keep away from changes no reader can
see: a valid value turned into another valid value (a rating 4 into a 5) is found only by the md5 check against
GroupLens' files (load_dataset's verify) or by the checksums of metadata.json and the checkpoint.
"""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from data_processor import DataError, load_dataset, load_metadata
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
        if isinstance(value, np.ndarray):
            if value.shape != other.shape or not np.array_equal(value, other):
                return False
        elif value != other:
            return False
    return True


def one_line(error: Exception, *names: str) -> None:
    text = str(error)
    assert "\n" not in text.strip() and all(name in text for name in names), text


def mutate_dat(raw: bytes, name: str, rng: random.Random) -> tuple[str, bytes]:
    lines = raw.split(b"\n")[:-1]
    row = rng.randrange(len(lines))
    fields = lines[row].split(b"::")
    kind = rng.choice(["truncate", "flip", "separator", "number", "encoding", "crlf", "blank", "extra_field"])
    if kind == "truncate":  # cut inside a line
        cuts = [p for p in range(1, len(raw)) if raw[p - 1:p] != b"\n"]
        return kind, raw[: rng.choice(cuts)]
    if kind == "flip":
        field = rng.choice(STRUCTURED_FIELDS[name])
        value = bytearray(fields[field])
        if value:
            value[rng.randrange(len(value))] = rng.choice(NON_DIGITS)[0]
        fields[field] = bytes(value)
    elif kind == "separator":
        position = rng.randrange(len(fields) - 1)
        fields[position:position + 2] = [fields[position] + rng.choice(SEPARATORS) + fields[position + 1]]
    elif kind == "number":
        numeric = [f for f in STRUCTURED_FIELDS[name] if fields[f].isdigit()]
        fields[rng.choice(numeric)] = rng.choice(NUMBERS)
    elif kind == "encoding":
        return kind, raw.decode("latin-1").encode(rng.choice(ENCODINGS), errors="replace")
    elif kind == "crlf":
        return kind, raw.replace(b"\n", b"\r\n")
    elif kind == "blank":
        lines.insert(row, rng.choice([b"", b" ", b"\t"]))
        return kind, b"\n".join(lines) + b"\n"
    elif kind == "extra_field":
        fields.insert(rng.randrange(len(fields) + 1), rng.choice([b"1", b"x", b""]))
    lines[row] = b"::".join(fields)
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
            assert metadata == clean, f"run {run}: metadata read differently, without an error"
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
        hidden = model(probe, torch.ones_like(probe), *(torch.ones(2, dtype=torch.long),) * 4).hidden
        clean_hidden = clean_model(probe, torch.ones_like(probe), *(torch.ones(2, dtype=torch.long),) * 4).hidden
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
    assert Path(__file__).read_text().count("def test_") == 6
