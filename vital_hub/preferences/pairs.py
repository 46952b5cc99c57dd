"""Preference pairs from clinician judgements and from rubric-judge scores, and how far annotators agree.

Clinician protocol (the paper's): each answer is marked acceptable or not. An item becomes a pair only when one
answer is acceptable and the other is not; both acceptable (a tie) and both unacceptable are recorded as outcomes
and never paired. The optional "which is better" pick can break ties (`use_better`), and a pick that contradicts
the marks makes the item a conflict.

A judgement made while the figure could not be shown (`figure_status` "unavailable") has the verdict
`without_figure` and is never paired unless asked for (`include_without_figure`); a clinician's "cannot judge:
figure unavailable" has the verdict `cannot_judge`. Both are counted in the outcomes and annotator statistics.
Clinician pair rows carry the annotators' comments and the figure status.

Model preferences (the paper's): judge scores are cut into integer levels; each level is split 80/20 into train
and test items, and pairs join two items from two different levels of the same split, the higher level chosen.
Such items usually differ in figure and question, so a pair row carries the rejected side's own context in
`rejected_pair_id`, `rejected_caption`, `rejected_mention` and `rejected_question` (for clinician pairs they equal
the chosen side's).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable

AGGREGATIONS = ("unanimous", "majority", "each")
PAIRINGS = ("across", "same-question")
PAIRED_VERDICTS = ("a", "b")


# ---------------------------------------------------------------- clinician judgements


def verdict_of(judgement: dict, use_better: bool = False, include_without_figure: bool = False) -> str:
    """'a' or 'b' (that answer is preferred), 'tie', 'both_unacceptable', 'conflict', 'cannot_judge' or
    'without_figure'."""
    if judgement.get("cannot_judge"):
        return "cannot_judge"
    if judgement.get("figure_status") == "unavailable" and not include_without_figure:
        return "without_figure"
    good_a, good_b, better = judgement["acceptable_a"], judgement["acceptable_b"], judgement.get("better")
    if good_a != good_b:
        winner = "a" if good_a else "b"
        return "conflict" if better not in (None, winner) else winner
    if not good_a:
        return "both_unacceptable"
    return better if use_better and better in PAIRED_VERDICTS else "tie"


def latest_judgements(records: Iterable[dict]) -> dict[tuple[str, str], dict]:
    """The current verdict of each (annotator, item): the last line written wins, earlier ones are history."""
    latest: dict[tuple[str, str], dict] = {}
    for record in records:
        latest[(record["annotator"], record["item_id"])] = record
    return latest


def by_item(latest: dict[tuple[str, str], dict]) -> dict[str, dict[str, dict]]:
    items: dict[str, dict[str, dict]] = defaultdict(dict)
    for (annotator, item_id), record in sorted(latest.items()):
        items[item_id][annotator] = record
    return dict(items)


def in_judging_order(items: dict[str, dict[str, dict]]) -> list[tuple[str, dict[str, dict]]]:
    """Items by the time of their first current judgement, so "the first N pairs" means what clinicians did first."""
    return sorted(items.items(), key=lambda kv: (min(r.get("time") or "" for r in kv[1].values()), kv[0]))


def item_outcome(verdicts: dict[str, str], aggregate: str) -> str:
    """One verdict for an item judged by several annotators ('disagreement' when the rule finds none)."""
    values = list(verdicts.values())
    if len(set(values)) == 1:
        return values[0]
    if aggregate == "majority":
        top, count = Counter(values).most_common(1)[0]
        if count * 2 > len(values):
            return top
    return "disagreement"


def clinician_pairs(
    records: Iterable[dict],
    aggregate: str = "unanimous",
    use_better: bool = False,
    test_fraction: float = 0.0,
    seed: int = 0,
    include_without_figure: bool = False,
) -> tuple[list[dict], list[dict]]:
    """(pair rows, outcome rows): every item's outcome is recorded, only preferences become pairs."""
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregate!r}; known: {list(AGGREGATIONS)}")
    pairs, outcomes = [], []
    for item_id, judged in in_judging_order(by_item(latest_judgements(records))):
        verdicts = {name: verdict_of(record, use_better, include_without_figure) for name, record in judged.items()}
        if aggregate == "each":
            groups = [([name], verdict) for name, verdict in verdicts.items()]
        else:
            groups = [(list(verdicts), item_outcome(verdicts, aggregate))]
        for annotators, outcome in groups:
            record = judged[annotators[0]]
            outcomes.append(
                {
                    "item_id": item_id,
                    "pair_id": record.get("pair_id"),
                    "question": record["question"],
                    "annotators": annotators,
                    "verdicts": {n: verdicts[n] for n in annotators},
                    "outcome": outcome,
                    "figure_status": record.get("figure_status"),
                    "comments": {n: judged[n].get("comment") for n in annotators if judged[n].get("comment")},
                }
            )
            if outcome in PAIRED_VERDICTS:
                key = item_id if aggregate != "each" else f"{item_id}@{annotators[0]}"
                row = _clinician_pair_row(record, outcome, key, annotators, test_fraction, seed)
                row["comments"] = "\n".join(f"{n}: {c}" for n, c in outcomes[-1]["comments"].items()) or None
                pairs.append(row)
    return pairs, outcomes


def _clinician_pair_row(
    record: dict, winner: str, key: str, annotators: list[str], test_fraction: float, seed: int
) -> dict:
    loser = "b" if winner == "a" else "a"
    mention = "\n".join(record.get("mentions") or [])
    return {
        "pair_key": f"clinician:{key}",
        "pair_id": record.get("pair_id") or "",
        "image": None,
        "caption": record.get("caption") or "",
        "mention": mention,
        "question": record["question"],
        "chosen": record[f"answer_{winner}"],
        "rejected": record[f"answer_{loser}"],
        "weight": 1.0,
        "origin": "clinician",
        "split": stable_split(record["item_id"], test_fraction, seed),
        "chosen_id": f"{record['item_id']}#{winner}",
        "rejected_id": f"{record['item_id']}#{loser}",
        "rejected_pair_id": record.get("pair_id") or "",
        "rejected_caption": record.get("caption") or "",
        "rejected_mention": mention,
        "rejected_question": record["question"],
        "chosen_score": None,
        "rejected_score": None,
        "annotators": ",".join(annotators),
        "figure_status": record.get("figure_status"),
    }


def stable_split(key: str, test_fraction: float, seed: int) -> str:
    """A split that depends on the key alone, so adding annotations later never moves an old pair."""
    if test_fraction <= 0:
        return "train"
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
    return "test" if digest / 2**64 < test_fraction else "train"


# ---------------------------------------------------------------- agreement statistics


def cohen_kappa(first: list, second: list) -> float | None:
    """Cohen's kappa of two raters over the same items; None when chance agreement is total (kappa undefined)."""
    if len(first) != len(second):
        raise ValueError(f"raters labelled {len(first)} and {len(second)} items")
    n = len(first)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(first, second, strict=True)) / n
    counts_first, counts_second = Counter(first), Counter(second)
    expected = sum(counts_first[c] * counts_second[c] for c in counts_first) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def pairwise_agreement(labels: list) -> float:
    """Share of annotator pairs on one item that gave the same label."""
    combos = list(itertools.combinations(labels, 2))
    return sum(x == y for x, y in combos) / len(combos)


def annotator_statistics(records: Iterable[dict], use_better: bool = False) -> dict:
    """Per-annotator counts, per-item agreement where several annotators overlap, and Cohen's kappa per pair."""
    items = by_item(latest_judgements(records))
    per_annotator: dict[str, Counter] = defaultdict(Counter)
    for judged in items.values():
        for name, record in judged.items():
            per_annotator[name][verdict_of(record, use_better)] += 1
            per_annotator[name]["acceptable_answers"] += bool(record["acceptable_a"]) + bool(record["acceptable_b"])
    shared = []
    for item_id, judged in items.items():
        if len(judged) > 1:
            verdicts = {name: verdict_of(record, use_better) for name, record in judged.items()}
            shared.append(
                {"item_id": item_id, "verdicts": verdicts, "agreement": pairwise_agreement(list(verdicts.values()))}
            )
    return {
        "annotators": {
            name: {"judged": sum(v for k, v in counts.items() if k != "acceptable_answers"), **dict(counts)}
            for name, counts in sorted(per_annotator.items())
        },
        "items_judged": len(items),
        "items_with_several_annotators": len(shared),
        "mean_item_agreement": (sum(s["agreement"] for s in shared) / len(shared)) if shared else None,
        "per_item": shared,
        "annotator_pairs": _annotator_pair_statistics(items, sorted(per_annotator), use_better),
    }


def _annotator_pair_statistics(items: dict[str, dict[str, dict]], names: list[str], use_better: bool) -> list[dict]:
    results = []
    for first, second in itertools.combinations(names, 2):
        both = [judged for judged in items.values() if first in judged and second in judged]
        if not both:
            continue
        verdicts_1 = [verdict_of(j[first], use_better) for j in both]
        verdicts_2 = [verdict_of(j[second], use_better) for j in both]
        marks_1 = [j[first][f"acceptable_{side}"] for j in both for side in "ab"]
        marks_2 = [j[second][f"acceptable_{side}"] for j in both for side in "ab"]
        results.append(
            {
                "annotators": [first, second],
                "overlap": len(both),
                "verdict_agreement": sum(x == y for x, y in zip(verdicts_1, verdicts_2, strict=True)) / len(both),
                "verdict_kappa": cohen_kappa(verdicts_1, verdicts_2),
                "acceptable_agreement": sum(x == y for x, y in zip(marks_1, marks_2, strict=True)) / len(marks_1),
                "acceptable_kappa": cohen_kappa(marks_1, marks_2),
            }
        )
    return results


# ---------------------------------------------------------------- model (judge) preferences


def score_level(score: float) -> int:
    """The integer level a score falls in (7.5 -> 7, as the paper takes the first integer of the reply)."""
    return math.floor(score)


def usable_scores(scores: Iterable[dict]) -> list[dict]:
    """Scored rows only (unparsed and failed requests carry no preference), sorted by id for determinism."""
    rows = [s for s in scores if s.get("status") == "ok" and s.get("score") is not None]
    return sorted(rows, key=lambda s: s["score_id"])


def split_levels(rows: list[dict], test_fraction: float, seed: int) -> dict[str, dict[int, list[dict]]]:
    """{split: {level: rows}}: each level is shuffled (seeded) and its first test_fraction goes to test."""
    levels: dict[int, list[dict]] = defaultdict(list)
    for row in rows:
        levels[score_level(row["score"])].append(row)
    splits: dict[str, dict[int, list[dict]]] = {"train": {}, "test": {}}
    for level in sorted(levels):
        members = list(levels[level])
        random.Random(f"{seed}:level:{level}").shuffle(members)
        n_test = int(len(members) * test_fraction)
        for split, part in (("test", members[:n_test]), ("train", members[n_test:])):
            if part:
                splits[split][level] = part
    return splits


def sample_across_levels(levels: dict[int, list[dict]], n: int, rng: random.Random) -> list[tuple[dict, dict]]:
    """Up to n distinct (higher, lower) pairs: two different levels drawn uniformly, then one item of each."""
    names = sorted(levels)
    if len(names) < 2 or n <= 0:
        return []
    possible = sum(len(levels[x]) * len(levels[y]) for x, y in itertools.combinations(names, 2))
    if n * 2 >= possible:
        everything = [
            (high, low) for x, y in itertools.combinations(names, 2) for low in levels[x] for high in levels[y]
        ]
        rng.shuffle(everything)
        return everything[:n]
    chosen: list[tuple[dict, dict]] = []
    seen: set[tuple[str, str]] = set()
    while len(chosen) < n:
        low_level, high_level = sorted(rng.sample(names, 2))
        high, low = rng.choice(levels[high_level]), rng.choice(levels[low_level])
        if (high["score_id"], low["score_id"]) not in seen:
            seen.add((high["score_id"], low["score_id"]))
            chosen.append((high, low))
    return chosen


def sample_same_question(rows: list[dict], n: int, rng: random.Random) -> list[tuple[dict, dict]]:
    """Up to n (higher, lower) pairs of answers to the same question at different levels."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row.get("pair_id"), row["question"])].append(row)
    candidates = [
        (x, y) if score_level(x["score"]) > score_level(y["score"]) else (y, x)
        for members in groups.values()
        for x, y in itertools.combinations(members, 2)
        if score_level(x["score"]) != score_level(y["score"])
    ]
    rng.shuffle(candidates)
    return candidates[:n]


def model_pairs(
    scores: Iterable[dict], n: int, seed: int, test_fraction: float = 0.2, pairing: str = "across"
) -> list[dict]:
    """n pair rows (train then test, test_fraction of them held out), reproducible from the seed."""
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {pairing!r}; known: {list(PAIRINGS)}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rows = usable_scores(scores)
    n_test = round(n * test_fraction)
    wanted = {"train": n - n_test, "test": n_test}
    result = []
    if pairing == "across":
        for split, levels in split_levels(rows, test_fraction, seed).items():
            chosen = sample_across_levels(levels, wanted[split], random.Random(f"{seed}:{split}"))
            result += [_model_pair_row(high, low, split) for high, low in chosen]
    else:
        for split in ("train", "test"):
            members = [
                r for r in rows if stable_split(f"{r.get('pair_id')}\n{r['question']}", test_fraction, seed) == split
            ]
            chosen = sample_same_question(members, wanted[split], random.Random(f"{seed}:{split}"))
            result += [_model_pair_row(high, low, split) for high, low in chosen]
    return result


def _model_pair_row(high: dict, low: dict, split: str) -> dict:
    return {
        "pair_key": f"model:{high['score_id']}>{low['score_id']}",
        "pair_id": high.get("pair_id") or "",
        "image": None,
        "caption": high.get("caption") or "",
        "mention": high.get("mention") or "",
        "question": high["question"],
        "chosen": high["answer"],
        "rejected": low["answer"],
        "weight": 1.0,
        "origin": "model",
        "split": split,
        "chosen_id": high["score_id"],
        "rejected_id": low["score_id"],
        "rejected_pair_id": low.get("pair_id") or "",
        "rejected_caption": low.get("caption") or "",
        "rejected_mention": low.get("mention") or "",
        "rejected_question": low["question"],
        "chosen_score": float(high["score"]),
        "rejected_score": float(low["score"]),
        "annotators": None,
        "comments": None,
        "figure_status": None,
    }


def mixed_pairs(clinician: list[dict], model: list[dict], clinician_weight: float) -> list[dict]:
    """The selector's training set: clinician pairs weighted w, model pairs weighted 1."""
    if clinician_weight <= 0:
        raise ValueError(f"clinician weight must be positive, got {clinician_weight}")
    return [dict(row, weight=float(clinician_weight)) for row in clinician] + [dict(row, weight=1.0) for row in model]


# ---------------------------------------------------------------- judge vs clinicians


def answer_key(question: str, answer: str) -> str:
    """Match a judged answer to a clinician pair by its text (whitespace-insensitive)."""
    text = " ".join(question.split()) + "\n" + " ".join(answer.split())
    return hashlib.sha256(text.encode()).hexdigest()


def judge_agreement(pairs: Iterable[dict], scores: Iterable[dict]) -> dict:
    """How often the judge scores the clinicians' chosen answer above the rejected one. `missing` counts pairs with
    an answer that has no score; `not_judged` those with an answer the judge was never given (it judged another
    candidate set), listed in `missing_pairs` (pair key, item, sides)."""
    scores = list(scores)
    seen = {answer_key(s["question"], s["answer"]) for s in scores if s.get("question") and s.get("answer")}
    lookup = {answer_key(s["question"], s["answer"]): s["score"] for s in usable_scores(scores)}
    counts = Counter()
    missing = []
    for pair in pairs:
        keys = {
            "chosen": answer_key(pair["question"], pair["chosen"]),
            "rejected": answer_key(pair["rejected_question"] or pair["question"], pair["rejected"]),
        }
        chosen, rejected = lookup.get(keys["chosen"]), lookup.get(keys["rejected"])
        if chosen is None or rejected is None:
            counts["missing"] += 1
            never = [side for side, key in keys.items() if key not in seen]
            if never:
                counts["not_judged"] += 1
                item = (pair.get("chosen_id") or "").rsplit("#", 1)[0] or pair.get("pair_key")
                missing.append({"pair_key": pair.get("pair_key"), "item_id": item, "not_judged": never})
        elif chosen > rejected:
            counts["agree"] += 1
        elif chosen < rejected:
            counts["disagree"] += 1
        else:
            counts["tie"] += 1
    compared = counts["agree"] + counts["disagree"] + counts["tie"]
    decided = counts["agree"] + counts["disagree"]
    return {
        "pairs": compared + counts["missing"],
        **{k: counts[k] for k in ("agree", "disagree", "tie", "missing", "not_judged")},
        "agreement": counts["agree"] / compared if compared else None,
        "agreement_without_ties": counts["agree"] / decided if decided else None,
        "missing_pairs": missing,
    }
