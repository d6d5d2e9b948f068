"""The sign-up prior: what known users rated at the same point of their history, for scoring new users.

A new user with n ratings gets the training ratings at positions n - before .. n + after - 1 of the known users'
histories (window = (before, after); training parts only), half from users of the same gender and age group, half
from all. Their score is the model's log probability plus w(n) * log of that prior, a product of experts whose
weight w(n) = weight / (1 + (n / fade) ** steepness) halves after `fade` ratings, as the history comes to say more.
From position SIGNUP_POSITIONS on the prior is flat and changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data_processor import training_part

# The engine's defaults, chosen on known users playing new users (UserID % 10 == 5, validation) by
# benchmarks/cold_start.py with the CPU default's models (configs/cpu_small.txt; docs/RESULTS.md#cold-start): the
# prior's weight at n = 0, the number of ratings after which it halves (math.inf: it never fades), how sharply it
# does, and its window (before, after).
NEW_USER_PRIOR_WEIGHT, NEW_USER_PRIOR_FADE, NEW_USER_PRIOR_STEEPNESS = 32.0, 3.0, 4.0
NEW_USER_PRIOR_WINDOW = (0, 1)
SIGNUP_POSITIONS = 40  # history positions counted for the prior; beyond them it is flat
SIGNUP_FLOOR = 1e-6  # probability of a movie nobody rated at that point, so its log stays finite


@dataclass(frozen=True)
class NewUserPrior:
    """The prior's settings, as RecommendationEngine's new_user_prior_* attributes hold them."""

    weight: float = NEW_USER_PRIOR_WEIGHT
    fade: float = NEW_USER_PRIOR_FADE
    steepness: float = NEW_USER_PRIOR_STEEPNESS
    window: tuple[int, int] = NEW_USER_PRIOR_WINDOW


def signup_counts(offsets: np.ndarray, items: np.ndarray, features: np.ndarray,
                  shape: tuple[int, int, int]) -> np.ndarray:
    """Cumulative counts of training ratings by position in the user's history, for the sign-up prior.

    offsets/items: the users' histories (CSR, time order; row u at offsets[u]:offsets[u + 1]); features: (users,
    2) the two grouping features' indices (ML-1M: gender, age); shape: (genders, ages, vocabulary), the sizes of
    those features. Returns int32 counts[p, g, a, item]:
    ratings of item at positions < p of the training parts of users with gender index g and age index a, where
    0 stands for any (counts[p, 0, 0] is everyone), p = 0..SIGNUP_POSITIONS.
    """
    lengths = np.diff(offsets)
    users = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(users)) - offsets[users]
    keep = training_part(offsets) & (position < SIGNUP_POSITIONS)
    users, position, items = users[keep], position[keep], items[keep]
    gender, age = features[users, 0], features[users, 1]
    counts = np.zeros((SIGNUP_POSITIONS + 1, *shape), dtype=np.int32)
    for g, a in ((gender, age), (gender, 0), (0, age), (0, 0)):
        np.add.at(counts, (position + 1, g, a, items), 1)
    return counts.cumsum(axis=0, dtype=np.int32)


def signup_prior(group: np.ndarray, overall: np.ndarray) -> np.ndarray:
    """Per row, half the group's distribution and half everyone's (everyone's alone when the group rated nothing
    there), plus SIGNUP_FLOOR: a probability per column, never 0. Rows of zeros give a flat row."""
    def share(counts: np.ndarray) -> np.ndarray:
        return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)

    has_group = group.sum(axis=1, keepdims=True) > 0
    return np.where(has_group, 0.5 * share(group) + 0.5 * share(overall), share(overall)) + SIGNUP_FLOOR


def signup_window_prior(counts: np.ndarray, n: np.ndarray, gender: np.ndarray, age: np.ndarray,
                        window: tuple[int, int] = NEW_USER_PRIOR_WINDOW) -> np.ndarray:
    """(len(n), vocabulary) sign-up prior of new users with n ratings and these gender / age indices, from
    signup_counts' cumulative counts: positions n - before .. n + after - 1 for window = (before, after)
    (signup_prior)."""
    before, after = window
    low = np.clip(n - before, 0, SIGNUP_POSITIONS)
    high = np.clip(n + after, 0, SIGNUP_POSITIONS)
    group = (counts[high, gender, age] - counts[low, gender, age]).astype(np.float64)
    overall = (counts[high, 0, 0] - counts[low, 0, 0]).astype(np.float64)
    return signup_prior(group, overall)


def faded_weight(weight: float, fade: float, n: np.ndarray | int, steepness: float = 1.0) -> np.ndarray:
    """The prior's weight after n ratings: weight / (1 + (n / fade) ** steepness), half of it at n = fade (steepness
    1: weight * fade / (fade + n)); weight itself when fade is math.inf."""
    n = np.asarray(n, dtype=np.float64)
    return weight * (np.ones_like(n) if math.isinf(fade) else 1.0 / (1.0 + (n / fade) ** steepness))


def signup_log_prior(counts: np.ndarray, n: np.ndarray, gender: np.ndarray, age: np.ndarray,
                     prior: NewUserPrior) -> np.ndarray:
    """(len(n), vocabulary) w(n) * log of the sign-up prior: what is added to new users' log probabilities."""
    weight = faded_weight(prior.weight, prior.fade, n, prior.steepness)
    return weight[:, None] * np.log(signup_window_prior(counts, n, gender, age, prior.window))
