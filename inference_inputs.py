"""What a caller may pass the engine: the errors a caller can cause, and the checks that raise them.

Every check names the argument and what it accepts, so that the CLI can print the message as its one line on
stderr (exit status 1) and an API caller sees which argument to fix.
"""

from __future__ import annotations

import math
import numbers
import os
import reprlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from signup_prior import SIGNUP_POSITIONS

# ----------------------------------------------------------------------------------------------------------
# Errors a caller can cause: the CLI turns each into one line on stderr and exit status 1.


class InferenceError(ValueError):
    """Bad input to the engine: the message names the input and the fix."""


class CheckpointError(InferenceError):
    """The checkpoint is missing, corrupt, or not a trainer.py checkpoint."""


class MetadataError(InferenceError):
    """metadata.json is missing, corrupt or incomplete."""


class MetadataMismatchError(InferenceError):
    """metadata.json describes other data than the checkpoint was trained on."""


class UnknownUserError(InferenceError):
    """A UserID that is not in the metadata (and no demographics to treat it as a new user)."""


class UnknownItemError(InferenceError):
    """A MovieID that is not in movies.dat."""


class AlreadySeenError(InferenceError):
    """An explanation asked for a movie of the user's own history."""


class ColdItemError(InferenceError):
    """A never-rated movie where the model must score it (it has no embedding)."""


class ColdItemWarning(UserWarning):
    """Never-rated movies in a history: the model skips them."""


# ----------------------------------------------------------------------------------------------------------
# Arguments: bools are refused where a number is meant (True would silently read as 1); numpy's integers and
# floats are numbers like Python's. A value echoed in a message is shown on one line, shortened (shown).

MAX_ID = 2**63 - 1  # the largest id an int64 array holds: a larger one is nobody's
LAST_TIMESTAMP = 253_402_300_799  # 9999-12-31 23:59:59 UTC: a timestamp must have a day of year


def shown(value: Any) -> str:
    """A value as a message shows it: one line, at most 80 characters."""
    return " ".join(reprlib.repr(value).split())[:80]


def as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InferenceError(f"{name} must be an integer, got {shown(value)}")
    return int(value)


def as_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InferenceError(f"{name} must be True or False, got {shown(value)}")
    return bool(value)


def positive_int(value: Any, name: str) -> int:
    value = as_int(value, name)
    if value <= 0:
        raise InferenceError(f"{name} must be positive, got {value}")
    return value


def as_id(value: Any, name: str, unknown: type[InferenceError] = InferenceError) -> int:
    """A UserID or MovieID: an integer (else InferenceError) in 1..MAX_ID (else `unknown`: no such id exists)."""
    value = as_int(value, name)
    if not 1 <= value <= MAX_ID:
        raise unknown(f"{name} must be a positive integer (an id), got {value}")
    return value


def ordered(values: Any, name: str, what: str, flat: bool = True) -> Sequence[Any]:
    """values as given when they are a list, tuple, range or array (flat: 1-D). Anything else is refused rather than
    guessed at: a string (its characters), a set (it has no order), a dict (its keys), a generator or iterator (it
    is read only once: pass list(...))."""
    if isinstance(values, (list, tuple, range)) or (isinstance(values, np.ndarray) and values.ndim >= 1
                                                    and (values.ndim == 1 or not flat)):
        return values
    why = ""
    if isinstance(values, (set, frozenset)):
        why = ": a set has no order"
    elif isinstance(values, Mapping):
        why = ": a dict is not a list" + ("" if flat else " (for one user, pass [the dict])")
    elif isinstance(values, Iterator):
        why = ": a generator or iterator is read only once, pass list(...)"
    raise InferenceError(f"{name} must be a list of {what} (a list, tuple or {'1-D ' if flat else ''}array), got "
                         f"{type(values).__name__} {shown(values)}{why}")


def _integer_array(values: Any, name: str, low: int, high: int, what: str,
                   outside_error: type[InferenceError] = InferenceError) -> np.ndarray:
    values = ordered(values, name, "integers")
    bad = [value for value in values if isinstance(value, bool) or not isinstance(value, (int, np.integer))]
    if bad:
        raise InferenceError(f"{name} must hold integers only, got {shown(bad[0])}")
    outside = [value for value in values if not low <= value <= high]
    if outside:
        raise outside_error(f"{name} must hold {what}, got {outside[0]}")
    return np.asarray(values, dtype=np.int64).reshape(-1)


def as_id_array(values: Any, name: str) -> np.ndarray:
    """MovieIDs in order as int64 (ordered's containers; each an integer in 1..MAX_ID, else UnknownItemError)."""
    return _integer_array(values, name, 1, MAX_ID, "positive integers (MovieIDs)", UnknownItemError)


def as_timestamp_array(values: Any, name: str = "timestamps") -> np.ndarray:
    """Unix seconds in 0..LAST_TIMESTAMP as int64 (ordered's containers)."""
    return _integer_array(values, name, 0, LAST_TIMESTAMP, f"Unix seconds in 0..{LAST_TIMESTAMP} (1970 to 9999)")


def batch_rows(values: Any, name: str) -> Sequence[Any]:
    """A batch argument: a non-empty list, tuple or array (one entry per user)."""
    values = ordered(values, name, "entries, one per user", flat=False)
    if not len(values):
        raise InferenceError(f"{name} is empty: pass at least one user")
    return values


def demographic_fields(row: Mapping[str, Any] | None, index: int,
                       names: Sequence[str] = ("gender", "age", "occupation")) -> dict[str, Any]:
    """One row of a batch's demographics: a dict of the dataset's user features by name (ML-1M: gender, age,
    occupation)."""
    if row is None:
        return {}
    if not isinstance(row, Mapping) or set(row) - set(names):
        raise InferenceError(f"demographics[{index}] must be None or a dict of {', '.join(names)}; got "
                             f"{shown(row)}")
    return dict(row)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def rating_threshold(min_predicted_rating: Any, has_rating_head: bool) -> float | None:
    """min_predicted_rating as a float in 1..5, or None; it needs a checkpoint with a rating head."""
    if min_predicted_rating is None:
        return None
    if not has_rating_head:
        raise InferenceError("min_predicted_rating needs a checkpoint with a rating head (trained with "
                             "--rating_prediction_weight > 0)")
    if not _is_number(min_predicted_rating) or not 1.0 <= min_predicted_rating <= 5.0:
        raise InferenceError(f"min_predicted_rating must be a number in 1..5, got {shown(min_predicted_rating)}")
    return float(min_predicted_rating)


def day_of_year_setting(day: Any) -> int | None:
    """The engine's default_day_of_year: None (today's, at each call) or a day 1..366."""
    if day is not None and not 1 <= as_int(day, "default_day_of_year") <= 366:
        raise InferenceError(f"default_day_of_year must be in 1..366, got {day}")
    return None if day is None else int(day)


PRECISIONS = ("fp32", "bf16")  # the engine's precision: the encoder's arithmetic when scoring


def precision_setting(precision: Any) -> str:
    """The engine's precision, one of PRECISIONS."""
    if precision not in PRECISIONS:
        raise InferenceError(f"precision must be one of {', '.join(PRECISIONS)}, got {shown(precision)}")
    return precision


# ----------------------------------------------------------------------------------------------------------
# Paths: what the engine reads, and what it writes, which is never one of them


def as_path(value: Any, name: str) -> Path:
    """A path given as a str or os.PathLike (a bytes path is refused: pass a str)."""
    try:
        text = os.fspath(value) if isinstance(value, os.PathLike) else value
    except TypeError:
        text = None
    if not isinstance(text, str) or not text:
        raise InferenceError(f"{name} must be a path (a non-empty str or pathlib.Path), got {shown(value)}")
    if len(text.splitlines()) > 1 or any(ord(character) < 32 for character in text):  # messages stay one line
        raise InferenceError(f"{name} must be a path without line breaks or control characters, got {shown(text)}")
    return Path(text)


def input_paths(model_path: Any, metadata_path: Any) -> dict[str, Path]:
    """The engine's inputs by argument name: the checkpoint, and its metadata (None: metadata.json beside it)."""
    model_path = as_path(model_path, "model_path")
    metadata_path = model_path.parent / "metadata.json" if metadata_path is None else as_path(metadata_path,
                                                                                              "metadata_path")
    return {"model_path": model_path, "metadata_path": metadata_path}


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: it names no file, so no input either
        return path.absolute()


def output_file(value: Any, name: str, suffixes: tuple[str, ...], inputs: Mapping[str, Path]) -> Path:
    """A file to be written: ending in one of suffixes, in a folder that exists, not a folder itself, and none of
    the inputs (name -> path; compared resolved, symlinks followed), so that nothing read is ever written over.
    An existing file there is replaced whole when the new one is complete."""
    path = as_path(value, name)
    if path.suffix.lower() not in suffixes:
        raise InferenceError(f"{name} {path} must end in {' or '.join(suffixes)} (the format follows the extension)")
    if path.is_dir():
        raise InferenceError(f"{name} {path} is a folder: name a file in it, such as {path / ('recs' + suffixes[0])}")
    if not path.parent.is_dir():
        raise InferenceError(f"{name}: folder {path.parent} does not exist: create it or pick another path")
    for input_name, input_path in inputs.items():
        if _resolved(path) == _resolved(input_path):
            raise InferenceError(f"{name} {path} is {input_name} ({input_path}), which is read, never written: "
                                 "pick another path")
    return path


# ----------------------------------------------------------------------------------------------------------
# The sign-up prior's settings (signup_prior.py says what each one does)


class Checked:
    """An attribute whose every assignment passes through check (which raises InferenceError or returns the value
    to keep), read back as kept: the engine's new_user_prior_* settings."""

    def __init__(self, check: Callable[[Any], Any], doc: str) -> None:
        self.check, self.__doc__ = check, doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self if instance is None else getattr(instance, self.slot)

    def __set__(self, instance: Any, value: Any) -> None:
        setattr(instance, self.slot, self.check(value))


MAX_PRIOR_WEIGHT = 1e6  # the prior alone decides long before; far larger weights overflow float32 scores


def prior_weight(weight: Any) -> float:
    if not _is_number(weight) or not 0 <= weight <= MAX_PRIOR_WEIGHT:
        raise InferenceError(f"new_user_prior_weight must be a finite number >= 0 and <= {MAX_PRIOR_WEIGHT:g} (0: no "
                             f"prior), got {shown(weight)}")
    return float(weight)


def prior_fade(fade: Any) -> float:
    if not _is_number(fade) or not fade > 0:
        raise InferenceError(f"new_user_prior_fade must be a number > 0 (math.inf: no fading), got {shown(fade)}")
    return float(fade)


def prior_steepness(steepness: Any) -> float:
    if not _is_number(steepness) or not 0 < steepness < math.inf:
        raise InferenceError(f"new_user_prior_steepness must be a finite number > 0 (1: the weight falls as "
                             f"fade / (fade + n)), got {shown(steepness)}")
    return float(steepness)


def prior_window(window: Any) -> tuple[int, int]:
    if (not isinstance(window, tuple | list | np.ndarray) or np.ndim(window) != 1 or len(window) != 2
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in window)
            or not 0 <= window[0] <= SIGNUP_POSITIONS or not 1 <= window[1] <= SIGNUP_POSITIONS):
        raise InferenceError(f"new_user_prior_window must be two whole numbers (before 0..{SIGNUP_POSITIONS}, after "
                             f"1..{SIGNUP_POSITIONS}: the prior counts {SIGNUP_POSITIONS} positions), e.g. (2, 10), "
                             f"got {shown(window)}")
    return int(window[0]), int(window[1])
