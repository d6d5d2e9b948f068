"""The same ratings through every reader: real ML-1M written in each published format (MovieLens 100K, 10M,
20M-and-later CSV) and as an interactions-only log in the generic format, each trained by trainer.py for the same
budget and served by inference.py. It shows that every reader's path works end to end on a million real ratings,
and what a format's missing columns cost (10M and the CSV releases have no user file; the bare log has no item
features and no ratings), each switched-off part named by the trainer's note.

    python benchmarks/own_data.py --data_dir path/to/ml-1m --minutes 10 --seed 0 --work runs/own_data

The writers are also what tests/test_own_data.py trains and serves on synthetic data.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import readers  # noqa: E402
from data_model import RawTables  # noqa: E402


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(f"{line}\n" for line in lines).encode(encoding))
    return path


def events(tables: RawTables) -> list[tuple[int, int, int, int]]:
    """(user, item, rating, timestamp) of every interaction, in file order."""
    columns = tables.interactions[["user_id", "item_id", "rating", "timestamp"]]
    return list(columns.itertuples(index=False, name=None))


def year_of(tables: RawTables, row: int) -> str:
    year = tables.items["year"].iloc[row]
    return "" if pd.isna(year) else str(int(year))


def write_ml100k(tables: RawTables, folder: Path) -> Path:
    """u.item (id|title|release date|video date|URL|19 genre flags), u.user (id|age|gender|occupation|zip), u.data
    (tab-separated), latin-1, as GroupLens writes them."""
    items = tables.items
    u_item = []
    for row, (item_id, title, genres) in enumerate(zip(items["item_id"], items["title"], items["genres"],
                                                       strict=True)):
        flags = ["1" if genre in genres.split("|") else "0" for genre in readers.ML100K_GENRES]
        year = year_of(tables, row)
        date = f"01-Jan-{year}" if year else ""
        u_item.append("|".join([str(item_id), title.replace("|", "/"), date, "", "http://example.org/x", *flags]))
    write_lines(folder / "u.item", u_item, "latin-1")
    users = tables.users
    u_user = [f"{u}|{age}|{gender}|job{'abcdefghijklmnopqrstu'[occupation]}|00000"
              for u, age, gender, occupation in zip(users["user_id"], users["age"], users["gender"],
                                                    users["occupation"], strict=True)]
    write_lines(folder / "u.user", u_user, "latin-1")
    write_lines(folder / "u.data", [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in events(tables)])
    return folder


def write_ml10m(tables: RawTables, folder: Path) -> Path:
    """movies.dat (MovieID::Title::Genres), ratings.dat (a whole star written "4", as the real file does), and a
    tags.dat (its presence tells ML-10M from an ML-1M folder missing users.dat); no users file."""
    items = tables.items
    write_lines(folder / "movies.dat", [f"{i}::{title}::{genres or '(no genres listed)'}" for i, title, genres
                                        in zip(items["item_id"], items["title"], items["genres"], strict=True)])
    write_lines(folder / "ratings.dat", [f"{u}::{i}::{r}::{t}" for u, i, r, t in events(tables)])
    write_lines(folder / "tags.dat", ["1::1::fun::1000000000"])
    return folder


def write_ml_csv(tables: RawTables, folder: Path) -> Path:
    """movies.csv with quoted titles, ratings.csv with '4.0'-style ratings, both with their headers."""
    items = tables.items
    quoted = ['"' + title.replace('"', '""') + '"' if "," in title or '"' in title else title
              for title in items["title"]]
    write_lines(folder / "movies.csv", ["movieId,title,genres", *(
        f"{i},{title},{genres or '(no genres listed)'}"
        for i, title, genres in zip(items["item_id"], quoted, items["genres"], strict=True))])
    write_lines(folder / "ratings.csv", ["userId,movieId,rating,timestamp", *(
        f"{u},{i},{float(r)},{t}" for u, i, r, t in events(tables))])
    return folder


def write_log(tables: RawTables, folder: Path) -> Path:
    """The generic format at its barest: interactions.csv alone, no ratings, no item or user table."""
    write_lines(folder / "interactions.csv", ["user_id,item_id,timestamp", *(
        f"{u},{i},{t}" for u, i, _, t in events(tables))])
    return folder


WRITERS = {"ml-100k": write_ml100k, "ml-10m": write_ml10m, "ml-csv": write_ml_csv, "generic": write_log}


def run(fmt: str, folder: Path, out: Path, minutes: float, seed: int, user_id: int) -> dict:
    """Train on `folder` for `minutes` (the machine's default configuration), then serve user_id's top 10."""
    training = subprocess.run([sys.executable, str(REPO / "trainer.py"), "--data_dir", str(folder), "--max_minutes",
                               str(minutes), "--seed", str(seed), "--checkpoint_dir", str(out), "--no-progress"],
                              capture_output=True, text=True, check=True)
    notes = [line[len("note: "):] for line in training.stdout.splitlines() if line.startswith("note: ")]
    results = json.loads((out / "results.json").read_text())
    served = subprocess.run([sys.executable, str(REPO / "inference.py"), "--model_path", str(out / "best_model.pt"),
                             "--user_id", str(user_id), "--k", "3", "--json"], capture_output=True, text=True,
                            check=True)
    titles = [record["title"] for record in json.loads(served.stdout)["recommendations"]]
    return {"format": fmt, "epochs": results["epochs_run"], "test_ndcg10": results["test"]["NDCG@10"],
            "test_hr10": results["test"]["HR@10"], "notes": notes, "top3": titles, "machine": results["machine"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="the real ml-1m folder")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each run (--max_minutes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/own_data", help="where the files and runs go")
    parser.add_argument("--formats", nargs="+", default=["ml-1m", *WRITERS], choices=["ml-1m", *WRITERS])
    args = parser.parse_args()
    tables = readers.read_dataset(args.data_dir)
    work = Path(args.work)
    rows = []
    for fmt in args.formats:
        folder = Path(args.data_dir) if fmt == "ml-1m" else WRITERS[fmt](tables, work / "data" / fmt)
        rows.append(run(fmt, folder, work / "runs" / f"{fmt}_seed{args.seed}", args.minutes, args.seed, 1))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| format | epochs in {args.minutes:g} min | test NDCG@10 | test HR@10 | switched off | user 1's top 3 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        off = "; ".join(row["notes"]) or "-"
        print(f"| {row['format']} | {row['epochs']} | {row['test_ndcg10']:.4f} | {row['test_hr10']:.4f} | {off} | "
              f"{' / '.join(row['top3'])} |")
    print(f"\nmachine: {rows[0]['machine']}")


if __name__ == "__main__":
    main()
