"""Cold start and short histories on the real ML-1M: where the side information pays (EVALUATION.md, section
"Cold start and short histories").

Trains (or finds) the full model and plain BERT4Rec with both hold-outs (--holdout_users: UserID % 10 == 0;
--holdout_items: MovieID % 20 == 0) for every seed, then scores every row through the public RecommendationEngine
API, so the table measures what a user of the engine gets:
- new users, n = 0, 1, 3, 5, 10: a held-out user's first n ratings (time order, held-out movies left out, as the
  models' world has them) and their gender, age group and occupation; the target is the next rating;
- short context, n = 1, 3, 5, 10: a known user's standard test target from only the newest n events of the
  standard test input (identity and demographics as usual; the whole test input is excluded from the ranking);
- new items: every known user whose test item (in the full data) is a held-out movie ranks the held-out movies
  (get_cold_item_recommendations, from the user's history and the movies' genres and years).
Baselines: popularity over the training part; demographic popularity (training users of the same gender and age
group); plain BERT4Rec trained on the same users; for new items the expected value of a random order. Ranking:
all rated movies, seen excluded, ties counted against the target (metrics.target_ranks). The rating rows measure
the rating head on the known users' recommendations: the top 10 from the training part, where the user rated the
movie later (validation or test event), against the bias baseline on the same movies.

Writes cold_start.md and cold_start.json into --out. Finished runs (results.json) are read, an interrupted run is
resumed from its last.pt, so an interrupted benchmark continues where it stopped.

    python benchmarks/cold_start.py --data_dir path/to/ml-1m --seeds 0 1 --out runs/cold_start
"""

import argparse
import json
import math
import shlex
import statistics
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.ablation import PLAIN  # noqa: E402  (the ablation's plain BERT4Rec, the same flags)
from data_processor import AGE_GROUPS, EVAL_EVENTS, GENDERS, SequenceData, held_out_movies, load_dataset  # noqa: E402
from engine import RecommendationEngine  # noqa: E402
from metrics import ranking_metrics, target_ranks  # noqa: E402
from signup_prior import (  # noqa: E402
    NEW_USER_PRIOR_FADE,
    NEW_USER_PRIOR_STEEPNESS,
    NEW_USER_PRIOR_WEIGHT,
    NEW_USER_PRIOR_WINDOW,
    faded_weight,
    signup_counts,
    signup_window_prior,
)
from trainer import fit_bias_baseline, training_events  # noqa: E402

# the models compared (run folder name -> trainer flags on top of --config); LABELS name their table columns
MODELS = {"plain": PLAIN, "full": [], "full_new_users": ["--new_user_prob", "0.2"],
          "full_new_users_10": ["--new_user_prob", "0.1"], "full_new_users_05": ["--new_user_prob", "0.05"]}
LABELS = {"plain": "plain BERT4Rec", "full": "full model"} | {
    name: f"full model, --new_user_prob {flags[1]}" for name, flags in MODELS.items() if name.startswith("full_new")}
FULL_MODELS = tuple(name for name in MODELS if name.startswith("full"))
DEFAULT_MODELS = ["plain", "full", "full_new_users"]
NEW_USER_N = (0, 1, 3, 5, 10)
SHORT_CONTEXT_N = (1, 3, 5, 10)
TARGETS = {  # row prefix -> (required ratio, what the full model is compared with)
    "new users, n = 0": (1.1, ("demographic popularity",)),
    "new users, n = 1": (1.2, ("demographic popularity", "plain BERT4Rec")),
    "new users, n = 3": (1.2, ("demographic popularity", "plain BERT4Rec")),
    "new users, n = 5": (1.2, ("demographic popularity", "plain BERT4Rec")),
    "short context, n = 1": (1.1, ("plain BERT4Rec",)),
    "short context, n = 3": (1.1, ("plain BERT4Rec",)),
}
NEW_ITEMS_TARGET = 3.0  # HR@10 >= 3x a random order
# the engine's new_user_prior_weight, _fade, _steepness and _window values tried on validation (every combination
# that changes something: weight 0 once per window, no fading once per weight; a window (before, after) counts
# positions n - before .. n + after - 1)
PRIOR_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
PRIOR_FADES = (0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, math.inf)
PRIOR_STEEPNESS = (1.0, 2.0, 4.0, 8.0)
PRIOR_WINDOWS = ((0, 1), (0, 2), (1, 2), (1, 3), (2, 10))
VALIDATION_REMAINDER = 5  # known users with UserID % 10 == 5 play new users when the prior's weight is chosen
PRIOR = "sign-up prior alone"  # the engine's new-user prior used as a ranking by itself (a baseline column)


@dataclass
class Cases:
    """One row's evaluation set: engine inputs (MovieIDs) and targets, and what the baselines need."""

    user_ids: list  # UserID or None (a new user)
    sequences: list  # MovieIDs in time order
    timestamps: list
    demographics: list  # dict of gender/age/occupation, or None
    seen: list  # MovieIDs excluded from the ranking
    targets: np.ndarray  # MovieIDs
    groups: np.ndarray  # (gender index, age index) per case


def train_one(model: str, seed: int, args: argparse.Namespace) -> Path:
    """One trainer.py run with both hold-outs; skipped when finished, resumed when a last.pt is there."""
    out = Path(args.out) / f"{model}_seed{seed}"
    if (out / "results.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if (out / "last.pt").is_file():
        flags = ["--resume", str(out / "last.pt")]
    else:
        flags = [*shlex.split(args.config), "--holdout_users", "--holdout_items", "--max_epochs", str(args.max_epochs),
                 "--seed", str(seed), *MODELS[model]]
    command = [sys.executable, str(REPO / "trainer.py"), *flags, "--data_dir", args.data_dir,
               "--checkpoint_dir", str(out), "--no-progress"]
    with open(out / "train.log", "a") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True, cwd=REPO)
    return out


def events(data: SequenceData, u: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """User row u's events in time order: MovieIDs, timestamps, item indices."""
    start, stop = data.seq_offsets[u], data.seq_offsets[u + 1]
    items = data.seq_items[start:stop]
    return data.item_ids[items], data.seq_timestamps[start:stop], items


def demographics_of(data: SequenceData, u: int) -> dict:
    values = data.user_values
    return {"gender": GENDERS[values["gender"][u] - 1], "age": list(AGE_GROUPS.values())[values["age"][u] - 1],
            "occupation": int(values["occupation"][u]) - 1}


def new_user_cases(world: SequenceData, n: int, remainder: int = 0) -> Cases:
    """The held-out users' first n ratings (world: the data without the held-out movies, all users) -> rating n+1.

    remainder: the users with UserID % 10 == remainder; 0 is the held-out users, VALIDATION_REMAINDER known users
    who play new users when the prior's weight is chosen (world is then the known data; rating n + 1 is in their
    training part, so the models have seen it, which favours the model over the prior)."""
    cases = Cases([], [], [], [], [], np.zeros(0, np.int64), np.zeros((0, 2), np.int64))
    targets, groups = [], []
    for u in range(1, world.num_users + 1):
        if world.user_ids[u] % 10 != remainder or world.seq_offsets[u + 1] - world.seq_offsets[u] <= n:
            continue
        movies, timestamps, _ = events(world, u)
        cases.user_ids.append(None)
        cases.sequences.append(movies[:n].tolist())
        cases.timestamps.append(timestamps[:n].tolist())
        cases.demographics.append(demographics_of(world, u))
        cases.seen.append(movies[:n])
        targets.append(movies[n])
        groups.append((world.user_values["gender"][u], world.user_values["age"][u]))
    cases.targets, cases.groups = np.array(targets), np.array(groups)
    return cases


def short_context_cases(known: SequenceData, n: int) -> Cases:
    """Known users' standard test target from the newest n events of the standard test input."""
    cases = Cases([], [], [], [], [], np.zeros(0, np.int64), np.zeros((0, 2), np.int64))
    targets, groups = [], []
    for u in range(1, known.num_users + 1):
        movies, timestamps, _ = events(known, u)
        cases.user_ids.append(int(known.user_ids[u]))
        cases.sequences.append(movies[-1 - n:-1].tolist())
        cases.timestamps.append(timestamps[-1 - n:-1].tolist())
        cases.demographics.append(None)
        cases.seen.append(movies[:-1])
        targets.append(movies[-1])
        groups.append((known.user_values["gender"][u], known.user_values["age"][u]))
    cases.targets, cases.groups = np.array(targets), np.array(groups)
    return cases


def popularity_scores(known: SequenceData, universe: np.ndarray) -> tuple[np.ndarray, dict]:
    """Training-part counts over `universe` (MovieIDs): overall, and per (gender index, age index) group."""
    users, items, _ = training_events(known)
    columns = np.searchsorted(universe, known.item_ids[items])
    overall = np.bincount(columns, minlength=len(universe)).astype(np.float64)
    by_group = {}
    for gender in range(1, known.feature("user", "gender")["size"]):
        for age in range(1, known.feature("user", "age")["size"]):
            member = (known.user_values["gender"][users] == gender) & (known.user_values["age"][users] == age)
            by_group[(gender, age)] = np.bincount(columns[member], minlength=len(universe)).astype(np.float64)
    return overall, by_group


def seen_mask(universe: np.ndarray, cases: Cases) -> torch.Tensor:
    """(cases, universe) True where the case's seen movies are (excluded from its ranking)."""
    mask = torch.zeros(len(cases.targets), len(universe), dtype=torch.bool)
    for row, seen in enumerate(cases.seen):
        columns = np.searchsorted(universe, seen)
        mask[row, torch.from_numpy(columns[universe[np.minimum(columns, len(universe) - 1)] == seen])] = True
    return mask


def ranks_of(scores: torch.Tensor, universe: np.ndarray, cases: Cases, seen: torch.Tensor | None = None
             ) -> torch.Tensor:
    """0-based pessimistic ranks of the targets among `universe` (scores' columns), the seen movies excluded
    (seen: seen_mask(universe, cases), when the caller has it already)."""
    seen = seen_mask(universe, cases) if seen is None else seen
    targets = torch.from_numpy(np.searchsorted(universe, cases.targets))
    return target_ranks(scores.masked_fill(seen, -math.inf), targets)


def engine_scores(engine: RecommendationEngine, cases: Cases, universe: np.ndarray) -> torch.Tensor:
    """The engine's scores (score_batch) spread over `universe`; movies the model cannot score get -inf."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # held-out movies in an input: the engine skips them, as designed
        batch = engine.score_batch(cases.user_ids, cases.sequences, cases.timestamps, demographics=cases.demographics)
    scores = torch.full((len(cases.targets), len(universe)), -math.inf)
    scores[:, torch.from_numpy(np.searchsorted(universe, batch.movie_ids))] = batch.scores.float()
    return scores


def prior_counts(known: SequenceData, leave_out: int | None = None) -> np.ndarray:
    """signup_prior.signup_counts over the known users' training parts, as the engine counts them; leave_out: the
    users with UserID % 10 == leave_out are left out (the validation users, when the prior is chosen on them)."""
    lengths = np.diff(known.seq_offsets)
    keep = np.ones(len(lengths), dtype=bool) if leave_out is None else known.user_ids % 10 != leave_out
    offsets = np.concatenate([[0], np.cumsum(np.where(keep, lengths, 0))])
    items = known.seq_items[np.repeat(keep, lengths)]
    features = np.stack([known.user_values["gender"], known.user_values["age"]], axis=1)
    sizes = (known.feature("user", "gender")["size"], known.feature("user", "age")["size"])
    return signup_counts(offsets, items, features, (*sizes, known.num_items + 2))


def log_prior_scores(known: SequenceData, counts: np.ndarray, cases: Cases, universe: np.ndarray,
                     window: tuple[int, int]) -> torch.Tensor:
    """(cases, universe) log sign-up prior of new-user cases (signup_prior.signup_window_prior over `counts`); movies
    the known users' world does not have get -inf."""
    n = np.array([len(sequence) for sequence in cases.sequences])
    prior = signup_window_prior(counts, n, cases.groups[:, 0], cases.groups[:, 1], window)
    scores = torch.full((len(n), len(universe)), -math.inf, dtype=torch.float64)
    scores[:, torch.from_numpy(np.searchsorted(universe, known.item_ids[1:-1]))] = torch.from_numpy(
        np.log(prior[:, 1:-1]))
    return scores


def signup_prior_ranks(known: SequenceData, counts: np.ndarray, cases: Cases, universe: np.ndarray,
                       window: tuple[int, int]) -> torch.Tensor:
    """Ranks of the targets by the engine's sign-up prior alone (counts: prior_counts(known), every known user's
    training part, as the engine counts them), for new-user cases; movies the known users never rated rank last."""
    return ranks_of(log_prior_scores(known, counts, cases, universe, window), universe, cases)


def prior_settings() -> list[tuple[float, float, float, tuple[int, int]]]:
    """(weight, fade, steepness, window) tried on validation: each combination that scores differently (weight 0
    once per window; without fading, math.inf, the steepness once)."""
    settings, plain = [], PRIOR_STEEPNESS[0]
    for window in PRIOR_WINDOWS:
        for w in PRIOR_WEIGHTS:
            for f in PRIOR_FADES:
                if math.isinf(f):  # no fading: the steepness changes nothing
                    settings.append((w, f, plain, window))
                elif w:  # weight 0 (no prior) is the same setting at any fade
                    settings += [(w, f, p, window) for p in PRIOR_STEEPNESS]
    return settings


def setting_key(setting: tuple) -> str:
    w, f, p, (before, after) = setting
    return f"{w} / {f} / {p} / {before}, {after}"


def choose_prior(known: SequenceData, engines: dict, universe: np.ndarray) -> dict:
    """new_user_prior_weight, _fade, _steepness and _window chosen on known users (UserID % 10 ==
    VALIDATION_REMAINDER) playing new users: the setting of prior_settings() with the best NDCG@10, mean over n in
    NEW_USER_N, the full models and the seeds. The score is the engine's (the model's
    log-probabilities + w(n) x log prior); the prior counts the other known users only, so that no validation
    user's own next rating is in it."""
    cases = {n: new_user_cases(known, n, VALIDATION_REMAINDER) for n in NEW_USER_N}
    counts = prior_counts(known, leave_out=VALIDATION_REMAINDER)
    combos = prior_settings()
    key = {combo: setting_key(combo) for combo in combos}
    grid = {}
    for n, c in cases.items():
        seen = seen_mask(universe, c)
        log_priors = {window: log_prior_scores(known, counts, c, universe, window).float()
                      for window in PRIOR_WINDOWS}
        for (model, seed), (engine,) in engines.items():
            if model not in FULL_MODELS:
                continue
            engine.new_user_prior_weight = 0.0
            log_p = engine_scores(engine, c, universe).log_softmax(dim=1)
            for combo in combos:
                w, f, p, window = combo
                scores = log_p + float(faded_weight(w, f, n, p)) * log_priors[window] if w else log_p
                ndcg = ranking_metrics(ranks_of(scores, universe, c, seen), (10,))["NDCG@10"]
                grid.setdefault(key[combo], {}).setdefault(model, {}).setdefault(str(seed), {})[str(n)] = ndcg
    mean = {name: statistics.mean(v for per_model in per_combo.values() for per_seed in per_model.values()
                                  for v in per_seed.values()) for name, per_combo in grid.items()}
    best = max(combos, key=lambda combo: mean[key[combo]])
    return {"weight": float(best[0]), "fade": float(best[1]), "steepness": float(best[2]), "window": list(best[3]),
            "key": key[best], "default_key": key.get((NEW_USER_PRIOR_WEIGHT, NEW_USER_PRIOR_FADE,
                                                      NEW_USER_PRIOR_STEEPNESS, NEW_USER_PRIOR_WINDOW)),
            "mean_ndcg10": mean, "users": len(cases[0].targets), "grid": grid}


def baseline_ranks(cases: Cases, universe: np.ndarray, overall: np.ndarray, by_group: dict) -> dict:
    popular = torch.from_numpy(np.tile(overall, (len(cases.targets), 1)))
    by_demographics = torch.from_numpy(np.stack([by_group[tuple(g)] for g in cases.groups.tolist()]))
    return {"popularity": ranks_of(popular, universe, cases),
            "demographic popularity": ranks_of(by_demographics, universe, cases)}


def new_item_rows(full: SequenceData, known: SequenceData, engines: dict) -> dict:
    """Known users whose full-data test item is a held-out movie rank the held-out movies from their history."""
    candidates = full.item_ids[1:-1][held_out_movies(full.item_ids[1:-1])]
    known_users = set(known.user_ids[1:].tolist())
    engine = next(iter(engines.values()))[0]  # the cold-item ranking reads only the metadata
    ranks, random_hr, random_ndcg = [], [], []
    discounts = 1.0 / np.log2(np.arange(10) + 2.0)
    for u in range(1, full.num_users + 1):
        movies, _, _ = events(full, u)
        if full.user_ids[u] not in known_users or not held_out_movies(movies[-1]):
            continue
        listed = engine.get_cold_item_recommendations(int(full.user_ids[u]), movies[:-1].tolist(),
                                                      k=len(candidates), movie_ids=candidates.tolist())
        scores = {r["movie_id"]: r["score"] for r in listed}
        ranks.append(sum(score >= scores[movies[-1]] for score in scores.values()) - 1)
        count = len(listed)
        random_hr.append(min(10, count) / count)
        random_ndcg.append(discounts[: min(10, count)].sum() / count)
    metrics = ranking_metrics(torch.tensor(ranks), (10,))
    return {"cases": len(ranks), "candidates": len(candidates),
            "random order": {"HR@10": float(np.mean(random_hr)), "NDCG@10": float(np.mean(random_ndcg))},
            "engine (genre and year similarity)": {"HR@10": metrics["HR@10"], "NDCG@10": metrics["NDCG@10"]}}


def rating_rows(known: SequenceData, engine: RecommendationEngine) -> dict:
    """RMSE of the rating head on the movies of each known user's top 10 (from the training part) that the user
    rated later (validation or test event), beside the bias baseline on the same movies and on all test events."""
    user_ids, sequences, timestamps, later = [], [], [], []
    for u in range(1, known.num_users + 1):
        movies, stamps, _ = events(known, u)
        ratings = known.seq_ratings[known.seq_offsets[u]:known.seq_offsets[u + 1]]
        user_ids.append(int(known.user_ids[u]))
        sequences.append(movies[:-EVAL_EVENTS].tolist())
        timestamps.append(stamps[:-EVAL_EVENTS].tolist())
        later.append(dict(zip(movies[-2:].tolist(), ratings[-2:].tolist(), strict=True)))
    recommended = engine.recommend_batch(user_ids, sequences, timestamps, k=10)
    mu, user_bias, item_bias = fit_bias_baseline(*training_events(known))
    item_of = {m: i for i, m in enumerate(known.item_ids.tolist()) if m >= 0}
    predicted, baseline, actual = [], [], []
    for row, records in enumerate(recommended):
        for record in records:
            if record["movie_id"] in later[row]:
                predicted.append(record["predicted_rating"])
                baseline.append(np.clip(mu + user_bias[row + 1] + item_bias[item_of[record["movie_id"]]], 1, 5))
                actual.append(later[row][record["movie_id"]])
    actual_array = np.array(actual, dtype=np.float64)

    def rmse(values: list) -> float:
        return float(np.sqrt(np.mean((np.array(values) - actual_array) ** 2))) if values else math.nan

    return {"recommended_and_rated_later": len(actual), "rating_head_rmse": rmse(predicted),
            "bias_baseline_rmse": rmse(baseline), "mean_actual_rating": float(actual_array.mean())}


def evaluate(args: argparse.Namespace) -> dict:
    runs = {(model, seed): train_one(model, seed, args) for seed in args.seeds for model in args.models}
    full = load_dataset(args.data_dir)
    world = load_dataset(args.data_dir, holdout_items=True)
    known = load_dataset(args.data_dir, holdout_users=True, holdout_items=True)
    universe = full.item_ids[1:-1]
    overall, by_group = popularity_scores(known, universe)
    engines = {key: (RecommendationEngine(path / "best_model.pt", path / "metadata.json", device="cpu"),)
               for key, path in runs.items()}
    prior = choose_prior(known, engines, universe)
    print("prior on validation: chosen weight / fade / steepness / window", prior["key"], "mean NDCG@10",
          f"{prior['mean_ndcg10'][prior['key']]:.4f}", flush=True)
    shape = prior["fade"], prior["steepness"], tuple(prior["window"])
    engine_counts = prior_counts(known)  # the prior as the engine counts it, for the "prior alone" column
    # the full models as the engine serves them (the prior chosen above); plain BERT4Rec, the baseline without side
    # information, alone. The other setting of each is the ablation, on the new-user rows (the only ones it touches)
    weights = {model: 0.0 if model == "plain" else prior["weight"] for model in args.models}
    rows, ablation = {}, {}
    for label, cases in [*[(f"new users, n = {n}", new_user_cases(world, n)) for n in NEW_USER_N],
                         *[(f"short context, n = {n}", short_context_cases(known, n)) for n in SHORT_CONTEXT_N]]:
        if not len(cases.targets):
            print(label, "no cases (no user has enough ratings)", flush=True)
            continue
        row = {"cases": len(cases.targets)}
        row.update({name: ranking_metrics(r, (10,)) for name, r in baseline_ranks(cases, universe, overall,
                                                                                  by_group).items()})
        new_users = label.startswith("new users")
        if new_users:
            row[PRIOR] = ranking_metrics(signup_prior_ranks(known, engine_counts, cases, universe, shape[2]),
                                         (10,))
        for model in args.models:
            row[model] = model_metrics(engines, model, args.seeds, cases, universe, weights[model], *shape)
            if new_users:
                other = prior["weight"] if weights[model] == 0 else 0.0
                ablation.setdefault(label, {})[model] = {
                    "new_user_prior_weight": other,
                    "metrics": model_metrics(engines, model, args.seeds, cases, universe, other, *shape)}
        rows[label] = row
        print(label, summary_line(row), flush=True)
    first_full = engines[("full", args.seeds[0])][0]
    return {"rows": rows, "prior": prior, "weights": weights, "prior_ablation": ablation,
            "new_items": new_item_rows(full, known, engines), "seeds": list(args.seeds),
            "rating": {f"{LABELS[m]}, seed {s}": rating_rows(known, engines[(m, s)][0])
                       for m in args.models if m in FULL_MODELS for s in args.seeds},
            "runs": {f"{m}_seed{s}": json.loads((p / "results.json").read_text())["test"] for (m, s), p in
                     runs.items()},
            "machine": json.loads((runs[("full", args.seeds[0])] / "results.json").read_text()).get("machine"),
            "engine_items": int(first_full.config.num_items)}


def model_metrics(engines: dict, model: str, seeds: list, cases: Cases, universe: np.ndarray,
                  weight: float, fade: float, steepness: float, window: tuple[int, int]) -> list:
    """HR@10 / NDCG@10 per seed of one model served with new_user_prior_weight = weight, the fade, the steepness
    and the window."""
    per_seed = []
    for seed in seeds:
        engine = engines[(model, seed)][0]
        engine.new_user_prior_weight, engine.new_user_prior_fade = weight, fade
        engine.new_user_prior_steepness, engine.new_user_prior_window = steepness, window
        per_seed.append(ranking_metrics(ranks_of(engine_scores(engine, cases, universe), universe, cases), (10,)))
    return per_seed


def mean_and_spread(per_seed: list, metric: str) -> tuple[float, float]:
    values = [m[metric] for m in per_seed]
    return statistics.mean(values), max(values) - min(values)


def summary_line(row: dict) -> str:
    baselines = [f"{name}={row[name]['NDCG@10']:.4f}" for name in ("popularity", "demographic popularity")]
    models = [f"{model}={mean_and_spread(row[model], 'NDCG@10')[0]:.4f}" for model in MODELS if model in row]
    return " ".join(baselines + models)


def best_baseline(row: dict, names: tuple) -> tuple[str, float]:
    values = {"plain BERT4Rec" if name == "plain" else name:
              mean_and_spread(row[name], "NDCG@10")[0] if name == "plain" else row[name]["NDCG@10"]
              for name in ("popularity", "demographic popularity", "plain")}
    values = {name: value for name, value in values.items() if name in names}
    name = max(values, key=values.get)
    return name, values[name]


def table(result: dict) -> str:
    """cold_start.md: the rows, the targets and the rating-quality figures."""
    models = [model for model in MODELS if model in next(iter(result["rows"].values()))]
    fulls = [model for model in models if model in FULL_MODELS]
    prior = result["prior"]
    lines = [f"Full models served with the sign-up prior for new users (new_user_prior_weight {prior['weight']}, "
             f"new_user_prior_fade {prior['fade']}, new_user_prior_steepness {prior['steepness']}, "
             f"new_user_prior_window {tuple(prior['window'])}, chosen on "
             "validation below); plain BERT4Rec without it.", "",
             f"| row | cases | popularity HR@10 / NDCG@10 | demographic popularity | {PRIOR} | "
             + " | ".join(f"{LABELS[model]} (NDCG@10 spread)" for model in models) + " | "
             + " | ".join(f"{LABELS[model]} / best baseline (NDCG@10)" for model in fulls) + " |",
             "|---|---|---|---|---|" + "---|" * (len(models) + len(fulls))]
    for label, row in result["rows"].items():
        cells = [f"{row[name]['HR@10']:.4f} / {row[name]['NDCG@10']:.4f}" if name in row else "-"
                 for name in ("popularity", "demographic popularity", PRIOR)]
        for model in models:
            hr, _ = mean_and_spread(row[model], "HR@10")
            ndcg, spread = mean_and_spread(row[model], "NDCG@10")
            cells.append(f"{hr:.4f} / {ndcg:.4f} ({spread:.4f})")
        name, value = best_baseline(row, ("popularity", "demographic popularity", "plain BERT4Rec"))
        for model in fulls:
            ratio = mean_and_spread(row[model], "NDCG@10")[0] / value if value else math.inf
            cells.append(f"{ratio:.2f}x ({name})")
        lines.append(f"| {label} | {row['cases']} | {' | '.join(cells)} |")
    items = result["new_items"]
    engine = items["engine (genre and year similarity)"]
    lines += ["", "| new items | cases | held-out movies ranked | random order HR@10 / NDCG@10 | engine "
              "(genre and year similarity) | engine / random order (HR@10) |", "|---|---|---|---|---|---|",
              f"| users whose test movie is held out | {items['cases']} | {items['candidates']} "
              f"| {items['random order']['HR@10']:.4f} / {items['random order']['NDCG@10']:.4f} "
              f"| {engine['HR@10']:.4f} / {engine['NDCG@10']:.4f} "
              f"| {engine['HR@10'] / items['random order']['HR@10']:.2f}x |"]
    lines += ["", f"| target | model | required | measured | met | vs the {PRIOR} |", "|---|---|---|---|---|---|"]
    for label, (required, names) in TARGETS.items():
        if label not in result["rows"]:
            continue
        row = result["rows"][label]
        name, value = best_baseline(row, names)
        for model in fulls:
            full, spread = mean_and_spread(row[model], "NDCG@10")
            ratio = full / value if value else math.inf
            versus_prior = f"{full / row[PRIOR]['NDCG@10']:.2f}x" if row.get(PRIOR, {}).get("NDCG@10") else "-"
            lines.append(f"| {label}: NDCG@10 vs {name} | {LABELS[model]} | >= {required}x | {ratio:.2f}x "
                         f"({full:.4f} +- {spread / 2:.4f} vs {value:.4f}) | {'yes' if ratio >= required else 'no'} "
                         f"| {versus_prior} |")
    ratio = engine["HR@10"] / items["random order"]["HR@10"]
    lines.append(f"| new items: HR@10 vs random order | engine | >= {NEW_ITEMS_TARGET}x | {ratio:.2f}x | "
                 f"{'yes' if ratio >= NEW_ITEMS_TARGET else 'no'} |")
    lines += ["", "| new users: NDCG@10 (seed spread) | " + " | ".join(
        f"{LABELS[model]}, prior weight {result['weights'][model]} | {LABELS[model]}, prior weight "
        f"{result['prior_ablation'][next(iter(result['prior_ablation']))][model]['new_user_prior_weight']}"
        for model in models) + " |", "|---|" + "---|---|" * len(models)] if result["prior_ablation"] else []
    for label, per_model in result["prior_ablation"].items():
        cells = []
        for model in models:
            for metrics in (result["rows"][label][model], per_model[model]["metrics"]):
                ndcg, spread = mean_and_spread(metrics, "NDCG@10")
                cells.append(f"{ndcg:.4f} ({spread:.4f})")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    lines += ["", prior_table(prior)]
    lines += ["", "| rating head (known users' top 10 from the training part) | recommended movies rated later "
              "| rating head RMSE | bias baseline RMSE, same movies |",
              "|---|---|---|---|"]
    for name, r in result["rating"].items():
        lines.append(f"| {name} | {r['recommended_and_rated_later']} | {r['rating_head_rmse']:.4f} "
                     f"| {r['bias_baseline_rmse']:.4f} |")
    lines.append("")
    lines.append(f"Seeds {', '.join(map(str, result['seeds']))}; machine: {result['machine']}.")
    return "\n".join(lines)


def prior_table(prior: dict) -> str:
    """The validation selection: per window, its best weight / fade; the chosen and the engine's default setting
    by n (the whole grid is in cold_start.json)."""
    by_window = {}
    for key, value in prior["mean_ndcg10"].items():
        window = key.split(" / ")[3]
        if window not in by_window or value > prior["mean_ndcg10"][by_window[window]]:
            by_window[window] = key
    no_prior = next(key for key in prior["mean_ndcg10"] if key.startswith("0.0 / "))
    lines = [f"| new_user_prior_window (before, after) | best new_user_prior_weight / _fade / _steepness | validation "
             f"NDCG@10: {prior['users']} known users (UserID % 10 == {VALIDATION_REMAINDER}) as new users, mean over "
             f"n = {', '.join(map(str, NEW_USER_N))}, the full models and seeds |", "|---|---|---|",
             f"| no prior | - | {prior['mean_ndcg10'][no_prior]:.4f} |"]
    for window, key in by_window.items():
        chosen = " (chosen)" if key == prior["key"] else ""
        lines.append(f"| ({window}) | {' / '.join(key.split(' / ')[:3])}{chosen} | {prior['mean_ndcg10'][key]:.4f} |")
    settings = {"no prior": no_prior, f"chosen ({prior['key']})": prior["key"]}
    if prior.get("default_key"):
        settings[f"the engine's default ({prior['default_key']})"] = prior["default_key"]
    lines += ["", "| validation NDCG@10 by n (weight / fade / steepness / window) | "
              + " | ".join(f"n = {n}" for n in NEW_USER_N) + " |", "|---|" + "---|" * len(NEW_USER_N)]
    for label, key in settings.items():
        per_n = [statistics.mean(per_seed[str(n)] for per_model in prior["grid"][key].values()
                                 for per_seed in per_model.values()) for n in NEW_USER_N]
        lines.append(f"| {label} | {' | '.join(f'{v:.4f}' for v in per_n)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="the ml-1m folder")
    parser.add_argument("--out", default="runs/cold_start", help="run folders, cold_start.md and cold_start.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--config", default="@configs/cpu_small.txt",
                        help="trainer flags of both models (a flags file and/or flags, one string; the default is "
                             "the CPU default, the models the engine's new-user prior was tuned on)")
    parser.add_argument("--max_epochs", type=int, default=10, help="training epochs of each model")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=DEFAULT_MODELS,
                        help="which models to train and compare (plain and full at least)")
    args = parser.parse_args(argv)
    result = evaluate(args)
    out = Path(args.out)
    (out / "cold_start.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "cold_start.md").write_text(table(result) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
