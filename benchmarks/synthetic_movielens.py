"""Synthetic MovieLens-shaped data in ML-20M/25M/32M's CSV format, to measure what each stage costs at sizes
beyond ML-1M. It exists to measure cost, never quality: the ratings carry no signal a model could learn.

    python benchmarks/synthetic_movielens.py --users 200948 --items 87585 --events 32000000 --out runs/ml32m_like
    python trainer.py --data_dir runs/ml32m_like ...      # read by readers.read_ml_csv, as the real ML-32M

The shape follows the real files: item popularity falls as a power law of its rank (a few blockbusters, a long
tail), each user has at least MIN_EVENTS ratings and a log-normal history length (ML-20M's users: median 68,
mean 144), timestamps advance by log-normal gaps from a user's start between 1996 and 2023, ratings are half
stars with ML's skew towards 3-4, and each movie has one to three genres (ML-20M's 19 names) and a year. A user
rates a movie at most once. Everything is drawn from one seeded numpy generator: the same flags give the same
bytes.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data_processor import atomic_file  # noqa: E402

GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
MIN_EVENTS = 20  # ML-20M and later keep users with at least 20 ratings
POPULARITY_EXPONENT = 1.0  # p(item of rank r) ~ 1 / (r + POPULARITY_OFFSET) ** POPULARITY_EXPONENT
POPULARITY_OFFSET = 10
POPULARITY_ROUNDS = 3
HISTORY_SIGMA = 1.2  # log-normal spread of history lengths (ML-20M: median 68, mean 144)
RATINGS = np.arange(1, 11) / 2  # 0.5 .. 5.0
RATING_SHARES = np.array([1.6, 3.4, 1.6, 7.1, 4.9, 19.7, 11.4, 26.7, 7.7, 15.9])  # ML-20M's, in percent
CHUNK_ROWS = 1_000_000
FIRST_DAY, LAST_DAY = 820_454_400, 1_672_531_200  # 1996-01-01 .. 2023-01-01 UTC


def history_lengths(rng: np.random.Generator, users: int, items: int, events: int) -> np.ndarray:
    """Per-user event counts: MIN_EVENTS plus a log-normal share of the rest, at most half the catalogue each (the
    excess goes to users below that), summing to events exactly."""
    cap = items // 2
    if not MIN_EVENTS * users <= events <= cap * users:
        raise ValueError(f"--events {events:,} must be {MIN_EVENTS}..{cap:,} (half of --items) per user for "
                         f"--users {users:,}")
    extra = events - MIN_EVENTS * users
    weights = rng.lognormal(0.0, HISTORY_SIGMA, users)
    lengths = np.floor(weights / weights.sum() * extra).astype(np.int64) + MIN_EVENTS
    lengths[rng.choice(users, events - lengths.sum(), replace=False)] += 1  # the rounding remainder
    while (over := lengths > cap).any():
        excess = int((lengths[over] - cap).sum())
        lengths[over] = cap
        np.add.at(lengths, rng.choice(np.flatnonzero(lengths < cap), excess), 1)
    return lengths


def rated_items(rng: np.random.Generator, lengths: np.ndarray, items: int) -> np.ndarray:
    """Each user's movies, drawn by popularity without repeats within a user, concatenated user by user. A repeat
    is redrawn by popularity for POPULARITY_ROUNDS rounds, then uniformly (which ends quickly even for a user who
    has rated much of the tail)."""
    popularity = 1.0 / (np.arange(items) + POPULARITY_OFFSET) ** POPULARITY_EXPONENT
    popularity /= popularity.sum()
    rank_to_item = rng.permutation(items)  # so that item ids do not follow popularity
    users = np.repeat(np.arange(len(lengths)), lengths)
    ranks = rng.choice(items, size=len(users), p=popularity)
    for round in itertools.count():
        pairs = users * items + ranks
        order = np.argsort(pairs, kind="stable")
        repeated = np.zeros(len(pairs), dtype=bool)
        repeated[order[1:]] = pairs[order[1:]] == pairs[order[:-1]]
        if not repeated.any():
            return rank_to_item[ranks]
        ranks[repeated] = rng.choice(items, size=int(repeated.sum()), p=popularity if round < POPULARITY_ROUNDS
                                     else None)


def timestamps(rng: np.random.Generator, lengths: np.ndarray) -> np.ndarray:
    """Per user, a start between FIRST_DAY and LAST_DAY and increasing times by log-normal gaps (minutes to
    months), clipped to LAST_DAY."""
    starts = rng.integers(FIRST_DAY, LAST_DAY - 86_400 * 365, size=len(lengths))
    gaps = rng.lognormal(np.log(3_600.0), 2.5, size=int(lengths.sum())).astype(np.int64) + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[offsets] - gaps[offsets], lengths)  # each user's clock starts at 0
    return np.minimum(np.repeat(starts, lengths) + elapsed, LAST_DAY)


def movies_table(rng: np.random.Generator, items: int) -> pd.DataFrame:
    """movieId, title "Movie N (YYYY)" and one to three '|'-joined genres."""
    genre_counts = rng.choice([1, 2, 3], size=items, p=[0.45, 0.35, 0.2])
    genre_ids = [rng.choice(len(GENRES), size=count, replace=False) for count in genre_counts]
    years = rng.integers(1920, 2023, size=items)
    return pd.DataFrame({
        "movieId": np.arange(1, items + 1),
        "title": [f"Movie {i}, a synthetic title ({year})" for i, year in enumerate(years, start=1)],
        "genres": ["|".join(GENRES[g] for g in sorted(ids)) for ids in genre_ids],
    })


def write_synthetic_movielens(out: str | Path, users: int, items: int, events: int, seed: int = 0) -> Path:
    """ratings.csv and movies.csv in ML-32M's format under out; returns the folder."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lengths = history_lengths(rng, users, items, events)
    ratings = pd.DataFrame({
        "userId": np.repeat(np.arange(1, users + 1), lengths),
        "movieId": rated_items(rng, lengths, items) + 1,
        "rating": rng.choice(RATINGS, size=events, p=RATING_SHARES / RATING_SHARES.sum()),
        "timestamp": timestamps(rng, lengths),
    })
    for name, table in (("movies.csv", movies_table(rng, items)), ("ratings.csv", ratings)):
        with atomic_file(out / name) as file:
            for start in range(0, len(table), CHUNK_ROWS):  # a chunk at a time: the text never all in memory
                chunk = table.iloc[start:start + CHUNK_ROWS]
                file.write(chunk.to_csv(index=False, header=start == 0, lineterminator="\n").encode())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200_948, help="users (ML-32M: 200,948)")
    parser.add_argument("--items", type=int, default=87_585, help="movies (ML-32M: 87,585)")
    parser.add_argument("--events", type=int, default=32_000_204, help="ratings (ML-32M: 32,000,204)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="folder for ratings.csv and movies.csv")
    args = parser.parse_args(argv)
    try:
        folder = write_synthetic_movielens(args.out, args.users, args.items, args.events, args.seed)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {folder / 'ratings.csv'} ({args.events:,} ratings) and {folder / 'movies.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
