"""Recommend movies from a trained EnhancedBERT4Rec: the command line, and the engine's public API in one import.

    python inference.py --model_path checkpoints/best_model.pt --metadata_path metadata.json --user_id 123 --k 10

    from inference import RecommendationEngine
    engine = RecommendationEngine(model_path="checkpoints/best_model.pt", metadata_path="metadata.json")
    engine.get_recommendations(user_id=123, item_sequence=[1, 5, 10, 15], k=10, filter_seen=True)
    engine.explain_recommendation(user_id=123, item_sequence=[1, 5, 10, 15], recommended_item_id=42)
    engine.get_user_profile(user_id=123)

The engine and its rules (ids, histories, days, scores, strategies, new users, never-rated movies) are engine.py's;
beside it catalog.py (metadata.json as arrays, ids -> model indices), scoring.py (the model's scores and the top k),
explanations.py, profiles.py (user profiles and never-rated movies), signup_prior.py (new users' prior), exports.py
(many users' top k to CSV or JSON Lines) and inference_inputs.py (the errors a caller can cause and the checks that
raise them). Flags that cannot be honoured together are refused by name before the model is loaded (flag_problem,
exit status 2); a bad request or file is exit status 1; Ctrl-C is one line and exit status 130.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # Ctrl-C while torch and the rest import (seconds): one line, not a traceback
    import signal

    from train_config import interrupted_while_starting

    signal.signal(signal.SIGINT, interrupted_while_starting)

import argparse
import json
import os
import re
import signal
import warnings
from pathlib import Path
from typing import Any

from catalog import DEMOGRAPHICS, POPULARITY, SEQUENCE
from engine import BatchScores, RecommendationEngine
from explanations import EXPLANATION_MEASURES
from exports import EXPORT_COLUMNS, EXPORT_FORMATS
from inference_inputs import (
    PRECISIONS,
    AlreadySeenError,
    CheckpointError,
    ColdItemError,
    ColdItemWarning,
    InferenceError,
    MetadataError,
    MetadataMismatchError,
    UnknownItemError,
    UnknownUserError,
    output_file,
)
from signup_prior import (
    NEW_USER_PRIOR_FADE,
    NEW_USER_PRIOR_STEEPNESS,
    NEW_USER_PRIOR_WEIGHT,
    NEW_USER_PRIOR_WINDOW,
    SIGNUP_POSITIONS,
    faded_weight,
    signup_counts,
    signup_prior,
    signup_window_prior,
)

__all__ = [
    "EXPLANATION_MEASURES", "EXPORT_COLUMNS", "EXPORT_FORMATS", "NEW_USER_PRIOR_FADE", "NEW_USER_PRIOR_STEEPNESS",
    "NEW_USER_PRIOR_WEIGHT", "NEW_USER_PRIOR_WINDOW", "SIGNUP_POSITIONS", "AlreadySeenError", "BatchScores",
    "CheckpointError", "ColdItemError", "ColdItemWarning", "InferenceError", "MetadataError", "MetadataMismatchError",
    "RecommendationEngine", "UnknownItemError", "UnknownUserError", "build_parser", "faded_weight", "flag_problem",
    "main",
    "signup_counts", "signup_prior", "signup_window_prior",
]


# ----------------------------------------------------------------------------------------------------------
# Command line


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit status 2), like every other error of this CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


_ID = re.compile(r"[ \t]*[0-9]{1,12}[ \t]*")  # ASCII digits only: int() would also take "１", "+5" and "1_0"


def _id_list(text: str) -> list[int]:
    """A CLI list of ids: positive integers separated by commas, spaces around them allowed; anything else (an
    empty item, a sign, a non-ASCII digit, more than 12 digits) is refused rather than guessed at."""
    parts = text.split(",")
    if not all(_ID.fullmatch(part) for part in parts) or not all(int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 1,5,10, got {text!r}")
    return [int(part) for part in parts]


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" once: not for flags whose help already names its default, nor for None or False."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default" in (action.help or "") or action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The inference.py command line."""
    parser = _OneLineParser(
        description="Recommend movies with a trained enhanced BERT4Rec (ids are MovieLens UserIDs/MovieIDs).",
        formatter_class=_DefaultsFormatter,
    )
    parser.add_argument("--model_path", default="checkpoints/best_model.pt", help="checkpoint from trainer.py")
    parser.add_argument("--metadata_path", help="metadata.json of the same data (default: the one beside "
                        "--model_path, where trainer.py writes it)")
    parser.add_argument("--user_id", type=int, help="UserID (omit for a new user)")
    parser.add_argument("--item_sequence", type=_id_list, help="MovieIDs in time order, e.g. 1,5,10 "
                        "(default: the user's known history)")
    parser.add_argument("--timestamps", type=_id_list, help="Unix seconds of --item_sequence's items")
    parser.add_argument("--k", type=int, default=10, help="number of recommendations")
    parser.add_argument("--include_seen", action="store_true", help="do not exclude the history's movies")
    parser.add_argument("--min_predicted_rating", type=float, help="leave out movies the rating head predicts "
                        "below this (1-5); the list stays --k long while enough movies remain")
    parser.add_argument("--gender", choices=["F", "M"], help="a new user's gender")
    parser.add_argument("--age", type=int, help="a new user's age in years")
    parser.add_argument("--occupation", type=int, help="a new user's ML-1M occupation code 0..20")
    parser.add_argument("--user_feature", type=_feature_value, action="append", metavar="NAME=VALUE",
                        help="a new user's feature of any dataset, by its column name (repeat the flag for several): "
                        "--user_feature country=DE --user_feature age=25")
    parser.add_argument("--new_user_prior_weight", type=float, default=NEW_USER_PRIOR_WEIGHT,
                        help="weight of the sign-up prior in a new user's scores (0: the model alone)")
    parser.add_argument("--new_user_prior_fade", type=float, default=NEW_USER_PRIOR_FADE,
                        help="ratings after which the sign-up prior's weight halves (inf: never)")
    parser.add_argument("--new_user_prior_steepness", type=float, default=NEW_USER_PRIOR_STEEPNESS,
                        help="how sharply the sign-up prior's weight falls around --new_user_prior_fade ratings "
                        "(1: as fade / (fade + n))")
    parser.add_argument("--new_user_prior_window", type=int, nargs=2, default=list(NEW_USER_PRIOR_WINDOW),
                        metavar=("BEFORE", "AFTER"), help="a new user with n ratings gets the prior of positions "
                        "n - BEFORE .. n + AFTER - 1 of the known users' histories")
    parser.add_argument("--explain", action="store_true", help="explain each recommendation")
    parser.add_argument("--profile", action="store_true", help="print the user's profile first")
    parser.add_argument("--cold_items", action="store_true", help="also list never-rated movies by genre similarity")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="the encoder's arithmetic: bf16 is "
                        "much faster on a GPU or a CPU with AVX-512 BF16 or AMX (emulated, so slower, elsewhere); "
                        "item scores stay fp32")
    parser.add_argument("--all_users", action="store_true", help="top k of every known user (from their own "
                        "history; --k, --include_seen and --min_predicted_rating apply), written to --output")
    parser.add_argument("--output", help="file for --all_users: .csv or .jsonl (format by extension); an existing "
                        "file is replaced once the new one is complete")
    return parser


# flags --all_users cannot honour, and why: it scores every known user from their own history into a file
NOT_WITH_ALL_USERS = {
    "user_id": "for one user, leave out --all_users",
    "item_sequence": "each user is scored from their own known history",
    "timestamps": "each user is scored from their own known history",
    "gender": "each known user's own demographics are read",
    "age": "each known user's own demographics are read",
    "occupation": "each known user's own demographics are read",
    "user_feature": "each known user's own features are read",
    "explain": "the file holds recommendations only; explain one user without --all_users",
    "profile": "the file holds recommendations only; ask for one user's profile without --all_users",
    "cold_items": "the file holds the model's recommendations only; ask for one user without --all_users",
    "json": "the file's format follows --output's extension (.csv or .jsonl)",
}


def flag_problem(args: argparse.Namespace) -> str | None:
    """Flags that cannot be honoured together, named (each flag alone is argparse's to check); None when none."""
    if args.all_users != (args.output is not None):
        return "--all_users and --output go together: --all_users --output recs.csv"
    given = [name for name in NOT_WITH_ALL_USERS if getattr(args, name) not in (None, False)]
    if args.all_users and given:
        return (f"--all_users writes every known user's top k to --output; --{given[0]} cannot combine with it: "
                f"{NOT_WITH_ALL_USERS[given[0]]}")
    if args.timestamps is not None and args.item_sequence is None:
        return "--timestamps gives the days of --item_sequence's movies: pass --item_sequence too"
    if args.timestamps is not None and len(args.timestamps) != len(args.item_sequence):
        return (f"--timestamps has {len(args.timestamps)} values for the {len(args.item_sequence)} movies of "
                "--item_sequence: one per movie")
    if args.profile and args.user_id is None:
        return "--profile needs --user_id"
    if args.min_predicted_rating is not None and args.cold_items:
        return ("--min_predicted_rating cannot combine with --cold_items: never-rated movies have no predicted "
                "rating to compare with it")
    return None


def _table(records: list[dict[str, Any]]) -> str:
    """Text table of records; a "rating" column (the predicted 1-5 rating, one decimal) when they carry one."""
    width = max([5, *(len(r["title"]) for r in records)])
    rated = any("predicted_rating" in r for r in records)
    rating_header = f"  {'rating':>6}" if rated else ""
    lines = [f"{'rank':>4}  {'movie_id':>8}  {'title':<{width}}  {'year':>4}  {'score':>8}{rating_header}  genres"]
    for record in records:
        year = "" if record["year"] is None else record["year"]
        rating = record.get("predicted_rating")
        rating_cell = (f"  {'-' if rating is None else f'{rating:.1f}':>6}") if rated else ""
        lines.append(
            f"{record['rank']:>4}  {record['movie_id']:>8}  {record['title']:<{width}}  {year:>4}  "
            f"{record['score']:>8.3f}{rating_cell}  {'|'.join(record['genres'])}"
        )
        if "explanation" in record:
            lines.append(f"{'':>6}why: {record['explanation']['sentence']}")
    return "\n".join(lines)


def _feature_value(text: str) -> tuple[str, str]:
    """NAME=VALUE of --user_feature."""
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (a user feature's column name and its value), got "
                                         f"{text!r}")
    return name, value


def _profile_text(profile: dict[str, Any]) -> str:
    genres = ", ".join(f"{g['genre']} {g['share']:.0%}" for g in profile["top_genres"])
    if "predicted_top_genres" in profile:
        predicted = ", ".join(f"{g['genre']} {g['share']:.0%}" for g in profile["predicted_top_genres"])
        genres += f"\npredicted genre mix (preference head): {predicted}"
    recent = "; ".join(movie["title"] for movie in profile["recent_movies"])
    if "occupation_code" in profile:  # ML-1M's demographics
        described = (f"{profile['gender']}, {profile['age_group']}, {profile['occupation']} "
                     f"(occupation {profile['occupation_code']})")
    else:
        fixed = {"user_id", "num_ratings", "mean_rating", "top_genres", "predicted_top_genres", "recent_movies"}
        described = ", ".join(f"{name} {value}" for name, value in profile.items() if name not in fixed) or \
            "no user features"
    mean = "" if profile["mean_rating"] is None else f", mean {profile['mean_rating']:.2f}"
    return (
        f"user {profile['user_id']}: {described}\n"
        f"{profile['num_ratings']} ratings{mean}; top genres: {genres}\n"
        f"most recent: {recent}"
    )


def _answer(engine: RecommendationEngine, args: argparse.Namespace) -> dict[str, Any]:
    """Everything the flags ask for: recommendations (each with its explanation), profile, cold items."""
    request = {
        "user_id": args.user_id, "item_sequence": args.item_sequence, "timestamps": args.timestamps,
        "gender": args.gender, "age": args.age, "occupation": args.occupation,
        "user_features": dict(args.user_feature) if args.user_feature else None,
    }  # fmt: skip
    records = engine.get_recommendations(k=args.k, filter_seen=not args.include_seen,
                                         min_predicted_rating=args.min_predicted_rating, **request)
    if args.explain:
        for record in records:
            try:
                record["explanation"] = engine.explain_recommendation(
                    **request, recommended_item_id=record["movie_id"], k=args.k)
            except AlreadySeenError:  # --include_seen lists the history's own movies
                record["explanation"] = {"sentence": f'"{record["title"]}" is already in this history.'}
    strategy = records[0]["strategy"] if records else None
    answer = {"user_id": args.user_id, "strategy": strategy, "recommendations": records}
    if args.profile:
        answer["profile"] = engine.get_user_profile(args.user_id)
    if args.cold_items:
        answer["cold_items"] = engine.get_cold_item_recommendations(
            args.user_id, args.item_sequence, k=args.k, filter_seen=not args.include_seen
        )
    return answer


def _print_text(answer: dict[str, Any], prior_weight: float) -> None:
    if "profile" in answer:
        print(_profile_text(answer["profile"]) + "\n")
    who = "a new user" if answer["user_id"] is None else f"user {answer['user_id']}"
    scores = "the model's item scores"
    if answer["strategy"] == POPULARITY:
        scores = "ratings in the training data"
    elif answer["strategy"] in (SEQUENCE, DEMOGRAPHICS) and prior_weight:
        scores = "the model's log-probabilities plus the weighted log sign-up prior"
    print(f"top {len(answer['recommendations'])} for {who} (strategy: {answer['strategy']}; score: {scores})")
    print(_table(answer["recommendations"]))
    if "cold_items" in answer:
        print("\nnever-rated movies, by genre/year similarity to the history (0..1, not comparable with the above):")
        print(_table(answer["cold_items"]))


def _warning_line(message: Warning | str, *details: Any, **more: Any) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _export(engine: RecommendationEngine, args: argparse.Namespace) -> None:
    rows = engine.export_recommendations(args.output, k=args.k, filter_seen=not args.include_seen,
                                         min_predicted_rating=args.min_predicted_rating,
                                         progress=sys.stderr.isatty())  # a bar on a terminal, not in a log
    print(f"wrote {rows} recommendations for {len(engine.user_ids)} users to {args.output}")


def main(argv: list[str] | None = None) -> int:
    """Print recommendations (and optionally explanations, the profile, cold items), or with --all_users write every
    known user's to --output. Returns the exit status: 0, 1 (a bad request or file), 2 (bad flags), 130 (Ctrl-C)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C from here on: KeyboardInterrupt, below
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = flag_problem(args)
    if problem is not None:
        parser.error(problem)
    stopped = "interrupted while loading the model: nothing was written"
    with warnings.catch_warnings():
        warnings.simplefilter("once")  # a warning repeated by each explanation is printed once
        warnings.showwarning = _warning_line  # one line per warning; restored on exit
        try:
            if args.all_users:  # refused before the model is loaded, and never an input
                metadata_path = args.metadata_path or Path(args.model_path).parent / "metadata.json"
                output_file(args.output, "--output", EXPORT_FORMATS,
                            {"--model_path": Path(args.model_path), "--metadata_path": Path(metadata_path)})
            engine = RecommendationEngine(args.model_path, args.metadata_path, device=args.device,
                                          new_user_prior_weight=args.new_user_prior_weight,
                                          new_user_prior_fade=args.new_user_prior_fade,
                                          new_user_prior_window=tuple(args.new_user_prior_window),
                                          new_user_prior_steepness=args.new_user_prior_steepness,
                                          precision=args.precision)
            if args.all_users:
                stopped = f"interrupted: nothing was written to {args.output}"  # the temporary file is removed
                _export(engine, args)
                return 0
            stopped = "interrupted"
            answer = _answer(engine, args)
            if args.json:
                print(json.dumps(answer, ensure_ascii=False, indent=2))
            else:
                _print_text(answer, engine.new_user_prior_weight)
            sys.stdout.flush()
        except (InferenceError, OSError) as error:  # OSError: the export's disk is full, its folder went away
            if isinstance(error, BrokenPipeError):  # the reader went away (| head): stop quietly, as others do
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(stopped, file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
