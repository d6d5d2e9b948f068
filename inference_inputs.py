"""What a caller may pass the engine: the errors a caller can cause, and the checks that raise them.

Every check names the argument and what it accepts, so that the CLI can print the message as its one line on
stderr (exit status 1) and an API caller sees which argument to fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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
# Arguments: bools are refused where a number is meant (True would silently read as 1)


def as_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InferenceError(f"{name} must be an integer, got {value!r}")
    return int(value)


def as_bool(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InferenceError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def positive_int(value: Any, name: str) -> int:
    value = as_int(value, name)
    if value <= 0:
        raise InferenceError(f"{name} must be positive, got {value}")
    return value


def as_id_array(values: Sequence[int], name: str) -> np.ndarray:
    """MovieIDs or timestamps as int64; a string is refused rather than read as its characters."""
    if isinstance(values, (str, bytes)):
        raise InferenceError(f"{name} must be a list of integers, got {values!r}")
    bad = [value for value in values if isinstance(value, bool) or not isinstance(value, (int, np.integer))]
    if bad:
        raise InferenceError(f"{name} must hold integers only, got {bad[0]!r}")
    return np.asarray(values, dtype=np.int64).reshape(-1)


def batch_rows(values: Any, name: str) -> Sequence[Any]:
    """A batch argument: a non-empty list, tuple or array (one entry per user)."""
    if not isinstance(values, (list, tuple, np.ndarray)):
        raise InferenceError(f"{name} must be a list (one entry per user), got {type(values).__name__} {values!r}")
    if not len(values):
        raise InferenceError(f"{name} is empty: pass at least one user")
    return values


def demographic_fields(row: Mapping[str, Any] | None, index: int) -> dict[str, Any]:
    """One row of a batch's demographics as keyword arguments (gender, age, occupation)."""
    if row is None:
        return {}
    if not isinstance(row, Mapping) or set(row) - {"gender", "age", "occupation"}:
        raise InferenceError(f"demographics[{index}] must be None or a dict of gender, age, occupation; got {row!r}")
    return dict(row)


def rating_threshold(min_predicted_rating: Any, has_rating_head: bool) -> float | None:
    """min_predicted_rating as a float in 1..5, or None; it needs a checkpoint with a rating head."""
    if min_predicted_rating is None:
        return None
    if not has_rating_head:
        raise InferenceError("min_predicted_rating needs a checkpoint with a rating head (trained with "
                             "--rating_prediction_weight > 0)")
    if isinstance(min_predicted_rating, bool) or not isinstance(min_predicted_rating, (int, float)) \
            or not 1.0 <= min_predicted_rating <= 5.0:
        raise InferenceError(f"min_predicted_rating must be a number in 1..5, got {min_predicted_rating!r}")
    return float(min_predicted_rating)


# ----------------------------------------------------------------------------------------------------------
# The sign-up prior's settings (signup_prior.py says what each one does)


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def prior_weight(weight: Any) -> float:
    if not _is_number(weight) or not 0 <= weight < math.inf:
        raise InferenceError(f"new_user_prior_weight must be a finite number >= 0 (0: no prior), got {weight!r}")
    return float(weight)


def prior_fade(fade: Any) -> float:
    if not _is_number(fade) or not fade > 0:
        raise InferenceError(f"new_user_prior_fade must be a number > 0 (math.inf: no fading), got {fade!r}")
    return float(fade)


def prior_steepness(steepness: Any) -> float:
    if not _is_number(steepness) or not 0 < steepness < math.inf:
        raise InferenceError(f"new_user_prior_steepness must be a finite number > 0 (1: the weight falls as "
                             f"fade / (fade + n)), got {steepness!r}")
    return float(steepness)


def prior_window(window: Any) -> tuple[int, int]:
    if (not isinstance(window, tuple | list) or len(window) != 2
            or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in window)
            or window[0] < 0 or window[1] < 1):
        raise InferenceError("new_user_prior_window must be two whole numbers (before >= 0, after >= 1), "
                             f"e.g. (2, 10), got {window!r}")
    return int(window[0]), int(window[1])


def day_of_year_setting(day: Any) -> int | None:
    """The engine's default_day_of_year: None (today's, at each call) or a day 1..366."""
    if day is not None and not 1 <= as_int(day, "default_day_of_year") <= 366:
        raise InferenceError(f"default_day_of_year must be in 1..366, got {day}")
    return day
