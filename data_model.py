"""The one data model every dataset is read into: interactions, an item table and a user table whose columns are
named features of declared kinds.

A reader (readers.py) turns a dataset's files into `RawTables`; everything after it (the split, windows, hold-outs,
statistics, metadata.json, the id maps) can then be written once, against these tables and their `Feature`s,
never against one dataset's constants. The declarations are plain data: `schema(tables)` is JSON, the same JSON
a user writes as schema.json for the generic format (readers.read_generic).

Feature kinds and how each becomes model input (index 0 is always padding / nothing):
- "categorical": one value per row (gender, occupation). Index = position in the vocabulary + 1; 0 = unknown or
  missing.
- "multi": a set of values per row, kept as one text field joined by `separator` ("Comedy|Drama"); a multi-hot
  row over the vocabulary. An empty field is the empty set.
- "bucketed": a number per row (a release year, an exact age). `edges` are the inner bucket boundaries, as in
  np.digitize: index = 2 + the number of edges <= value; 1 = missing; 0 = padding. Declared edges are kept; without
  them the buckets are `width` wide from the smallest value in the table (width 1 over years: one bucket a year).
- "display": text for people (a title, a URL), carried through but never encoded.
A vocabulary left undeclared is the sorted distinct values of the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

FEATURE_KINDS = ("categorical", "multi", "bucketed", "display")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")  # then "rating" when the dataset has ratings


@dataclass(frozen=True)
class Feature:
    """One column of the item or user table and how to encode it (kinds in the module docstring)."""

    name: str
    kind: str
    vocabulary: list[Any] | None = None  # categorical, multi: values in index order; None = from the table
    separator: str = "|"  # multi: between the values of one field
    edges: list[float] | None = None  # bucketed: inner boundaries; None = `width`-wide buckets from the minimum
    width: float = 1

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(
                f"feature {self.name!r}: kind must be one of {', '.join(FEATURE_KINDS)}, got {self.kind!r}"
            )
        if self.kind == "multi" and not (isinstance(self.separator, str) and self.separator):
            raise ValueError(f"feature {self.name!r}: a multi feature needs a non-empty separator")
        if self.edges is not None and not (
            all(map(_is_number, self.edges)) and list(self.edges) == sorted(set(self.edges))
        ):
            raise ValueError(f"feature {self.name!r}: edges must be strictly increasing numbers")
        if not (_is_number(self.width) and self.width > 0):
            raise ValueError(f"feature {self.name!r}: width must be a positive number")
        if self.vocabulary is not None and not (
            isinstance(self.vocabulary, list | tuple)
            and all(isinstance(value, str | int) and not isinstance(value, bool) for value in self.vocabulary)
            and len(set(self.vocabulary)) == len(self.vocabulary)
        ):
            raise ValueError(f"feature {self.name!r}: the vocabulary must list distinct texts or integers")

    def to_json(self) -> dict[str, Any]:
        """The declaration as JSON: the kind and only the settings that kind reads."""
        spec: dict[str, Any] = {"kind": self.kind}
        if self.kind in ("categorical", "multi") and self.vocabulary is not None:
            spec["vocabulary"] = list(self.vocabulary)
        if self.kind == "multi":
            spec["separator"] = self.separator
        if self.kind == "bucketed":
            spec |= {"edges": list(self.edges)} if self.edges is not None else {"width": self.width}
        return spec


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # not NaN


def feature_from_json(name: str, spec: str | dict[str, Any]) -> Feature:
    """A Feature from its schema.json entry: a kind ("categorical") or an object {"kind": ..., settings}.
    ValueError names the feature when the entry is malformed."""
    if isinstance(spec, str):
        spec = {"kind": spec}
    if not isinstance(spec, dict) or "kind" not in spec:
        raise ValueError(f"feature {name!r}: expected a kind or an object with a \"kind\", got {spec!r}")
    unknown = sorted(set(spec) - {"kind", "vocabulary", "separator", "edges", "width"})
    if unknown:
        raise ValueError(f"feature {name!r}: unknown setting {unknown[0]!r}")
    try:
        return Feature(name=name, **spec)
    except TypeError as error:  # e.g. edges that are not numbers
        raise ValueError(f"feature {name!r}: {error}") from None


@dataclass
class RawTables:
    """A dataset as read from its files, before any split or encoding.

    interactions: user_id, item_id, timestamp (int64 Unix seconds) and, when the dataset has them, rating; in file
        order (the stable time sort keeps it for ties).
    items: item_id and one column per item feature, one row per item, sorted by item_id (items never interacted
        with included, for cold start). users: the same for users (only user_id when the dataset has no user file).
    Ids are int64 when every id is an integer, text otherwise. Column dtypes by kind: categorical int64 or text,
    multi text (values joined by the feature's separator), bucketed Int64 or float64 (missing = NA), display text.
    source_md5: md5 of each source file read, by file name: the fingerprint of the input.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    item_features: list[Feature] = field(default_factory=list)
    user_features: list[Feature] = field(default_factory=list)
    source_md5: dict[str, str] = field(default_factory=dict)

    @property
    def has_ratings(self) -> bool:
        return "rating" in self.interactions.columns


def schema(tables: RawTables) -> dict[str, Any]:
    """The declarations of `tables` as JSON (what the generic format's schema.json holds)."""
    return {
        "name": tables.name,
        "items": {feature.name: feature.to_json() for feature in tables.item_features},
        "users": {feature.name: feature.to_json() for feature in tables.user_features},
    }


# ----------------------------------------------------------------------------------------------------------
# From declared features to model inputs


def resolved(feature: Feature, column: pd.Series) -> Feature:
    """The feature with what it left undeclared (vocabulary, edges) taken from its column."""
    if feature.kind == "categorical" and feature.vocabulary is None:
        present = column[column.notna() & (column.astype(str) != "")]
        return replace(feature, vocabulary=sorted(present.unique().tolist()))
    if feature.kind == "multi" and feature.vocabulary is None:
        values = column.str.split(feature.separator, regex=False).explode()
        return replace(feature, vocabulary=sorted(set(values[values != ""].tolist())))
    if feature.kind == "bucketed" and feature.edges is None:
        known = pd.to_numeric(column).dropna()
        if known.empty:
            return replace(feature, edges=[])
        low, high = known.min().item(), known.max().item()
        count = int((high - low) // feature.width)  # buckets after the first: [low, low + width) is bucket 0
        return replace(feature, edges=[low + feature.width * step for step in range(1, count + 1)])
    return feature


def vocabulary_size(feature: Feature) -> int:
    """Rows of the feature's embedding table, padding and unknown included (multi: the multi-hot width)."""
    if feature.kind == "categorical":
        return len(feature.vocabulary) + 1
    if feature.kind == "multi":
        return len(feature.vocabulary)
    if feature.kind == "bucketed":
        return len(feature.edges) + 3
    raise ValueError(f"feature {feature.name!r}: display features are not encoded")


def encode(feature: Feature, column: pd.Series) -> np.ndarray:
    """The column as model input: categorical/bucketed int64 indices, multi a float32 multi-hot (rows, vocabulary).
    The feature must be resolved (vocabulary/edges known)."""
    if feature.kind == "categorical":
        index = pd.Index(feature.vocabulary).get_indexer(column)
        return (index + 1).astype(np.int64)  # -1 (not in the vocabulary) -> 0
    if feature.kind == "multi":
        hot = column.str.get_dummies(sep=feature.separator).reindex(columns=feature.vocabulary, fill_value=0)
        return hot.to_numpy(np.float32)
    if feature.kind == "bucketed":
        values = pd.to_numeric(column).to_numpy(np.float64, na_value=np.nan)
        return np.where(np.isnan(values), 1, bucket_index(feature.edges, values)).astype(np.int64)
    raise ValueError(f"feature {feature.name!r}: display features are not encoded")


def bucket_index(edges: list[float], values: np.ndarray | float) -> np.ndarray:
    """A bucketed feature's index of known numbers: 2 + the number of edges <= value (np.digitize's buckets)."""
    return 2 + np.searchsorted(np.asarray(edges, np.float64), values, side="right")


# ----------------------------------------------------------------------------------------------------------
# Building table columns from arrays (for readers of files that store a feature otherwise)


def multi_text(flags: np.ndarray, vocabulary: list[str] | tuple[str, ...], separator: str = "|") -> np.ndarray:
    """A multi feature's text from a multi-hot (rows, vocabulary): each row's flagged values joined by `separator`,
    in vocabulary order (the inverse of encode)."""
    labels = np.array([value + separator for value in vocabulary], dtype=object)
    texts = (flags != 0).astype(np.int64) @ labels if len(flags) else []  # 1 * "Drama|" + 0 * "War|" + ...
    return np.array([text[: -len(separator)] for text in texts], dtype=object)


def optional_integers(values: np.ndarray) -> pd.Series:
    """Integers where a negative value means missing (a title without a year) as a nullable Int64 column."""
    return pd.Series(values, dtype="Int64").where(values >= 0, pd.NA)
