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


@dataclass
class ModelConfig(ModelFlags):
    """Sizes and switches of EnhancedBERT4Rec: the flags above, plus what the data and the tasks decide.
    Defaults: the seed's, sizes of raw MovieLens-1M.

    num_items and num_users count real items / users only (tables get +2 for pad and MASK, +1 for the unknown
    user); num_years, num_genders, num_ages and num_occupations already include their 0 = padding/unknown slot;
    num_genres is the width of the genre multi-hot. A head whose task has weight 0 is not built.
    """

    num_items: int = 3706
    num_users: int = 6040
    num_genres: int = 18
    num_years: int = 84
    num_genders: int = 3
    num_ages: int = 8
    num_occupations: int = 22
    side_dim: int = 32
    use_rating_head: bool = True
    use_preference_head: bool = True

    def __post_init__(self) -> None:
        problem = self.model_flag_problem()
        if problem is None:
            problem = next((f"--{f.name} must be positive, got {getattr(self, f.name)}" for f in fields(self)
                            if type(getattr(self, f.name)) is int and getattr(self, f.name) <= 0), None)
        if problem is not None:
            raise ValueError(re.sub(r"--(?=\w)", "", problem))  # the API names fields, not flags

    @property
    def mask_index(self) -> int:
        return mask_index(self.num_items)

    @property
    def item_vocab_size(self) -> int:
        return self.num_items + 2  # + pad (0) and MASK (num_items + 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of ints, floats, bools and strings (goes into checkpoints and metadata.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict(); missing keys take their defaults, unknown keys are an error."""
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
