"""trainer.py's configuration: every flag (TrainConfig), the command line and @config files, the defaults per
device, resuming from a checkpoint's settings, and the preflight that refuses bad flags before anything is read.

Kept apart from trainer.py, and free of torch, numpy and pandas, so that `python trainer.py --num_heads 0` is
refused in well under two seconds (the heavy imports come after the preflight; benchmarks/bench_preflight.py).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("item_prediction", "next_item", "rating_prediction", "user_preference")
CONFIGS = Path(__file__).resolve().parent / "configs"
# What `python trainer.py` trains when no @config file is given (see docs/RESULTS.md for the measurements):
# on a CPU the small model with a time-budget lr decay, ending by itself after 90 minutes; on a GPU the best
# three-seed configuration (hidden 256, causal, the crop, the cosine item head, bf16, 12 epochs: test NDCG@10 0.2050
# on the CPU; before the thirteenth session the same with the dot product, 0.19995; until 2026-12-01
# configs/ml1m_tuned.txt for 64 epochs, 0.192).
DEVICE_DEFAULTS = {
    "cpu": [f"@{CONFIGS / 'cpu_causal.txt'}", "--max_minutes", "90"],
    "cuda": [f"@{CONFIGS / 'h256_t50_cos12.txt'}"],
}
ML1M_USERS, ML1M_RATINGS = 6040, 1_000_209  # for the preflight memory estimate


NEW_USER_MAX_EVENTS = 11  # --new_user_prob rows: a user's first 1..11 events (the new-user rows n = 0..10)


class TrainingError(RuntimeError):
    """A problem the user can fix (bad flag combination, incompatible checkpoint, diverged run)."""


class ConfigError(TrainingError):
    """Flags refused before anything is read or written (exit status 2 from the CLI)."""


# ----------------------------------------------------------------------------------------------------
# Configuration


# TrainConfig fields that are enhanced_model.ModelConfig fields of the same name (trainer.build_model_config)
MODEL_FLAGS = ("hidden_size", "num_heads", "num_layers", "seq_length", "dropout", "positional", "use_item_side_info",
               "use_user_tokens", "use_temporal", "item_side_output", "cosine_temperature", "causal",
               "gradient_checkpointing")


@dataclass
class TrainConfig:
    # data
    data_dir: str | None = None
    cache_dir: str | None = None
    metadata_path: str | None = None  # None: metadata.json beside the checkpoints
    window_stride: int | None = None
    holdout_users: bool = False
    holdout_items: bool = False
    # model (the seed's defaults; MODEL_FLAGS, the same defaults as enhanced_model.ModelConfig)
    hidden_size: int = 256
    num_heads: int = 4
    num_layers: int = 4
    seq_length: int = 50
    dropout: float = 0.2
    positional: str = "sinusoidal"
    use_item_side_info: bool = True
    use_user_tokens: bool = True
    use_temporal: bool = True
    item_side_output: bool = False
    cosine_temperature: float = 0.0
    causal: bool = False
    # tasks
    item_prediction_weight: float = 1.0
    next_item_weight: float = 1.0
    rating_prediction_weight: float = 0.3
    user_preference_weight: float = 0.2
    mask_prob: float = 0.2
    user_dropout: float = 0.1
    demographics_dropout: float = 0.05
    next_item_crop: float = 0.0
    new_user_prob: float = 0.0
    loss_row_bucket: int = 256
    # optimisation (the seed's defaults)
    batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 500
    lr_schedule: str = "cosine"
    lr_decay_fraction: float = 0.2
    grad_clip: float = 1.0
    grad_accum_steps: int = 1
    gradient_checkpointing: bool = False
    compile: bool = False
    amp: str = "off"
    max_epochs: int = 100
    patience: int = 15
    eval_every: int = 1
    eval_batch_size: int = 512
    max_minutes: float | None = None
    # bookkeeping
    seed: int = 42
    device: str = "auto"
    deterministic: bool = False
    checkpoint_dir: str = "checkpoints"
    resume: str | None = None
    use_wandb: bool = False
    wandb_project: str = "enhanced-bert4rec"
    wandb_run_name: str | None = None
    progress: bool = True
    task_weights: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.task_weights = {task: getattr(self, f"{task}_weight") for task in TASKS}

    @property
    def next_item_on(self) -> bool:
        """Whether the next-item task is on. It decides the batches' layout (make_batch's mask_last); the objective
        trains the task by its weight and refuses batches that do not agree."""
        return self.next_item_weight > 0

    @property
    def metadata_file(self) -> Path:
        """--metadata_path, or metadata.json beside the checkpoints."""
        return Path(self.metadata_path) if self.metadata_path else Path(self.checkpoint_dir) / "metadata.json"


class FlagFileParser(argparse.ArgumentParser):
    """@config files hold one flag per line, `--hidden_size 256` (a lone value on its own line works too);
    blank lines and lines starting with # are skipped."""

    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        return [] if arg_line.lstrip().startswith("#") else arg_line.split()

    def error(self, message: str) -> None:  # type: ignore[override]
        """A usage error as one line on stderr, exit status 2 (as preflight's ConfigError)."""
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def device_defaults(argv: list[str]) -> list[str]:
    """The flags `python trainer.py` starts from when argv names no @config file: the best measured configuration
    for the device it will run on (DEVICE_DEFAULTS); nothing when a config file is given or a run is resumed
    (the checkpoint holds its settings)."""
    if any(arg.startswith("@") or arg.startswith("--resume") for arg in argv):
        return []
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="auto")
    name = device.parse_known_args(argv)[0].device
    on_gpu = name.startswith("cuda") or (name == "auto" and cuda_available())
    return DEVICE_DEFAULTS["cuda" if on_gpu else "cpu"]


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU. On Linux without the NVIDIA driver it cannot, and torch is not imported to
    find that out."""
    if sys.platform.startswith("linux") and not Path("/proc/driver/nvidia/version").exists():
        return False
    import torch

    return torch.cuda.is_available()


def parse_args(argv: list[str] | None = None, use_device_defaults: bool = False) -> TrainConfig:
    """The command line: every TrainConfig field is a flag, `--help` shows each default (the seed's).

    use_device_defaults (the CLI's main): without an @config file, start from DEVICE_DEFAULTS for the device.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if use_device_defaults:
        argv = device_defaults(argv) + argv
    defaults = TrainConfig()
    parser = FlagFileParser(
        description="Train the enhanced BERT4Rec on MovieLens 1M (multi-task, full-ranking evaluation). Without an "
                    "@config file, `python trainer.py` starts from the best measured configuration for its device: "
                    f"{' '.join(DEVICE_DEFAULTS['cpu'])} on a CPU, {' '.join(DEVICE_DEFAULTS['cuda'])} on a GPU "
                    "(later flags override them). The defaults listed below are the seed's "
                    "(@configs/seed.txt).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        fromfile_prefix_chars="@",  # python trainer.py @configs/ml1m_tuned.txt
    )

    group = parser

    def add(name: str, help_text: str, **kwargs) -> None:
        group.add_argument(f"--{name}", default=getattr(defaults, name), help=help_text, **kwargs)

    def switch(name: str, help_text: str) -> None:
        group.add_argument(f"--{name}", default=getattr(defaults, name), help=help_text,
                           action=argparse.BooleanOptionalAction)

    group = parser.add_argument_group("data")
    add("data_dir", "existing ml-1m folder or ml-1m.zip; omitted: download into ./ml-1m")
    add("cache_dir", "where processed arrays are cached (None: no cache, ML-1M is processed in a few seconds)")
    add("metadata_path", "where the metadata.json that inference.py needs is written (None: "
        "<checkpoint_dir>/metadata.json, where inference.py looks for it)")
    add("window_stride", "stride of the training sliding windows (None: seq_length // 2)", type=int)
    switch("holdout_users", "leave the cold-start protocol's new users (UserID %% 10 == 0) out of training, counts, "
           "baselines and model selection (EVALUATION.md; benchmarks/cold_start.py)")
    switch("holdout_items", "leave the cold-start protocol's new movies (MovieID %% 20 == 0) out of every training "
           "sequence and count")
    group = parser.add_argument_group("model")
    add("hidden_size", "transformer hidden dimension", type=int)
    add("num_heads", "attention heads", type=int)
    add("num_layers", "transformer layers", type=int)
    add("seq_length", "model positions T: training windows of T events; a scored history is its newest T-1 "
        "events and [MASK]", type=int)
    add("dropout", "dropout probability", type=float)
    add("positional", "positional encoding", choices=["sinusoidal", "learned"])
    switch("use_item_side_info", "genre and release-year embeddings of the movies")
    switch("use_user_tokens", "user identity/demographic tokens and the cross-attention over them")
    switch("use_temporal", "day-of-year embeddings")
    switch("item_side_output", "score items against their ID embedding plus their genre/year embedding (the input's "
           "item representation) instead of the ID alone (needs --use_item_side_info)")
    add("cosine_temperature", "0: the item head scores by dot product; > 0: by the cosine of the output vector "
        "and the item embedding divided by this temperature (HSTU uses 0.05)", type=float)
    switch("causal", "causal attention (each position reads older ones only) and SASRec-style training: every "
           "position predicts the next item instead of cloze masks (needs --next_item_weight > 0)")
    group = parser.add_argument_group("multi-task weights (0 switches a task off: no parameters, no compute)")
    add("item_prediction_weight", "masked-item (BERT cloze) loss", type=float)
    add("next_item_weight", "next-item loss (last position masked, as at inference)", type=float)
    add("rating_prediction_weight", "1-5 rating regression loss", type=float)
    add("user_preference_weight", "user genre-preference KL loss", type=float)
    add("mask_prob", "share of positions masked for the masked-item task (not used with --causal)", type=float)
    add("next_item_crop", "share of training windows cut at a random point before their newest event, so the "
        "next-item targets change between epochs (0: every window keeps its fixed newest event)", type=float)
    add("new_user_prob", f"share of training rows replaced by their user's first 1..{NEW_USER_MAX_EVENTS} events "
        "with the user id hidden: a new user's first ratings, which no sliding window looks like (cold start)",
        type=float)
    add("loss_row_bucket", "pad each step's item-loss rows to a multiple of this many (padding rows carry no loss), so "
        "the logits come in a few sizes and the allocator reuses their memory (their count varies with window lengths "
        "and --next_item_crop; 0: no padding)", type=int)
    add("user_dropout", "share of training rows whose user id is hidden (teaches the cold-start path)",
        type=float)
    add("demographics_dropout", "share of training rows whose gender/age/occupation are hidden (teaches the "
        "path of a new user who gives a history but no demographics)", type=float)
    group = parser.add_argument_group("optimisation")
    add("batch_size", "training batch size (per process)", type=int)
    add("learning_rate", "peak learning rate (AdamW)", type=float)
    add("weight_decay", "AdamW weight decay (not on biases, norms, embeddings)", type=float)
    add("warmup_steps", "linear warmup steps (optimizer steps)", type=int)
    add("lr_schedule", "decay after warmup (wsd: hold the peak, then decay linearly over --lr_decay_fraction)",
        choices=["cosine", "linear", "constant", "wsd"])
    add("lr_decay_fraction", "--lr_schedule wsd: the share of the run (steps or --max_minutes) spent decaying",
        type=float)
    add("grad_clip", "clip gradient norm (0: off)", type=float)
    add("grad_accum_steps", "micro-batches per optimizer step", type=int)
    switch("gradient_checkpointing", "recompute encoder activations in backward to save memory")
    switch("compile", "torch.compile the encoder layers (inductor; the first steps are slow while it compiles)")
    add("amp", "mixed precision: bf16 (GPU, or CPU) or fp16 (GPU only)", choices=["off", "bf16", "fp16"])
    add("max_epochs", "maximum training epochs", type=int)
    add("patience", "early stopping: evaluations without validation NDCG@10 improvement", type=int)
    add("eval_every", "validate every N epochs", type=int)
    add("eval_batch_size", "users per batch in full-ranking evaluation", type=int)
    add("max_minutes", "stop cleanly after this many minutes of training, then evaluate and save", type=float)
    group = parser.add_argument_group("run")
    add("seed", "random seed", type=int)
    add("device", "auto (cuda if present), cpu, cuda, cuda:N")
    switch("deterministic", "deterministic algorithms (bit-exact resume on CPU)")
    add("checkpoint_dir", "where best_model.pt, last.pt and results.json are written")
    add("resume", "continue from this checkpoint (usually <checkpoint_dir>/last.pt)")
    switch("use_wandb", "log to Weights & Biases (WANDB_MODE=offline works without network)")
    add("wandb_project", "wandb project")
    add("wandb_run_name", "wandb run name")
    switch("progress", "tqdm progress bars")
    values = vars(parser.parse_args(argv))
    if values["resume"]:
        not_given = object()  # not a string, so argparse leaves it as it is
        parser.set_defaults(**dict.fromkeys(values, not_given))
        explicit = {name for name, value in vars(parser.parse_args(argv)).items() if value is not not_given}
        values = resumed_values(values, explicit)
    return TrainConfig(**values)


# What a resumed run may set anew when given; everything not given comes from the checkpoint (the data itself is
# checked by its fingerprint, so a moved copy of the same files is fine).
RESUME_MAY_CHANGE = {"max_epochs", "max_minutes", "patience", "eval_every", "eval_batch_size", "device",
                     "progress", "use_wandb", "wandb_project", "wandb_run_name", "compile", "gradient_checkpointing",
                     "deterministic", "checkpoint_dir", "metadata_path", "data_dir", "cache_dir"}


def resumed_values(values: dict, explicit: set[str]) -> dict:
    """--resume path/last.pt alone continues the run as it was: the model, task, data and optimisation settings
    come from the checkpoint. A flag given explicitly must agree with it, or the run is refused naming each
    difference, except the settings in RESUME_MAY_CHANGE (budget, device, folders, logging). Without
    --checkpoint_dir the run goes on in the folder of the checkpoint it resumes; the time budget goes on where it
    stopped (the checkpoint records the budget clock)."""
    from enhanced_model import CheckpointFileError, read_checkpoint  # torch: imported only to resume

    try:
        saved = read_checkpoint(values["resume"]).get("train_config", {})
    except CheckpointFileError as error:
        raise ConfigError(f"--resume: {error}") from None
    differences = []
    for name in values:
        if name == "resume" or name not in saved:
            continue
        if name not in explicit:
            values[name] = saved[name]
        elif name not in RESUME_MAY_CHANGE and values[name] != saved[name]:
            differences.append(f"--{name} {values[name]} (the checkpoint's: {saved[name]})")
    if differences:
        raise ConfigError(f"--resume {values['resume']} continues a run with other settings: {'; '.join(differences)}; "
                          "drop these flags to continue it as it was")
    if "checkpoint_dir" not in explicit:  # the run goes on writing where its checkpoint is
        values["checkpoint_dir"] = str(Path(values["resume"]).parent)
    return values


def validate_config(config: TrainConfig) -> None:
    """Preflight: refuse, before any data is read or model built, flags that cannot give a run (ConfigError)."""
    checks = [  # lazy, so that a check can rely on the ones before it (no division by --num_heads 0)
        (lambda: config.batch_size > 0, "--batch_size must be positive"),
        (lambda: config.learning_rate > 0, "--learning_rate must be positive"),
        (lambda: config.max_epochs > 0, "--max_epochs must be positive"),
        (lambda: config.grad_accum_steps > 0, "--grad_accum_steps must be positive"),
        (lambda: config.hidden_size > 0, "--hidden_size must be positive"),
        (lambda: config.num_heads > 0, "--num_heads must be positive"),
        (lambda: config.num_layers > 0, "--num_layers must be positive"),
        (lambda: config.hidden_size % config.num_heads == 0, "--hidden_size must be divisible by --num_heads"),
        (lambda: config.seq_length >= 2, "--seq_length must be at least 2"),
        (lambda: config.window_stride is None or 1 <= config.window_stride <= config.seq_length,
         "--window_stride must be in 1..--seq_length"),
        (lambda: 0 <= config.dropout < 1, "--dropout must be in [0, 1)"),
        (lambda: config.cosine_temperature >= 0, "--cosine_temperature must be >= 0 (0: dot product)"),
        (lambda: 0 < config.mask_prob < 1, "--mask_prob must be in (0, 1)"),
        (lambda: 0 <= config.user_dropout <= 1, "--user_dropout must be in [0, 1]"),
        (lambda: 0 <= config.next_item_crop <= 1, "--next_item_crop must be in [0, 1]"),
        (lambda: config.loss_row_bucket >= 0, "--loss_row_bucket must be >= 0 (0: no padding)"),
        (lambda: 0 <= config.new_user_prob <= 1, "--new_user_prob must be in [0, 1]"),
        (lambda: 0 <= config.demographics_dropout <= 1, "--demographics_dropout must be in [0, 1]"),
        (lambda: all(w >= 0 for w in config.task_weights.values()), "task weights must be >= 0"),
        (lambda: config.item_prediction_weight > 0 or config.next_item_weight > 0,
         "at least one of --item_prediction_weight and --next_item_weight must be > 0"),
        (lambda: not config.causal or config.next_item_on,
         "--causal (the CPU default) needs --next_item_weight > 0: the next-item task trains the [MASK] position that "
         "scores a history without events (a new user's first request); or pass --no-causal"),
        (lambda: not config.item_side_output or config.use_item_side_info,
         "--item_side_output scores movies by their genres and year: it needs --use_item_side_info (or drop it)"),
        (lambda: config.warmup_steps >= 0, "--warmup_steps must be >= 0"),
        (lambda: 0 < config.lr_decay_fraction <= 1, "--lr_decay_fraction must be in (0, 1]"),
        (lambda: config.weight_decay >= 0, "--weight_decay must be >= 0"),
        (lambda: config.grad_clip >= 0, "--grad_clip must be >= 0 (0: off)"),
        (lambda: config.patience > 0, "--patience must be positive"),
        (lambda: config.eval_every > 0, "--eval_every must be positive"),
        (lambda: config.eval_batch_size > 0, "--eval_batch_size must be positive"),
        (lambda: config.max_minutes is None or config.max_minutes > 0, "--max_minutes must be positive"),
    ]
    for ok, message in checks:
        if not ok():
            raise ConfigError(message)
    _check_device(config)
    _check_memory(config)
    for flag, folder in (("--checkpoint_dir", Path(config.checkpoint_dir)),
                         ("--metadata_path", config.metadata_file.parent)):
        _check_writable(flag, folder)


def _check_device(config: TrainConfig) -> None:
    """--device names a device this machine has, and --amp fp16 has a GPU to run on."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", config.device):
        raise ConfigError(f"--device {config.device!r} is not a device: use auto, cpu, cuda or cuda:N")
    on_gpu = config.device.startswith("cuda") or (config.device == "auto" and cuda_available())
    if config.device.startswith("cuda") and not cuda_available():
        raise ConfigError(f"--device {config.device} asked for, but no CUDA GPU is available: use --device cpu")
    if config.amp == "fp16" and not on_gpu:
        raise ConfigError("--amp fp16 needs a CUDA GPU: use --amp bf16 or --amp off on the CPU")


def _check_memory(config: TrainConfig) -> None:
    """Refuse a configuration whose window arrays plus one step's attention scores would not fit in memory."""
    stride = config.window_stride or max(1, config.seq_length // 2)
    windows = ML1M_USERS + ML1M_RATINGS // stride  # an upper bound of the sliding windows
    window_bytes = windows * config.seq_length * 8 * 4  # items, days, ratings, users as int64
    attention_bytes = (config.batch_size * config.num_heads * config.seq_length ** 2 * 4 * config.num_layers
                       * 3)  # scores, softmax and dropout kept for backward, per layer
    needed, available = window_bytes + attention_bytes, available_memory()
    if available is not None and needed > 0.8 * available:
        raise ConfigError(f"--seq_length {config.seq_length} with --batch_size {config.batch_size} needs about "
                          f"{needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB available: "
                          "lower --seq_length or --batch_size")


def available_memory() -> int | None:
    """Bytes of memory available now (None where the system does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_writable(flag: str, folder: Path) -> None:
    """The folder, or the nearest existing folder above it that would hold it, accepts new files."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag}: {existing} is a file, not a folder: pass another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write into {existing} (permission denied): pass a writable folder")




def preflight(argv: list[str]) -> None:
    """The command line's checks, run before trainer.py imports torch: a refused flag exits with status 2 and one
    line on stderr; anything else returns (trainer.main parses again)."""
    try:
        validate_config(parse_args(argv, use_device_defaults=True))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
