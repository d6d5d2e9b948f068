"""Shared fixtures: a synthetic ML-1M folder (fast tests of every stage) and the real ML-1M when present.

The real-data tests find ML-1M through one setting, the environment variable ML1M_DIR (a folder holding
ratings.dat, movies.dat and users.dat); without it they look in ../shared/data/ml-1m beside the repository, where
the team keeps its verified copy, and are skipped with the reason shown when neither is there.
"""

import os
from pathlib import Path

import pytest

from data_processor import write_synthetic_ml1m

REAL_ML1M_DIR = Path(os.environ.get("ML1M_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m")
# trainer.py flags of the tiny model the unit tests train on synthetic data (seconds per epoch)
TINY = ["--hidden_size", "16", "--num_heads", "2", "--num_layers", "1", "--seq_length", "12", "--batch_size", "16",
        "--learning_rate", "3e-3", "--warmup_steps", "5", "--no-progress"]


def ml1m_items(year_size: int) -> list[dict]:
    """ModelConfig's ML-1M item features (18 genres, a year) with `year_size` year buckets, for tiny test models."""
    return [{"name": "genres", "kind": "multi", "size": 18}, {"name": "year", "kind": "bucketed", "size": year_size}]


@pytest.fixture
def synthetic_ml1m_dir(tmp_path: Path) -> Path:
    """A fresh synthetic ML-1M folder (40 users, 120 movies) in a temporary directory."""
    return write_synthetic_ml1m(tmp_path / "ml-1m")


@pytest.fixture(scope="session")
def real_ml1m_dir() -> Path:
    """The real ML-1M folder ($ML1M_DIR); skips the test when absent."""
    if not all((REAL_ML1M_DIR / name).is_file() for name in ("ratings.dat", "movies.dat", "users.dat")):
        pytest.skip(f"real ML-1M not found at {REAL_ML1M_DIR}: set ML1M_DIR to your ml-1m folder to run this test")
    return REAL_ML1M_DIR


@pytest.fixture(scope="session")
def real_short_run(real_ml1m_dir, tmp_path_factory):
    """One short training on the real ML-1M (tiny model, four epochs), shared by the tests that need a real
    checkpoint: (results, checkpoint folder with best_model.pt / results.json / metadata.json)."""
    from trainer import parse_args, train

    out = tmp_path_factory.mktemp("real_run")
    config = parse_args(["--data_dir", str(real_ml1m_dir), "--hidden_size", "32", "--num_heads", "2",
                         "--num_layers", "1", "--seq_length", "50", "--window_stride", "50", "--batch_size", "128",
                         "--learning_rate", "3e-3", "--warmup_steps", "10", "--max_epochs", "4", "--dropout", "0",
                         "--lr_schedule", "cosine",
                         "--next_item_weight", "0", "--no-progress", "--checkpoint_dir", str(out),
                         "--cache_dir", str(out / "cache")])
    _, results = train(config)
    return results, out
