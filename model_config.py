"""The model's configuration, declared once: the index conventions every stage shares, the flags that size and
switch the network (each field is also trainer.py's command-line flag, its help text in the field's metadata),
their validation, and where the model may run.

Free of torch, numpy and pandas, so that trainer.py's preflight reads it in milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Index conventions: 0 is padding / unknown everywhere; [MASK] is one past the last item.
PAD_INDEX = 0
# T, the model's positions: a training window holds T events; a scored input is the newest T - 1 events + [MASK]
SEQ_LENGTH = 50
POSITIONAL_ENCODINGS = ("sinusoidal", "learned")
# --dataset NAME -> the reader of its format (readers.READERS' key); here, not in readers.py, so that the trainer's
# preflight checks the name without importing pandas
DATASET_FORMATS = {"ml-100k": "ml-100k", "ml-1m": "ml-1m", "ml-10m": "ml-10m", "ml-20m": "ml-csv", "ml-25m": "ml-csv",
                   "ml-32m": "ml-csv", "ml-latest-small": "ml-csv", "generic": "generic"}
AMP_MODES = ("off", "bf16", "fp16")


def mask_index(num_items: int) -> int:
    """Index of the [MASK] token: one past the last item (the vocabulary is num_items + 2 with padding)."""
    return num_items + 1


def flag(default: Any, help: str, group: str, **argparse_options: Any) -> Any:
    """A dataclass field that is also a command-line flag: its default, its --help text, its section of --help,
    and argparse options where the field's type does not say enough (choices). `resume_may_change=True` marks a
    setting that a resumed run may set anew (budget, device, folders, logging)."""
    return field(default=default, metadata={"help": help, "group": group, **argparse_options})


@dataclass
class ModelFlags:
    """The sizes and switches a user chooses (the seed's defaults); ModelConfig adds what the data decides."""

    hidden_size: int = flag(256, "transformer hidden dimension", "model")
    num_heads: int = flag(4, "attention heads", "model")
    num_layers: int = flag(4, "transformer layers", "model")
    seq_length: int = flag(SEQ_LENGTH, "model positions T: training windows of T events; a scored history is its "
                           "newest T-1 events and [MASK]", "model")
    dropout: float = flag(0.2, "dropout probability", "model")
    positional: str = flag("sinusoidal", "positional encoding", "model", choices=POSITIONAL_ENCODINGS)
    use_item_side_info: bool = flag(True, "genre and release-year embeddings of the movies", "model")
    use_user_tokens: bool = flag(True, "user identity/demographic tokens and the cross-attention over them", "model")
    use_temporal: bool = flag(True, "day-of-year embeddings", "model")
    item_side_output: bool = flag(False, "score items against their ID embedding plus their genre/year embedding "
                                  "(the input's item representation) instead of the ID alone (needs "
                                  "--use_item_side_info)", "model")
    cosine_temperature: float = flag(0.0, "0: the item head scores by dot product; > 0: by the cosine of the output "
                                     "vector and the item embedding divided by this temperature (HSTU uses 0.05)",
                                     "model")
    causal: bool = flag(False, "causal attention (each position reads older ones only) and SASRec-style training: "
                        "every position predicts the next item instead of cloze masks (needs --next_item_weight > 0)",
                        "model")
    gradient_checkpointing: bool = flag(False, "recompute encoder activations in backward to save memory", "model",
                                        resume_may_change=True)

    def model_flag_problem(self) -> str | None:
        """The first rule these flags break, worded for the command line (--flag), or None."""
        rules = (  # lazy and in order, so that a rule can rely on the ones before it (no division by num_heads 0)
            (lambda: self.hidden_size > 0, "--hidden_size must be positive"),
            (lambda: self.num_heads > 0, "--num_heads must be positive"),
            (lambda: self.num_layers > 0, "--num_layers must be positive"),
            (lambda: self.seq_length > 0, "--seq_length must be positive"),
            (lambda: self.hidden_size % self.num_heads == 0, "--hidden_size must be divisible by --num_heads"),
            (lambda: 0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
            (lambda: self.positional in POSITIONAL_ENCODINGS,
             f"--positional must be one of {', '.join(POSITIONAL_ENCODINGS)}, not {self.positional!r}"),
            (lambda: self.cosine_temperature >= 0, "--cosine_temperature must be >= 0 (0: dot product)"),
            (lambda: not self.item_side_output or self.use_item_side_info,
             "--item_side_output scores movies by their genres and year: it needs --use_item_side_info (or drop it)"),
        )
        for ok, message in rules:
            if not ok():
                return message
        return None


MODEL_FLAGS = tuple(f.name for f in fields(ModelFlags))


# The side information of raw MovieLens-1M, the defaults of ModelConfig: {"name", "kind", "size"} per feature, in the
# order the model reads them. size: rows of the feature's embedding table with its 0 = padding/unknown row, or the
# width of a multi feature's multi-hot (data_model.vocabulary_size).
ML1M_ITEM_FEATURES = ({"name": "genres", "kind": "multi", "size": 18}, {"name": "year", "kind": "bucketed", "size": 84})
ML1M_USER_FEATURES = ({"name": "gender", "kind": "categorical", "size": 3},
                      {"name": "age", "kind": "categorical", "size": 8},
                      {"name": "occupation", "kind": "categorical", "size": 22})
ENCODED_KINDS = ("categorical", "multi", "bucketed")
# Arguments of EnhancedBERT4Rec.forward: user features are passed by their names beside them
RESERVED_NAMES = ("item_seq", "day_of_year", "user_idx", "return_attention", "item_embeds", "identity")
# Keys of checkpoints written before features were declared, and where each size now lives
_LEGACY_SIZES = {"num_genres": ("item_features", "genres"), "num_years": ("item_features", "year"),
                 "num_genders": ("user_features", "gender"), "num_ages": ("user_features", "age"),
                 "num_occupations": ("user_features", "occupation")}


def _ml1m_features(side: tuple[dict[str, Any], ...]) -> Any:
    return field(default_factory=lambda: [dict(feature) for feature in side])


def feature_problem(features: Any, side: str) -> str | None:
    """Why a list of feature declarations ({"name", "kind", "size"}) cannot build the model, or None."""
    if not isinstance(features, list):
        return f"{side}_features must be a list of {{name, kind, size}} dicts"
    names = []
    for feature in features:
        if not (isinstance(feature, dict) and set(feature) == {"name", "kind", "size"}):
            return f"{side}_features: each feature is a dict of name, kind and size, got {feature!r}"
        name, kind, size = feature["name"], feature["kind"], feature["size"]
        if not (isinstance(name, str) and name) or name in RESERVED_NAMES or "." in name:
            return (f"{side}_features: {name!r} cannot name a feature (empty, holds a '.', or one of "
                    f"{', '.join(RESERVED_NAMES)}): rename the column")
        if kind not in ENCODED_KINDS:
            return f"{side}_features: {name!r} has kind {kind!r}; the model encodes {', '.join(ENCODED_KINDS)}"
        if not (type(size) is int and size > 0):
            return f"{side}_features: {name!r} needs a positive integer size, got {size!r}"
        names.append(name)
    if len(set(names)) != len(names):
        return f"{side}_features: a name appears twice in {names}"
    return None


@dataclass
class ModelConfig(ModelFlags):
    """Sizes and switches of EnhancedBERT4Rec: the flags above, plus what the data and the tasks decide.
    Defaults: the seed's, sizes of raw MovieLens-1M.

    num_items and num_users count real items / users only (tables get +2 for pad and MASK, +1 for the unknown
    user). item_features and user_features declare the side information ({"name", "kind", "size"}, kinds of
    data_model: categorical, multi, bucketed), one embedding table each; preference_feature names the multi item
    feature whose distribution the preference head predicts (ML-1M: genres). A head whose task has weight 0 is not
    built.
    """

    num_items: int = 3706
    num_users: int = 6040
    item_features: list[dict[str, Any]] = _ml1m_features(ML1M_ITEM_FEATURES)
    user_features: list[dict[str, Any]] = _ml1m_features(ML1M_USER_FEATURES)
    preference_feature: str = "genres"
    side_dim: int = 32
    use_rating_head: bool = True
    use_preference_head: bool = True

    def __post_init__(self) -> None:
        problem = self.model_flag_problem()
        if problem is None:
            problem = next((f"--{f.name} must be positive, got {getattr(self, f.name)}" for f in fields(self)
                            if type(getattr(self, f.name)) is int and getattr(self, f.name) <= 0), None)
        problem = problem or feature_problem(self.item_features, "item") or feature_problem(self.user_features, "user")
        if problem is None and self.use_item_side_info and not self.item_features:
            problem = "use_item_side_info needs at least one item feature: declare one, or switch it off"
        if problem is None and self.use_preference_head and self.preference_size is None:
            problem = (f"preference_feature {self.preference_feature!r} is not a multi item feature: name one, or "
                       "switch the preference head off")
        if problem is not None:
            raise ValueError(re.sub(r"--(?=\w)", "", problem))  # the API names fields, not flags

    @property
    def preference_size(self) -> int | None:
        """Width of the preference head's output: the size of the multi item feature it predicts (None: none)."""
        return next((f["size"] for f in self.item_features
                     if f["name"] == self.preference_feature and f["kind"] == "multi"), None)

    @property
    def mask_index(self) -> int:
        return mask_index(self.num_items)

    @property
    def item_vocab_size(self) -> int:
        return self.num_items + 2  # + pad (0) and MASK (num_items + 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of ints, floats, bools, strings and the feature lists (checkpoints, metadata.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict(); missing keys take their defaults, unknown keys are an error. A checkpoint written
        before features were declared (num_genres ... num_occupations) is read as ML-1M's features at its sizes."""
        values = dict(values)
        legacy = {key: values.pop(key) for key in _LEGACY_SIZES if key in values}
        if legacy:
            declared = {"item_features": [dict(f) for f in ML1M_ITEM_FEATURES],
                        "user_features": [dict(f) for f in ML1M_USER_FEATURES]}
            for key, size in legacy.items():
                side, name = _LEGACY_SIZES[key]
                next(f for f in declared[side] if f["name"] == name)["size"] = size
            values = declared | values
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {sorted(unknown)}: checkpoint from another version?")
        return cls(**values)


def device_problem(name: str, amp: str, has_cuda: bool, cuda_bf16: bool = True) -> str | None:
    """The one check of where a model runs: the device name, that it exists here, and that the mixed precision
    runs on it. Worded for the command line; None when all is well. "auto" is the GPU when there is one."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        return f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N"
    if name.startswith("cuda") and not has_cuda:
        return f"--device {name} asked for, but no CUDA GPU is available: use --device cpu"
    on_gpu = name.startswith("cuda") or (name == "auto" and has_cuda)
    if amp == "fp16" and not on_gpu:
        return "--amp fp16 needs a CUDA GPU: use --amp bf16 or --amp off on the CPU"
    if amp == "bf16" and on_gpu and not cuda_bf16:
        return "--amp bf16 is not supported by this GPU: use --amp fp16"
    return None
