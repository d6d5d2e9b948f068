"""trainer.py's configuration: every flag (TrainConfig), the command line and @config files, the defaults per
device, resuming from a checkpoint's settings, and the preflight that refuses bad flags before anything is read.

Kept apart from trainer.py, and free of torch, numpy and pandas, so that `python trainer.py --num_heads 0` is
refused in well under two seconds (the heavy imports come after the preflight; benchmarks/bench_preflight.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from model_config import AMP_MODES, DATASET_FORMATS, ModelFlags, device_problem, flag

TASKS = ("item_prediction", "next_item", "rating_prediction", "user_preference")
ITEM_LOSSES = ("full", "sampled")  # --item_loss: the full softmax, or the sampled one (trainer.sampled_softmax_nll)
CONFIGS = Path(__file__).resolve().parent / "configs"
# What `python trainer.py` trains when no @config file is given, by what the machine can do (docs/RESULTS.md has
# the measurements): on a GPU the best model (hidden 256, causal, the crop, the cosine item head, bf16, AdamW for 12
# epochs: test NDCG@10 0.2050 over three seeds, 1.5-1.7 training minutes on an H200); on a CPU that multiplies bf16 in
# hardware (AVX-512 BF16 or AMX) the same model with Muon for its hidden matrices, 8 epochs (27% fewer training
# minutes on a 2-core AVX-512-bf16 CPU for the same quality: docs/RESULTS.md#the-best-model-with-muon-8-epochs);
# elsewhere (AVX2 CPUs emulate bf16 about 17x slower than fp32) the small model with the sampled item loss (1,024
# negatives: its step is 1.5x shorter than the full softmax's) and a time-budget lr decay, ending by itself after 45
# minutes; on a bf16 CPU too slow for the best model in the --max_minutes given (device_defaults, below), a model
# between the two: the best model's recipe at hidden 128 with 2 layers, batch 64, dropout 0.1 and the full softmax, in
# bf16 with Muon at lr 1.5e-3 (docs/RESULTS.md#muon-for-the-short-budget-model: ahead of AdamW at equal epochs;
# docs/RESULTS.md#lr-15e-3-for-the-short-budget-model: ahead of lr 1e-3 on validation).
DEVICE_DEFAULTS = {
    "cpu": [f"@{CONFIGS / 'cpu_sampled.txt'}", "--max_minutes", "45"],
    "cpu_bf16": [f"@{CONFIGS / 'best_muon.txt'}"],
    "cpu_bf16_short": [f"@{CONFIGS / 'bf16_small_muon.txt'}"],
    "cuda": [f"@{CONFIGS / 'best.txt'}"],
}
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that multiply bf16 in hardware
# A short --max_minutes on a bf16 CPU: device_defaults times the best model's training step on this CPU
# (trainer.step_seconds, about 5 s) and predicts its ML-1M epochs in the budget: 289 steps each, plus a
# validation pass every 4th epoch that costs about 20 steps' time (5 an epoch). Where its 8 epochs do not fit,
# configs/bf16_small.txt trains instead (docs/RESULTS.md#where-the-best-model-overtakes-the-small-one): with AdamW
# the best model's 4.2, 5 and 6 epochs reach test NDCG@10 0.1849, 0.1921 and 0.1953 (validation 0.1950 to 0.2032),
# its 7, 8 and 10 validation 0.2063, 0.2101 and 0.2111, level with the small model at those epochs' minutes
# (validation 0.2072-0.2106 in 15 to 27.7 minutes) and behind it at 7 and fewer; with Muon its 8 epochs reach
# validation 0.2122-0.2174 (three seeds), ahead of the small model in the same minutes. Muon's shorter runs were not
# measured, so the small model keeps them.
# The step is timed rather than predicted from a matrix-product rate: the best model's step runs at 52% of the
# 1024^2 bf16 rate on an AVX-512-bf16 CPU but at 21% on an AMX one (0.67-0.70 s a step there against 0.79, at 2.7x
# the rate), and that rate itself read anywhere from 469 to 1,165 GFLOP/s on the AMX CPU.
BEST_EPOCH_STEPS = 289 + 5
BEST_MIN_EPOCHS = 8  # configs/best_muon.txt's --max_epochs
ML1M_USERS, ML1M_RATINGS = 6040, 1_000_209  # for the preflight memory estimate


NEW_USER_MAX_EVENTS = 11  # --new_user_prob rows: a user's first 1..11 events (the new-user rows n = 0..10)


class TrainingError(RuntimeError):
    """A problem the user can fix (bad flag combination, incompatible checkpoint, diverged run)."""


class ConfigError(TrainingError):
    """Flags refused before anything is read or written (exit status 2 from the CLI)."""


# ----------------------------------------------------------------------------------------------------
# Configuration


def data_flag(default, help, **options):
    return flag(default, help, "data", **options)


def task_flag(default, help, **options):
    return flag(default, help, "multi-task weights (0 switches a task off: no parameters, no compute)", **options)


def optimisation_flag(default, help, **options):
    return flag(default, help, "optimisation", **options)


def run_flag(default, help, **options):
    return flag(default, help, "run", **options)


@dataclass
class TrainConfig(ModelFlags):
    """Every flag of trainer.py, declared once: the model's (ModelFlags), then data, tasks, optimisation and the
    run. Each field is its own flag; the defaults are the seed's (configs/seed.txt)."""

    data_dir: str | None = data_flag(None, "a dataset folder or zip (ML-1M, another MovieLens release, or the generic "
                                     "format: docs/REFERENCE.md); omitted: download --dataset (ML-1M) into "
                                     "./<name>", resume_may_change=True)
    dataset: str | None = data_flag(None, "the dataset's format by name (ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, "
                                    "ml-32m, ml-latest-small, generic); omitted: told from the files",
                                    choices=tuple(DATASET_FORMATS))
    cache_dir: str | None = data_flag(None, "where processed arrays are cached (None: no cache, ML-1M is processed "
                                      "in a few seconds)", resume_may_change=True)
    metadata_path: str | None = data_flag(None, "where the metadata.json that inference.py needs is written (None: "
                                          "<checkpoint_dir>/metadata.json, where inference.py looks for it)",
                                          resume_may_change=True)
    window_stride: int | None = data_flag(None, "stride of the training sliding windows (None: seq_length // 2)")
    holdout_users: bool = data_flag(False, "leave the cold-start protocol's new users (UserID %% 10 == 0) out of "
                                    "training, counts, baselines and model selection (docs/EVALUATION.md; "
                                    "benchmarks/cold_start.py)")
    holdout_items: bool = data_flag(False, "leave the cold-start protocol's new movies (MovieID %% 20 == 0) out of "
                                    "every training sequence and count")
    item_prediction_weight: float = task_flag(1.0, "masked-item (BERT cloze) loss")
    next_item_weight: float = task_flag(1.0, "next-item loss (last position masked, as at inference)")
    rating_prediction_weight: float = task_flag(0.3, "1-5 rating regression loss")
    user_preference_weight: float = task_flag(0.2, "user genre-preference KL loss")
    mask_prob: float = task_flag(0.2, "share of positions masked for the masked-item task (not used with --causal)")
    user_dropout: float = task_flag(0.1, "share of training rows whose user id is hidden (teaches the cold-start "
                                    "path)")
    demographics_dropout: float = task_flag(0.05, "share of training rows whose gender/age/occupation are hidden "
                                            "(teaches the path of a new user who gives a history but no "
                                            "demographics)")
    next_item_crop: float = task_flag(0.0, "share of training windows cut at a random point before their newest "
                                      "event, so the next-item targets change between epochs (0: every window keeps "
                                      "its fixed newest event)")
    new_user_prob: float = task_flag(0.0, f"share of training rows replaced by their user's first "
                                     f"1..{NEW_USER_MAX_EVENTS} events with the user id hidden: a new user's first "
                                     "ratings, which no sliding window looks like (cold start)")
    loss_row_bucket: int = task_flag(256, "pad each step's item-loss rows to a multiple of this many (padding rows "
                                     "carry no loss), so the logits come in a few sizes and the allocator reuses "
                                     "their memory (their count varies with window lengths and --next_item_crop; 0: "
                                     "no padding)")
    item_loss: str = task_flag("full", "the item losses' softmax: full (every item at every loss row) or sampled "
                               "(each row's target against --num_negatives negatives shared by the step, drawn half "
                               "from the step's targets and half uniformly, logQ-corrected: for large catalogues; "
                               "evaluation always ranks every item)", choices=ITEM_LOSSES)
    num_negatives: int = task_flag(1024, "--item_loss sampled: negatives drawn per step (with replacement), fewer than "
                                   "the catalogue's items")
    label_smoothing: float = task_flag(0.0, "--item_loss full: the share of each item-loss row's target spread evenly "
                                       "over every item, as F.cross_entropy's label_smoothing (0: off)")
    batch_size: int = optimisation_flag(64, "training batch size (per process)")
    learning_rate: float = optimisation_flag(1e-4, "peak learning rate (AdamW)")
    weight_decay: float = optimisation_flag(0.01, "AdamW weight decay (not on biases, norms, embeddings)")
    warmup_steps: int = optimisation_flag(500, "linear warmup steps (optimizer steps)")
    lr_schedule: str = optimisation_flag("cosine", "decay after warmup (wsd: hold the peak, then decay linearly over "
                                         "--lr_decay_fraction; wsd_sqrt: the same decaying as 1 - sqrt of its "
                                         "progress)", choices=["cosine", "linear", "constant", "wsd", "wsd_sqrt"])
    lr_decay_fraction: float = optimisation_flag(0.2, "--lr_schedule wsd and wsd_sqrt: the share of the run (steps or "
                                                 "--max_minutes) spent decaying")
    optimizer: str = optimisation_flag("adamw", "adamw, or muon: Muon for the encoder's, projections' and heads' "
                                       "hidden weight matrices, AdamW for the rest", choices=["adamw", "muon"])
    ema_decay: float = optimisation_flag(0.0, "keep an exponential moving average of the weights, this much of it "
                                         "kept per optimizer step (e.g. 0.998; 0: off): validation, best_model.pt and "
                                         "the test figures use the average, the training goes on from the raw weights")
    grad_clip: float = optimisation_flag(1.0, "clip gradient norm (0: off)")
    grad_accum_steps: int = optimisation_flag(1, "micro-batches per optimizer step")
    compile: bool = optimisation_flag(False, "torch.compile the encoder layers (inductor; the first steps are slow "
                                      "while it compiles)", resume_may_change=True)
    amp: str = optimisation_flag("off", "mixed precision: bf16 (GPU, or CPU) or fp16 (GPU only)", choices=AMP_MODES)
    max_epochs: int = optimisation_flag(100, "maximum training epochs", resume_may_change=True)
    patience: int = optimisation_flag(15, "early stopping: evaluations without validation NDCG@10 improvement",
                                      resume_may_change=True)
    eval_every: int = optimisation_flag(1, "validate every N epochs and after the last (validation leaves the "
                                           "training unchanged)", resume_may_change=True)
    eval_batch_size: int = optimisation_flag(512, "users per batch in full-ranking evaluation",
                                             resume_may_change=True)
    max_minutes: float | None = optimisation_flag(None, "stop cleanly after this many minutes of training, then "
                                                  "evaluate and save", resume_may_change=True)
    seed: int = run_flag(42, "random seed")
    device: str = run_flag("auto", "auto (cuda if present), cpu, cuda, cuda:N", resume_may_change=True)
    deterministic: bool = run_flag(False, "deterministic algorithms (bit-exact resume on CPU)",
                                   resume_may_change=True)
    checkpoint_dir: str = run_flag("checkpoints", "where best_model.pt, last.pt and results.json are written",
                                   resume_may_change=True)
    resume: str | None = run_flag(None, "continue from this checkpoint (usually <checkpoint_dir>/last.pt)")
    overwrite: bool = run_flag(False, "start a new run in a --checkpoint_dir that holds another run, after moving "
                               "its files aside into <checkpoint_dir>/replaced-<time>/ (nothing is deleted)",
                               resume_may_change=True)
    use_wandb: bool = run_flag(False, "log to Weights & Biases (WANDB_MODE=offline works without network)",
                               resume_may_change=True)
    wandb_project: str = run_flag("enhanced-bert4rec", "wandb project", resume_may_change=True)
    wandb_run_name: str | None = run_flag(None, "wandb run name", resume_may_change=True)
    progress: bool = run_flag(True, "tqdm progress bars", resume_may_change=True)
    task_weights: dict[str, float] = field(init=False)
    defaults: str = field(init=False, default="", compare=False)  # what `python trainer.py` chose here, and why

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


def device_defaults(argv: list[str], probe: bool = True) -> tuple[list[str], str]:
    """The flags `python trainer.py` starts from when argv names no @config file, and why: the best measured
    configuration for what the machine it will run on can do (DEVICE_DEFAULTS). Nothing ("", no reason) when a
    config file is given or a run is resumed (the checkpoint holds its settings). probe=False skips timing the
    best model's step on a bf16 CPU given a --max_minutes, and takes the best model (the preflight's check of the
    flags, which must not wait for torch)."""
    if any(arg.startswith("@") or arg.startswith("--resume") for arg in argv):
        return [], ""
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default="auto")
    device.add_argument("--max_minutes", type=float, default=None)
    known = device.parse_known_args(argv)[0]
    name, budget = known.device, known.max_minutes
    if name.startswith("cuda") or (name == "auto" and cuda_available()):
        key, why = "cuda", "a CUDA GPU"
    else:
        bf16_flags = cpu_bf16_flags()
        key = "cpu_bf16" if bf16_flags else "cpu"
        why = (f"a CPU that multiplies bf16 in hardware ({', '.join(bf16_flags)})" if bf16_flags else
               "a CPU without bf16 instructions (no avx512_bf16 or amx_bf16: bf16 would be emulated, about 17x "
               "slower than fp32)")
    flags = DEVICE_DEFAULTS[key]
    if key == "cpu_bf16" and budget is not None and budget > 0 and probe:
        step = best_step_seconds()
        epochs = budget * 60 / (step * BEST_EPOCH_STEPS)
        fits = f"the best model's training step takes {step:.2f} s here, so about {epochs:.1f} of its epochs fit"
        if epochs < BEST_MIN_EPOCHS:
            flags = DEVICE_DEFAULTS["cpu_bf16_short"]  # under the given --max_minutes
            why = (f"{why} too slow for the best model in --max_minutes {budget:g}: {fits}, fewer than "
                   f"{BEST_MIN_EPOCHS}, where this configuration gives more")
        else:
            why = f"{why}: {fits} in --max_minutes {budget:g}"
    shown = " ".join(Path(flag[1:]).relative_to(CONFIGS.parent).as_posix() if flag.startswith("@") else flag
                     for flag in flags)
    return flags, f"{shown}, the best measured configuration for {why}; an @config file or flags override it"


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """Which of BF16_CPU_FLAGS this CPU has, read from /proc/cpuinfo (cpuinfo: its text, for tests); none where the
    system does not say (not Linux), so the small fp32 model is the safe choice there."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    line = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    flags = set(line.group(1).split()) if line else set()
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


def best_step_seconds() -> float:
    """Seconds of one training step of the bf16 CPU's best model (DEVICE_DEFAULTS["cpu_bf16"]) on this CPU
    (trainer.step_seconds; imports torch)."""
    from trainer import step_seconds

    return step_seconds(DEVICE_DEFAULTS["cpu_bf16"])


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU. On Linux without the NVIDIA driver it cannot, and torch is not imported to
    find that out."""
    if sys.platform.startswith("linux") and not Path("/proc/driver/nvidia/version").exists():
        return False
    import torch

    return torch.cuda.is_available()


def add_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per field of config_class, from its declaration (model_config.flag): the default, the help text,
    the section of --help, the type from the annotation (a bool is a --name/--no-name switch)."""
    types = typing.get_type_hints(config_class)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in fields(config_class):
        if not spec.init:
            continue
        options = {key: value for key, value in spec.metadata.items() if key not in ("group", "resume_may_change")}
        value_type = next(t for t in (*typing.get_args(types[spec.name]), types[spec.name]) if t is not type(None))
        if value_type is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = value_type
        group = groups.setdefault(spec.metadata["group"], parser.add_argument_group(spec.metadata["group"]))
        group.add_argument(f"--{spec.name}", default=spec.default, **options)


def parse_args(argv: list[str] | None = None, use_device_defaults: bool = False, probe: bool = True) -> TrainConfig:
    """The command line: every TrainConfig field is a flag, `--help` shows each default (the seed's).

    use_device_defaults (the CLI's main): without an @config file, start from DEVICE_DEFAULTS for the device
    (probe: see device_defaults).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults, why = device_defaults(argv, probe) if use_device_defaults else ([], "")
    argv = defaults + argv
    parser = FlagFileParser(
        description="Train the enhanced BERT4Rec on MovieLens 1M (multi-task, full-ranking evaluation). Without an "
                    "@config file, `python trainer.py` starts from the best measured configuration for its device: "
                    f"{' '.join(DEVICE_DEFAULTS['cpu_bf16'])} on a CPU with bf16 instructions, "
                    f"{' '.join(DEVICE_DEFAULTS['cuda'])} on a GPU, "
                    f"{' '.join(DEVICE_DEFAULTS['cpu'])} on other CPUs, {' '.join(DEVICE_DEFAULTS['cpu_bf16_short'])} "
                    f"on bf16 CPUs whose --max_minutes fits fewer than {BEST_MIN_EPOCHS} of the best model's epochs "
                    "(later flags override them). The defaults listed below are the seed's (@configs/seed.txt).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        fromfile_prefix_chars="@",  # python trainer.py @configs/best.txt
    )
    add_flags(parser, TrainConfig)
    values = vars(parser.parse_args(argv))
    if values["resume"]:
        not_given = object()  # not a string, so argparse leaves it as it is
        parser.set_defaults(**dict.fromkeys(values, not_given))
        explicit = {name for name, value in vars(parser.parse_args(argv)).items() if value is not not_given}
        values = resumed_values(values, explicit)
    config = TrainConfig(**values)
    config.defaults = why
    return config


# What a resumed run may set anew when given (the fields declared with resume_may_change); everything not given
# comes from the checkpoint (the data itself is checked by its fingerprint, so a moved copy of the same files is fine).
RESUME_MAY_CHANGE = frozenset(f.name for f in fields(TrainConfig) if f.metadata.get("resume_may_change"))


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
        (lambda: config.model_flag_problem() is None, config.model_flag_problem()),
        (lambda: config.seq_length >= 2, "--seq_length must be at least 2"),
        (lambda: config.window_stride is None or 1 <= config.window_stride <= config.seq_length,
         "--window_stride must be in 1..--seq_length"),
        (lambda: 0 < config.mask_prob < 1, "--mask_prob must be in (0, 1)"),
        (lambda: 0 <= config.user_dropout <= 1, "--user_dropout must be in [0, 1]"),
        (lambda: 0 <= config.next_item_crop <= 1, "--next_item_crop must be in [0, 1]"),
        (lambda: config.loss_row_bucket >= 0, "--loss_row_bucket must be >= 0 (0: no padding)"),
        (lambda: config.item_loss in ITEM_LOSSES,
         f"--item_loss must be one of {', '.join(ITEM_LOSSES)}, not {config.item_loss!r}"),
        (lambda: config.num_negatives > 0, "--num_negatives must be positive"),
        (lambda: 0 <= config.label_smoothing < 1, "--label_smoothing must be in [0, 1)"),
        (lambda: config.label_smoothing == 0 or config.item_loss == "full",
         "--label_smoothing needs --item_loss full (the sampled loss sees only a few items a row): pass one of them"),
        (lambda: 0 <= config.new_user_prob <= 1, "--new_user_prob must be in [0, 1]"),
        (lambda: 0 <= config.demographics_dropout <= 1, "--demographics_dropout must be in [0, 1]"),
        (lambda: all(w >= 0 for w in config.task_weights.values()), "task weights must be >= 0"),
        (lambda: config.item_prediction_weight > 0 or config.next_item_weight > 0,
         "at least one of --item_prediction_weight and --next_item_weight must be > 0"),
        (lambda: not config.causal or config.next_item_on,
         "--causal (the CPU default) needs --next_item_weight > 0: the next-item task trains the [MASK] position that "
         "scores a history without events (a new user's first request); or pass --no-causal"),
        (lambda: config.warmup_steps >= 0, "--warmup_steps must be >= 0"),
        (lambda: 0 < config.lr_decay_fraction <= 1, "--lr_decay_fraction must be in (0, 1]"),
        (lambda: config.weight_decay >= 0, "--weight_decay must be >= 0"),
        (lambda: 0 <= config.ema_decay < 1, "--ema_decay must be in [0, 1) (0: off; e.g. 0.998)"),
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
    for name, folder in (("--checkpoint_dir", Path(config.checkpoint_dir)),
                         ("--metadata_path", config.metadata_file.parent),
                         ("--cache_dir", Path(config.cache_dir or config.checkpoint_dir))):
        _check_writable(name, folder)
    _check_outputs_are_not_inputs(config)
    _check_run_folder(config)


def _check_device(config: TrainConfig) -> None:
    """--device names a device this machine has, and --amp runs on it (model_config.device_problem; whether a GPU
    does bf16 is known only once torch is imported, in trainer.setup_runtime)."""
    has_cuda = config.device != "cpu" and cuda_available()
    problem = device_problem(config.device, config.amp, has_cuda)
    if problem is not None:
        raise ConfigError(problem)


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


RUN_FILES = ("best_model.pt", "last.pt", "results.json")  # what makes a --checkpoint_dir hold a run
SOURCE_FILES = ("ratings.dat", "movies.dat", "users.dat")


def _check_run_folder(config: TrainConfig) -> None:
    """A new run never replaces a finished or resumable one: a --checkpoint_dir holding a run is refused, with the
    choices named, unless this run resumes that very run or --overwrite moves its files aside first."""
    folder = Path(config.checkpoint_dir)
    held = [name for name in RUN_FILES if (folder / name).exists()]
    resumes_here = bool(held) and config.resume is not None and (
        Path(config.resume).resolve().parent == folder.resolve() or _run_id(Path(config.resume)) in (
            _run_id(folder), "unreadable"))
    if config.overwrite and resumes_here:
        raise ConfigError(f"--overwrite would move aside the checkpoint --resume {config.resume} continues: drop "
                          "--overwrite to continue that run, or pass another --checkpoint_dir")
    if held and not resumes_here and not config.overwrite:
        raise ConfigError(f"--checkpoint_dir {folder} holds another run ({', '.join(held)}): continue it with "
                          f"--resume {folder / 'last.pt'}, pass another --checkpoint_dir, or add --overwrite to move "
                          "its files aside (nothing is deleted)")


def _run_id(path: Path) -> str:
    """The run a checkpoint, or the run held in a --checkpoint_dir, belongs to ("unreadable" when it cannot be read:
    that checkpoint is refused later, by name). Only read when resuming, which imports torch anyway."""
    from enhanced_model import CheckpointFileError, read_checkpoint

    if path.is_dir():
        path = next((path / name for name in RUN_FILES if (path / name).is_file()), path / "last.pt")
    try:
        run_id = json.loads(path.read_text())["run_id"] if path.suffix == ".json" else read_checkpoint(path)["run_id"]
    except (CheckpointFileError, OSError, ValueError, KeyError, TypeError):
        return "unreadable"
    return str(run_id)


def _check_outputs_are_not_inputs(config: TrainConfig) -> None:
    """No file the run writes is a file it reads: the data, the checkpoint it resumes (except the run's own
    last.pt/best_model.pt, which a continued run rewrites) or one output over another. Paths are compared resolved,
    symlinks followed."""
    data = Path(config.data_dir) if config.data_dir else Path(config.dataset or "ml-1m")
    files = [child for child in data.iterdir() if child.is_file()] if data.is_dir() else []
    inputs = {"--data_dir": [data] if data.is_file() else files or [data / name for name in SOURCE_FILES]}
    if config.resume:
        inputs["--resume"] = [Path(config.resume)]
    folder = Path(config.checkpoint_dir)
    outputs = {"--metadata_path": config.metadata_file, **{f"--checkpoint_dir ({name})": folder / name
                                                           for name in (*RUN_FILES, "training_curves.png")}}
    resumed = Path(config.resume).resolve() if config.resume else None
    written: dict[Path, str] = {}
    for output_flag, path in outputs.items():
        target = path.resolve()
        if target in written:
            raise ConfigError(f"{output_flag} and {written[target]} are the same file ({path}): pass another "
                              f"{output_flag.split()[0]}")
        written[target] = output_flag
        continues_its_checkpoint = target == resumed and path.suffix == ".pt" and output_flag != "--metadata_path"
        for source_flag, sources in inputs.items():
            if target in {source.resolve() for source in sources} and not continues_its_checkpoint:
                raise ConfigError(f"{output_flag} would write over {path}, which {source_flag} reads: pass another "
                                  f"{output_flag.split()[0]}")


def _check_writable(flag: str, folder: Path) -> None:
    """The folder, or the nearest existing folder above it that would hold it, accepts new files."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag}: {existing} is a file, not a folder: pass another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write into {existing} (permission denied): pass a writable folder")




def interrupted_while_starting(signum: int, frame: object) -> None:
    """SIGINT while trainer.py imports torch and the rest: nothing has been written yet, so say so and leave."""
    print("interrupted while starting: nothing was written", file=sys.stderr)
    os._exit(130)


def preflight(argv: list[str]) -> None:
    """The command line's checks, run before trainer.py imports torch: a refused flag exits with status 2 and one
    line on stderr; anything else returns (trainer.main parses again)."""
    try:
        validate_config(parse_args(argv, use_device_defaults=True, probe=False))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
