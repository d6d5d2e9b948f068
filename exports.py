"""Many users' top k written to one file: CSV for a .csv name, JSON Lines for .jsonl, one row per (user, rank).

Rows are streamed a batch of users at a time into a temporary file beside the target, renamed into place only when
every row is written (data_processor.atomic_file): a failure or Ctrl-C part-way leaves no file and no temporary
file, and an existing file at the path is replaced whole only then. In CSV only, a text cell that a spreadsheet
would read as a formula (starting with =, +, -, @, a tab or a carriage return: OWASP's CSV injection list) gets a
leading apostrophe; JSON Lines holds the text as it is.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_processor import atomic_file

EXPORT_FORMATS = (".csv", ".jsonl")
EXPORT_COLUMNS = ("user_id", "rank", "movie_id", "title", "score", "predicted_rating", "strategy")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: Any) -> Any:
    """A CSV cell as a spreadsheet shows it, never runs it: text starting like a formula gets a leading apostrophe;
    numbers (a negative score included) and other text are left as they are."""
    return "'" + cell if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) else cell


def write_export(path: Path, recommend: Callable[[list[int]], list[list[dict[str, Any]]]], user_ids: list[int],
                 batch_size: int, progress: bool) -> int:
    """Write the records recommend(chunk) gives each chunk of batch_size user_ids to path, one chunk in memory at a
    time (RecommendationEngine.export_recommendations); returns the number of rows."""
    rows = 0
    with atomic_file(path) as handle, tqdm(total=len(user_ids), desc="users", unit="user", disable=not progress) as bar:
        file = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        write = _row_writer(file, path.suffix.lower())
        for start in range(0, len(user_ids), batch_size):
            chunk = user_ids[start : start + batch_size]
            for user_id, records in zip(chunk, recommend(chunk), strict=True):
                for record in records:
                    write({"user_id": user_id, **{name: record.get(name) for name in EXPORT_COLUMNS[1:]}})
                rows += len(records)
            bar.update(len(chunk))
        file.flush()
        file.detach()  # the handle is atomic_file's to close and rename
    return rows


def _row_writer(file: Any, suffix: str) -> Any:
    """A function writing one export row (a dict in EXPORT_COLUMNS order) as CSV or as a JSON line."""
    if suffix == ".jsonl":
        return lambda row: file.write(json.dumps(row, ensure_ascii=False) + "\n")
    writer = csv.DictWriter(file, fieldnames=EXPORT_COLUMNS)
    writer.writeheader()
    return lambda row: writer.writerow({name: spreadsheet_safe(value) for name, value in row.items()})
