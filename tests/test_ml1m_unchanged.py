"""ML-1M stays exact: the arrays, evaluation inputs and metadata content that the real ML-1M gives are pinned by
digests recorded from the code before the data model and readers existed (commit dbf8fae, data_processor.py sha256
dcf94900...). Any change to parsing, the split, windows, hold-outs or metadata.json that alters one byte fails here.

Each value is the first 16 hex digits of a sha256: an array's over its name, dtype, shape and bytes; a scalar's over
json.dumps({name: value}); the metadata's over json.dumps(build_metadata(data), sort_keys=True). The recorded names
are those of the ML-1M-only dataclass the digests were taken from; `RECORDED_AS` says where each value lives now
(the features declared per dataset). metadata.json has gained one key since, "schema" (the feature declarations):
the digest covers everything else, and test_metadata_schema_declares_ml1m checks that key; its format 3 keeps the
histories as arrays, which as_format_2 puts back where format 2 held them before hashing.
"""

import hashlib
import json
from dataclasses import fields

import numpy as np
import pytest

from data_processor import AGE_GROUPS, GENDERS, GENRES, build_metadata, decode_array, eval_inputs, load_dataset
from model_config import ML1M_ITEM_FEATURES, ML1M_USER_FEATURES

SEQ_LENGTH = 50
RECORDED = {
    "default": {
    "num_items": "5be18acba4c74ef2",
    "num_users": "14c40d2e906d0625",
    "num_genres": "b0a4555747864505",
    "num_years": "1001a2bbce9b775c",
    "num_genders": "2d020ab5f8887357",
    "num_ages": "c4df7f0e398f0246",
    "num_occupations": "8c748d41a23f4041",
    "min_year": "60fcc8eed46f3cdb",
    "seq_length": "4a994e92f57d6d5f",
    "window_stride": "28521c11ccec4181",
    "item_movie_ids": "76b9bcf1d3bae8d5",
    "item_genres": "8a2c62cdff1a90d8",
    "item_years": "b2ab17d611e885ec",
    "user_ids": "c87c89b909e84d13",
    "user_gender": "d1dfa5d47f7fb04c",
    "user_age": "289a7901657dbeb8",
    "user_occupation": "a380f5c74b4aef60",
    "seq_offsets": "568a4c523c322a24",
    "seq_items": "3f479c109a595745",
    "seq_ratings": "a502af6653efb828",
    "seq_days": "edec30659d330ed0",
    "seq_timestamps": "d2c1f0d68662da0f",
    "user_genre_profile": "0788d9e36b54e226",
    "window_items": "db505682a8b7d29f",
    "window_ratings": "d3d8bec435887d42",
    "window_days": "31a6bdef07b26c2a",
    "window_users": "e50f3da4040ffe2b",
    "movie_ids": "915eff84f7872acb",
    "movie_titles": "298676eb0be891f9",
    "movie_genres": "64e0561954b3979b",
    "movie_years": "b96b7d9de40bf310",
    "source_md5": "7f6762ca201fe82a",
    "holdout": "c5fa214ecbad0903",
    "eval_val.users": "929d7892d32df68b",
    "eval_val.items": "307ebcece98970f2",
    "eval_val.days": "9a8f665758d08b1d",
    "eval_val.targets": "17808497426e18c8",
    "eval_val.target_ratings": "f6f86f48f6343d39",
    "eval_val.seen_offsets": "14c156d79317b061",
    "eval_val.seen_items": "9edfaea769088975",
    "eval_test.users": "929d7892d32df68b",
    "eval_test.items": "09bf5774957428ab",
    "eval_test.days": "8f40f4ac17dfe2ff",
    "eval_test.targets": "2e516c3e179b17f1",
    "eval_test.target_ratings": "5f9d31ba6167027d",
    "eval_test.seen_offsets": "d833b1386bb12680",
    "eval_test.seen_items": "96ca4b83b2c1f3e7",
    "metadata": "96921a3a4d19aa90",
    },
    "holdout_users,holdout_items": {
    "num_items": "f8617e7de40878a0",
    "num_users": "0c5766170816731a",
    "num_genres": "b0a4555747864505",
    "num_years": "1001a2bbce9b775c",
    "num_genders": "2d020ab5f8887357",
    "num_ages": "c4df7f0e398f0246",
    "num_occupations": "8c748d41a23f4041",
    "min_year": "60fcc8eed46f3cdb",
    "seq_length": "4a994e92f57d6d5f",
    "window_stride": "28521c11ccec4181",
    "item_movie_ids": "b7872fd540f4630c",
    "item_genres": "7e3fd67c18c36289",
    "item_years": "bde65e2a92333752",
    "user_ids": "4bd4e1dfb829e3e3",
    "user_gender": "9128e1c98f2fc68a",
    "user_age": "e2d017af33ee0dce",
    "user_occupation": "500473d9f4df6b3a",
    "seq_offsets": "efb9a1df9d0bb7f2",
    "seq_items": "8049c43893bc3063",
    "seq_ratings": "35ed10bb4ff604f9",
    "seq_days": "711d3a298daa3380",
    "seq_timestamps": "732fbf05fd70fd06",
    "user_genre_profile": "023ca544695d4e3b",
    "window_items": "edc37b92570f6c36",
    "window_ratings": "a67423c04790e41d",
    "window_days": "5317ba800ec5bda3",
    "window_users": "63b67458e91ad394",
    "movie_ids": "915eff84f7872acb",
    "movie_titles": "298676eb0be891f9",
    "movie_genres": "64e0561954b3979b",
    "movie_years": "b96b7d9de40bf310",
    "source_md5": "7f6762ca201fe82a",
    "holdout": "b8eed9b59adca4ff",
    "eval_val.users": "8683bebc9d2380af",
    "eval_val.items": "7fb59a6ef619d004",
    "eval_val.days": "a62dc641b9e6a0eb",
    "eval_val.targets": "a56f920d2c7a976c",
    "eval_val.target_ratings": "9674ee094e578b06",
    "eval_val.seen_offsets": "febc836d594aea83",
    "eval_val.seen_items": "f9bafd108d77cfc1",
    "eval_test.users": "8683bebc9d2380af",
    "eval_test.items": "c656d81ab489a00b",
    "eval_test.days": "16168d037944faa5",
    "eval_test.targets": "960ffb7ea3d7c8ec",
    "eval_test.target_ratings": "a480e28ef97a7fd8",
    "eval_test.seen_offsets": "3ae2418a631376ca",
    "eval_test.seen_items": "605b35e16cb13a0a",
    "metadata": "c4b0c443b7f1b292",
    },
}
SETTINGS = {"default": {}, "holdout_users,holdout_items": {"holdout_users": True, "holdout_items": True}}


def array_digest(name: str, array: np.ndarray) -> str:
    digest = hashlib.sha256(f"{name}|{array.dtype.str}|{array.shape}|".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def value_digest(name: str, value) -> str:
    if isinstance(value, np.ndarray):
        return array_digest(name, value)
    return hashlib.sha256(json.dumps({name: value}, sort_keys=True).encode()).hexdigest()[:16]


RECORDED_AS = {
    "num_genres": lambda d: d.feature("item", "genres")["size"],
    "num_years": lambda d: d.feature("item", "year")["size"],
    "num_genders": lambda d: d.feature("user", "gender")["size"],
    "num_ages": lambda d: d.feature("user", "age")["size"],
    "num_occupations": lambda d: d.feature("user", "occupation")["size"],
    "min_year": lambda d: d.feature("item", "year")["range"][0],
    "item_movie_ids": lambda d: d.item_ids,
    "item_genres": lambda d: d.item_values["genres"],
    "item_years": lambda d: d.item_values["year"],
    "user_gender": lambda d: d.user_values["gender"],
    "user_age": lambda d: d.user_values["age"],
    "user_occupation": lambda d: d.user_values["occupation"],
    "user_genre_profile": lambda d: d.user_preference_profile,
    "movie_ids": lambda d: d.catalog_ids,
    "movie_titles": lambda d: d.catalog_titles,
    "movie_genres": lambda d: d.catalog_values["genres"],
    "movie_years": lambda d: d.catalog_values["year"],
}
OLD_FIELDS = [name for name in RECORDED["default"] if not name.startswith(("eval_", "metadata"))]


def digests(data) -> dict[str, str]:
    """The digest of every field the recorded dataclass had, of both splits' evaluation inputs and of the metadata
    content without its "schema"."""
    found = {name: value_digest(name, RECORDED_AS[name](data) if name in RECORDED_AS else getattr(data, name))
             for name in OLD_FIELDS}
    for split in ("val", "test"):
        inputs = eval_inputs(data, split, SEQ_LENGTH)
        found |= {f"eval_{split}.{field.name}": array_digest(field.name, getattr(inputs, field.name))
                  for field in fields(inputs)}
    metadata = as_format_2(build_metadata(data))
    del metadata["schema"]
    found["metadata"] = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()[:16]
    return found


def as_format_2(metadata: dict) -> dict:
    """metadata.json's content as format 2 held it, when the digests were recorded: each user's history as JSON
    lists in the user (format 3 keeps them as arrays in "histories"; the values are the same)."""
    histories = {name: decode_array(encoded).tolist() for name, encoded in metadata.pop("histories").items()}
    offsets = histories["offsets"]
    for index, user_id in enumerate(metadata["user_id_by_user_index"][1:], start=1):
        metadata["users"][user_id]["history"] = {name: histories[name][offsets[index]:offsets[index + 1]]
                                                 for name in ("items", "days", "ratings")}
    return metadata | {"format_version": 2}


@pytest.fixture(scope="module", params=list(SETTINGS))
def processed(request, real_ml1m_dir):
    """(setting, digests) of one processing of the real ML-1M per setting, without a cache."""
    data = load_dataset(real_ml1m_dir, seq_length=SEQ_LENGTH, strict=True, **SETTINGS[request.param])
    return request.param, digests(data), data


def test_ml1m_output_unchanged(processed):
    setting, found, _ = processed
    recorded = RECORDED[setting]
    changed = [name for name in recorded if found.get(name) != recorded[name]]
    assert not changed, f"{setting}: these outputs differ from the recorded ones: {', '.join(changed)}"


def test_metadata_schema_declares_ml1m(processed):
    """The one key metadata.json gained: ML-1M's features as the model reads them (sizes as ModelConfig's ML-1M
    defaults, vocabularies as data_processor's constants)."""
    _, _, data = processed
    declared = build_metadata(data)["schema"]
    assert declared["name"] == "ml-1m" and declared["preference_feature"] == "genres" and declared["has_ratings"]
    assert [(f["name"], f["kind"], f["size"]) for f in declared["items"]] == [
        (f["name"], f["kind"], f["size"]) for f in ML1M_ITEM_FEATURES]
    assert [(f["name"], f["kind"], f["size"]) for f in declared["users"]] == [
        (f["name"], f["kind"], f["size"]) for f in ML1M_USER_FEATURES]
    assert declared["items"][0]["vocabulary"] == list(GENRES)
    assert declared["items"][1]["range"] == [1919, 2000]
    assert [f["vocabulary"] for f in declared["users"]] == [list(GENDERS), list(AGE_GROUPS), list(range(21))]
