"""`vital preferences sample|build|pairs|agreement|mix` and `vital judge rubric`.

Every command's options are a dataclass: defaults there, then a YAML file (`--config F.yaml`, unknown keys
rejected), then the command line. Entry points only parse, call the library and report.

    vital preferences sample --candidates cands/ --images figs/ --k 60 --seed 0 --out items.jsonl
    vital annotate serve --items items.jsonl --out annotations/ --annotator dr_lee
    vital preferences build --annotations annotations/ --out prefs/
    vital judge rubric --candidates cands/ --images figs/ --model gpt-4o --out judge/
    vital preferences pairs --scores judge/ --n 30000 --seed 0 --out prefs/
    vital preferences agreement --scores judge/ --repo prefs/
    vital preferences mix --repo prefs/ --clinician-weight 100
"""

from __future__ import annotations

import base64
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from vital_hub.cli_args import require
from vital_hub.config import help_field, parse_config
from vital_hub.io import atomic_path, write_json_atomic
from vital_hub.schema import RecordError

# ---------------------------------------------------------------- configs


@dataclass
class SampleConfig:
    candidates: str = help_field("candidates folder or Hub repo id (dual-answer mode), or an items JSON/JSONL file")
    out: str = help_field("items JSONL file to write (the app's --items)")
    k: int = help_field("how many items to show clinicians", default=60)
    seed: int = help_field("k-means seed", default=0)
    clusters: int | None = help_field("k-means clusters (default: k, one item per cluster)", default=None)
    encoder: str = help_field("clip | tiny-clip | hashing", default="clip")
    encoder_model: str | None = help_field("model id of the clip encoder", default=None)
    image_weight: float = help_field("weight of the image part against the text part", default=1.0)
    images: str | None = help_field("folder of <pair_id>.jpg figures", default=None)
    figures: str | None = help_field("figures dataset to look pictures up by pair_id", default=None)
    embed_images: bool = help_field("write each figure into the items file (base64) instead of a path", default=False)


@dataclass
class BuildConfig:
    annotations: str = help_field("folder of annotator logs (<annotator>.jsonl) written by the app")
    out: str = help_field("preferences repo folder (config clinician, plus mixed when model pairs exist)")
    aggregate: str = help_field("several annotators on one item: unanimous | majority | each", default="unanimous")
    use_better: bool = help_field("a 'which is better' pick turns a tie (both acceptable) into a pair", default=False)
    include_without_figure: bool = help_field(
        "also pair judgements made while the figure could not be shown (kept out by default)", default=False
    )
    test_fraction: float = help_field(
        "share of clinician pairs held out (stable per item), for the selector's clinician alignment and AUC",
        default=0.2,
    )
    seed: int = help_field("seed of the held-out split", default=0)
    max_pairs: int | None = help_field(
        "keep only the first N pairs in judging order (the paper used 50)", default=None
    )
    clinician_weight: float = help_field("weight w of clinician pairs in the mixed config", default=100.0)
    embed_images: bool = help_field("embed each pair's figure (needs --images or --figures)", default=False)
    images: str | None = help_field("folder of <pair_id>.jpg figures", default=None)
    figures: str | None = help_field("figures dataset to look pictures up by pair_id", default=None)


@dataclass
class PairsConfig:
    scores: list = help_field("judge output folder(s) or scores.jsonl file(s)")
    out: str = help_field("preferences repo folder (config model, plus mixed when clinician pairs exist)")
    n: int = help_field("number of pairs (train + test)", default=30000)
    seed: int = help_field("seed of the split and the pair draw", default=0)
    test_fraction: float = help_field("share held out, per score level", default=0.2)
    pairing: str = help_field(
        "across (any two items, paper) | same-question", default="across", choices=("across", "same-question")
    )
    clinician_weight: float = help_field("weight w of clinician pairs in the mixed config", default=100.0)
    embed_images: bool = help_field("embed the chosen side's figure (needs --images or --figures)", default=False)
    images: str | None = help_field("folder of <pair_id>.jpg figures", default=None)
    figures: str | None = help_field("figures dataset to look pictures up by pair_id", default=None)


@dataclass
class AgreementConfig:
    scores: list = help_field("judge output folder(s) or scores.jsonl file(s)")
    repo: str | None = help_field("preferences repo whose clinician config to compare with", default=None)
    annotations: str | None = help_field("or: annotator logs to build the clinician pairs from", default=None)
    aggregate: str = help_field("with --annotations: unanimous | majority | each", default="unanimous")
    allow_missing: bool = help_field(
        "report on the pairs the judge scored even when it was never given some clinician answers (default: an error)",
        default=False,
    )


@dataclass
class MixConfig:
    repo: str = help_field("preferences repo folder holding configs clinician and model")
    clinician_weight: float = help_field("weight w of clinician pairs", default=100.0)


# ---------------------------------------------------------------- commands


def sample_command(config: SampleConfig) -> int:
    from vital_hub.preferences.items import ImageResolver, load_items
    from vital_hub.preferences.sample import DEFAULT_CLIP, diverse_sample, get_encoder, plot_sample

    if config.encoder in ("clip", "tiny-clip"):
        require(("torch", "transformers"), "train", f"the {config.encoder} encoder; --encoder hashing needs neither")
    items = load_items(config.candidates)
    options = {"model_id": config.encoder_model or DEFAULT_CLIP} if config.encoder == "clip" else {}
    if config.encoder == "tiny-clip":
        options["seed"] = config.seed
    resolver = ImageResolver(config.images, config.figures)
    try:
        encoder = get_encoder(config.encoder, **options)
    except OSError as err:  # no network and nothing cached: say what works offline
        raise OSError(
            f"the {config.encoder} encoder could not be loaded ({err}); offline, use --encoder hashing"
        ) from err
    sample = diverse_sample(
        items,
        config.k,
        config.seed,
        encoder,
        resolver,
        config.clusters,
        config.image_weight,
    )
    out = Path(config.out)
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for item in sample.chosen:
                handle.write(json.dumps(item_record(item, resolver, config.embed_images), ensure_ascii=False) + "\n")
    stem = out.with_suffix("")
    write_json_atomic(f"{stem}.sample.json", sample.summary)
    plot_sample(sample, f"{stem}.sample.png")
    print(f"chose {len(sample.chosen)} of {len(items)} items from {sample.summary['clusters']} clusters -> {out}")
    return 0


def item_record(item, resolver, embed: bool) -> dict:
    """An items-file line: the picture as an absolute path, or embedded as base64 (asked for, or no file)."""
    record = item.public()
    data, path = resolver.locate(item)
    record["image"] = None
    if data is not None and (embed or path is None):
        record["image_base64"] = base64.b64encode(data).decode("ascii")
    elif path is not None:
        record["image"] = str(path.resolve())
    return record


def build_command(config: BuildConfig) -> int:
    from vital_hub.preferences.pairs import annotator_statistics, clinician_pairs
    from vital_hub.preferences.repo import write_config, write_stats
    from vital_hub.preferences.store import read_judgements

    records = read_judgements(config.annotations)
    pairs, outcomes = clinician_pairs(
        records, config.aggregate, config.use_better, config.test_fraction, config.seed, config.include_without_figure
    )
    pairs = pairs[: config.max_pairs] if config.max_pairs is not None else pairs
    if config.embed_images:
        embed_images(pairs, config.images, config.figures)
    counts = write_config(config.out, "clinician", pairs)
    write_stats(config.out, "clinician_outcomes.jsonl", outcomes)
    stats = annotator_statistics(records, config.use_better)
    write_stats(config.out, "annotators.json", stats)
    outcome_counts = dict(Counter(o["outcome"] for o in outcomes))
    print(
        f"clinician pairs: {counts}; item outcomes: {outcome_counts}; "
        f"mean item agreement: {stats['mean_item_agreement']}"
    )
    if pairs and not any(row["split"] == "test" for row in pairs):
        print(
            f"warning: no clinician pair is held out (--test-fraction {config.test_fraction:g}, {len(pairs)} pairs): "
            "the selector will report no clinician alignment or AUC; use --test-fraction 0.2 (the default)",
            file=sys.stderr,
        )
    refresh_mixed(config.out, config.clinician_weight)
    return 0


def read_judge_scores(path) -> list[dict]:
    """The scores of a `vital judge rubric` output given as input: it must exist and hold scores."""
    from vital_hub.preferences.judge_scores import read_scores

    file = str(Path(path) / "scores.jsonl" if Path(path).is_dir() else path)
    scores = read_scores(path)
    if not scores:
        raise RecordError("no scores in the file", file=file)
    for row in scores:
        score = row.get("score")
        # The judge scores 0-10 and writes null when it found none: any other number was not written by it,
        # and would become pairs at levels that do not exist (a 42 above every 10).
        if score is not None and not (math.isfinite(score) and 0 <= score <= 10):
            raise RecordError(f"score {score!r} is outside the judge's 0-10", file=file, record_id=row["score_id"])
    return scores


def pairs_command(config: PairsConfig) -> int:
    from vital_hub.preferences.pairs import model_pairs
    from vital_hub.preferences.repo import write_config

    scores = [row for path in config.scores for row in read_judge_scores(path)]
    pairs = model_pairs(scores, config.n, config.seed, config.test_fraction, config.pairing)
    if len(pairs) < config.n:
        print(f"warning: only {len(pairs)} distinct pairs could be drawn (asked for {config.n})", file=sys.stderr)
    if config.embed_images:
        embed_images(pairs, config.images, config.figures)
    counts = write_config(config.out, "model", pairs)
    print(f"model pairs: {counts} from {len(scores)} judged answers")
    refresh_mixed(config.out, config.clinician_weight)
    return 0


def agreement_command(config: AgreementConfig) -> int:
    from vital_hub.preferences.pairs import clinician_pairs, judge_agreement
    from vital_hub.preferences.repo import read_config, write_stats
    from vital_hub.preferences.store import read_judgements

    if (config.repo is None) == (config.annotations is None):
        raise SystemExit("vital preferences agreement: give exactly one of --repo or --annotations")
    if config.repo is not None:
        pairs = read_config(config.repo, "clinician")
    else:
        pairs = clinician_pairs(read_judgements(config.annotations), config.aggregate)[0]
    scores = [row for path in config.scores for row in read_judge_scores(path)]
    result = judge_agreement(pairs, scores)
    if result["not_judged"] and not config.allow_missing:
        print(f"vital preferences agreement: error: {missing_message(result, config.scores)}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    if config.repo is not None:
        write_stats(config.repo, "judge_agreement.json", result)
    return 0


def missing_message(result: dict, scores: list) -> str:
    """Which clinician pairs the judge output cannot rate, what the judge scored instead, and what to run."""
    items = sorted({pair["item_id"] for pair in result["missing_pairs"]})
    shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    judged = []
    for path in scores:
        run = Path(path) / "run.json"
        try:
            candidates = json.loads(run.read_text(encoding="utf-8"))["config"]["candidates"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        judged.append(f"{path} scored {candidates}")
    scored = f" ({'; '.join(judged)})" if judged else ""
    return (
        f"{result['not_judged']} of {result['pairs']} clinician pairs have an answer the judge never scored "
        f"(items {shown}){scored}: the judge must score the answers the clinicians saw. Run "
        "`vital judge rubric --candidates ITEMS.jsonl --model MODEL --out judge-items/` on the items file given to "
        "`vital annotate serve` (or on the dual-answer candidates it was sampled from), then "
        "`vital preferences agreement --scores judge-items/ ...`; --allow-missing reports on the scored pairs only"
    )


def mix_command(config: MixConfig) -> int:
    if not refresh_mixed(config.repo, config.clinician_weight):
        raise SystemExit(f"{config.repo} needs both configs clinician and model to mix")
    return 0


def refresh_mixed(repo: str, clinician_weight: float) -> bool:
    """Rewrite `mixed` whenever both kinds of pairs exist, so it never lags behind either."""
    from vital_hub.preferences.pairs import mixed_pairs
    from vital_hub.preferences.repo import has_config, read_config, write_config

    if not (has_config(repo, "clinician") and has_config(repo, "model")):
        return False
    counts = write_config(
        repo, "mixed", mixed_pairs(read_config(repo, "clinician"), read_config(repo, "model"), clinician_weight)
    )
    print(f"mixed pairs (clinician weight {clinician_weight:g}): {counts}")
    return True


def embed_images(pairs: list[dict], images: str | None, figures: str | None) -> None:
    """Put the (chosen side's) figure into each row; rows whose figure cannot be found keep None."""
    from vital_hub.preferences.items import ImageResolver, Item

    if not images and not figures:
        raise SystemExit("--embed-images needs --images or --figures")
    resolver = ImageResolver(images, figures)
    cache: dict[str, bytes | None] = {}
    for row in pairs:
        pair_id = row["pair_id"]
        if pair_id not in cache:
            cache[pair_id] = resolver.bytes_for(Item(pair_id, pair_id, "", "", ""))
        row["image"] = {"bytes": cache[pair_id], "path": f"{pair_id}.jpg"} if cache[pair_id] else None
    missing = sorted({row["pair_id"] for row in pairs if row["image"] is None})
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        print(f"warning: {len(missing)} figures could not be embedded (missing or damaged): {shown}", file=sys.stderr)


SUBCOMMANDS = {
    "sample": (SampleConfig, sample_command, "pick a diverse set of items for clinicians (k-means)"),
    "build": (BuildConfig, build_command, "clinician judgements -> config clinician (+ annotator statistics)"),
    "pairs": (PairsConfig, pairs_command, "rubric-judge scores -> config model (pairs across score levels)"),
    "agreement": (AgreementConfig, agreement_command, "how often the judge agrees with clinician pairs"),
    "mix": (MixConfig, mix_command, "rewrite config mixed with another clinician weight"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        lines = [f"  {name:<10} {text}" for name, (_, _, text) in SUBCOMMANDS.items()]
        print("usage: vital preferences COMMAND [OPTIONS]\n\ncommands:\n" + "\n".join(lines), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    cls, command, text = SUBCOMMANDS[argv[0]]
    return command(parse_config(cls, argv[1:], f"vital preferences {argv[0]}", text))


def judge_main(argv: list[str] | None = None) -> int:
    """`vital judge rubric ...`: score every (question, answer) with the rubric judge."""
    from vital_hub.preferences.judge import JudgeConfig, run_judge

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "rubric":
        print(
            "usage: vital judge rubric --candidates SRC --model NAME --out DIR [options] (see --help)", file=sys.stderr
        )
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    config = parse_config(JudgeConfig, argv[1:], "vital judge rubric", "score answers 0-10 with a rubric judge")
    summary = run_judge(config)
    print(json.dumps(summary, indent=2))
    if summary["waiting_in_batch_jobs"]:
        print(f"{summary['waiting_in_batch_jobs']} answers wait in Batch API jobs: re-run this command to collect")
    return 0
