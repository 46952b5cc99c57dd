"""Pair building, ties, agreement statistics, the judgement log and the preferences repo folder."""

import json
import random

import pytest
from sklearn.metrics import cohen_kappa_score

from vital_hub.preferences import pairs as P
from vital_hub.preferences.repo import has_config, read_config, write_config
from vital_hub.preferences.store import JudgementStore, read_judgements
from vital_hub.schema import RecordError


def judgement(item_id, a, b, annotator="ann", better=None, **extra):
    return {
        "item_id": item_id,
        "pair_id": item_id.split("#")[0],
        "question": f"Q {item_id}?",
        "answer_a": f"A of {item_id}",
        "answer_b": f"B of {item_id}",
        "caption": "Fig 1: CT.",
        "mentions": ["m1", "m2"],
        "acceptable_a": a,
        "acceptable_b": b,
        "better": better,
        "comment": "",
        "annotator": annotator,
        **extra,
    }


def test_verdicts_follow_the_acceptability_protocol():
    assert P.verdict_of(judgement("x", True, False)) == "a"
    assert P.verdict_of(judgement("x", False, True)) == "b"
    assert P.verdict_of(judgement("x", True, True)) == "tie"
    assert P.verdict_of(judgement("x", True, True, better="b")) == "tie"
    assert P.verdict_of(judgement("x", True, True, better="b"), use_better=True) == "b"
    assert P.verdict_of(judgement("x", False, False, better="a"), use_better=True) == "both_unacceptable"
    assert P.verdict_of(judgement("x", True, False, better="b")) == "conflict"
    assert P.verdict_of(judgement("x", True, False, better="a")) == "a"


def test_clinician_pairs_record_ties_and_both_unacceptable_without_pairing_them():
    records = [
        judgement("f1#q0", True, False),
        judgement("f2#q0", False, True),
        judgement("f3#q0", True, True),
        judgement("f4#q0", False, False),
        judgement("f5#q0", True, False, better="b"),
    ]
    pairs, outcomes = P.clinician_pairs(records)
    assert [p["pair_key"] for p in pairs] == ["clinician:f1#q0", "clinician:f2#q0"]
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("A of f1#q0", "B of f1#q0")
    assert (pairs[1]["chosen"], pairs[1]["rejected"]) == ("B of f2#q0", "A of f2#q0")
    assert pairs[0]["mention"] == "m1\nm2" and pairs[0]["origin"] == "clinician" and pairs[0]["split"] == "train"
    assert pairs[0]["rejected_question"] == pairs[0]["question"] and pairs[0]["chosen_id"] == "f1#q0#a"
    assert {o["item_id"]: o["outcome"] for o in outcomes} == {
        "f1#q0": "a",
        "f2#q0": "b",
        "f3#q0": "tie",
        "f4#q0": "both_unacceptable",
        "f5#q0": "conflict",
    }


def test_the_latest_judgement_of_an_annotator_wins():
    records = [judgement("f1#q0", True, False), judgement("f1#q0", False, True)]
    pairs, outcomes = P.clinician_pairs(records)
    assert len(pairs) == 1 and pairs[0]["chosen"] == "B of f1#q0"
    assert len(outcomes) == 1


def test_several_annotators_aggregate_by_rule():
    records = [
        judgement("f1#q0", True, False, "ann1"),
        judgement("f1#q0", True, False, "ann2"),
        judgement("f2#q0", True, False, "ann1"),
        judgement("f2#q0", False, True, "ann2"),
        judgement("f2#q0", True, False, "ann3"),
    ]
    pairs, outcomes = P.clinician_pairs(records, aggregate="unanimous")
    assert [p["pair_key"] for p in pairs] == ["clinician:f1#q0"] and pairs[0]["annotators"] == "ann1,ann2"
    assert {o["item_id"]: o["outcome"] for o in outcomes}["f2#q0"] == "disagreement"
    pairs, _ = P.clinician_pairs(records, aggregate="majority")
    assert [(p["pair_key"], p["chosen"]) for p in pairs] == [
        ("clinician:f1#q0", "A of f1#q0"),
        ("clinician:f2#q0", "A of f2#q0"),
    ]
    pairs, _ = P.clinician_pairs(records, aggregate="each")
    assert len(pairs) == 5 and "clinician:f2#q0@ann2" in {p["pair_key"] for p in pairs}
    with pytest.raises(ValueError, match="known"):
        P.clinician_pairs(records, aggregate="vote")


def test_clinician_split_is_stable_when_more_items_arrive():
    few = [judgement(f"f{i}#q0", True, False) for i in range(40)]
    more = few + [judgement(f"g{i}#q0", True, False) for i in range(40)]
    split_few = {p["pair_key"]: p["split"] for p in P.clinician_pairs(few, test_fraction=0.3, seed=1)[0]}
    split_more = {p["pair_key"]: p["split"] for p in P.clinician_pairs(more, test_fraction=0.3, seed=1)[0]}
    assert all(split_more[k] == v for k, v in split_few.items())
    assert 0 < sum(v == "test" for v in split_more.values()) < 80


@pytest.mark.parametrize(
    "first, second",
    [
        (["a", "b", "a", "tie", "a"], ["a", "b", "b", "tie", "a"]),
        ([True, True, False, False], [True, False, True, False]),
        (["a", "a", "b"], ["b", "b", "a"]),
        ([1, 2, 3, 1, 2, 3], [1, 2, 3, 1, 2, 3]),
    ],
)
def test_cohen_kappa_matches_sklearn(first, second):
    assert P.cohen_kappa(first, second) == pytest.approx(cohen_kappa_score(first, second))


def test_cohen_kappa_is_undefined_when_both_raters_use_one_label():
    assert P.cohen_kappa(["a", "a"], ["a", "a"]) is None
    assert P.cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        P.cohen_kappa(["a"], ["a", "b"])


def test_annotator_statistics_report_agreement_and_kappa_on_overlap():
    records = [
        judgement("f1#q0", True, False, "ann1"),
        judgement("f1#q0", True, False, "ann2"),
        judgement("f2#q0", True, True, "ann1"),
        judgement("f2#q0", False, True, "ann2"),
        judgement("f3#q0", False, False, "ann1"),
        judgement("f3#q0", False, False, "ann2"),
        judgement("f4#q0", True, False, "ann1"),
        judgement("f4#q0", True, False, "ann3"),
        judgement("f5#q0", True, False, "ann1"),
    ]
    stats = P.annotator_statistics(records)
    assert stats["annotators"]["ann1"] == {
        "judged": 5,
        "a": 3,
        "tie": 1,
        "both_unacceptable": 1,
        "acceptable_answers": 5,
    }
    assert stats["items_judged"] == 5 and stats["items_with_several_annotators"] == 4
    per_item = {s["item_id"]: s["agreement"] for s in stats["per_item"]}
    assert per_item == {"f1#q0": 1.0, "f2#q0": 0.0, "f3#q0": 1.0, "f4#q0": 1.0}
    assert stats["mean_item_agreement"] == pytest.approx(0.75)
    pair_12 = next(p for p in stats["annotator_pairs"] if p["annotators"] == ["ann1", "ann2"])
    assert pair_12["overlap"] == 3 and pair_12["verdict_agreement"] == pytest.approx(2 / 3)
    assert pair_12["verdict_kappa"] == pytest.approx(
        cohen_kappa_score(["a", "tie", "both_unacceptable"], ["a", "b", "both_unacceptable"])
    )
    marks_1, marks_2 = [True, False, True, True, False, False], [True, False, False, True, False, False]
    assert pair_12["acceptable_kappa"] == pytest.approx(cohen_kappa_score(marks_1, marks_2))
    pair_13 = next(p for p in stats["annotator_pairs"] if p["annotators"] == ["ann1", "ann3"])
    assert pair_13["overlap"] == 1 and pair_13["verdict_kappa"] is None
    assert not any(p["annotators"] == ["ann2", "ann3"] for p in stats["annotator_pairs"])


def scores_at_levels(counts: dict[float, int]) -> list[dict]:
    rows = []
    for score, count in counts.items():
        for i in range(count):
            rows.append(
                {
                    "score_id": f"s{score}-{i}",
                    "pair_id": f"p{score}-{i}",
                    "question": f"q{score}-{i}",
                    "answer": f"a{score}-{i}",
                    "caption": f"c{score}",
                    "mention": "",
                    "score": score,
                    "status": "ok",
                }
            )
    return rows


def test_model_pairs_cross_levels_hold_out_twenty_percent_per_level_and_are_seeded():
    scores = scores_at_levels({9: 50, 7.5: 50, 3: 50, 0: 50}) + [
        {"score_id": "bad", "question": "q", "answer": "a", "score": None, "status": "unparsed"}
    ]
    pairs = P.model_pairs(scores, n=500, seed=3)
    assert len(pairs) == 500
    assert sum(p["split"] == "test" for p in pairs) == 100
    assert all(P.score_level(p["chosen_score"]) > P.score_level(p["rejected_score"]) for p in pairs)
    assert len({p["pair_key"] for p in pairs}) == 500
    train_items = {x for p in pairs if p["split"] == "train" for x in (p["chosen_id"], p["rejected_id"])}
    test_items = {x for p in pairs if p["split"] == "test" for x in (p["chosen_id"], p["rejected_id"])}
    assert not train_items & test_items
    assert len(test_items) <= 40 and "bad" not in train_items | test_items
    for level_prefix in ("s9-", "s7.5-", "s3-", "s0-"):
        assert len([x for x in test_items if x.startswith(level_prefix)]) <= 10
    first_pair = pairs[0]
    assert first_pair["rejected_question"] != first_pair["question"] and first_pair["weight"] == 1.0
    shuffled = list(scores)
    random.Random(0).shuffle(shuffled)
    assert P.model_pairs(shuffled, n=500, seed=3) == pairs
    assert P.model_pairs(scores, n=500, seed=4) != pairs


def test_model_pairs_stop_at_what_the_levels_allow():
    assert P.model_pairs(scores_at_levels({5: 10}), n=100, seed=0) == []
    pairs = P.model_pairs(scores_at_levels({8: 2, 2: 3}), n=100, seed=0, test_fraction=0.0)
    assert len(pairs) == 6 and len({p["pair_key"] for p in pairs}) == 6


def test_same_question_pairing_keeps_question_and_figure():
    rows = []
    for q in range(20):
        for side, score in (("a", 8), ("b", 3)):
            rows.append(
                {
                    "score_id": f"c{q}#q0#{side}",
                    "pair_id": f"p{q}",
                    "question": f"q{q}",
                    "answer": f"ans {side}{q}",
                    "score": score,
                    "status": "ok",
                }
            )
    pairs = P.model_pairs(rows, n=20, seed=0, pairing="same-question", test_fraction=0.0)
    assert len(pairs) == 20
    assert all(p["rejected_question"] == p["question"] and p["chosen"].startswith("ans a") for p in pairs)


def test_mixed_weights_clinician_pairs_and_keeps_origin():
    clinician, _ = P.clinician_pairs([judgement("f1#q0", True, False)])
    model = P.model_pairs(scores_at_levels({9: 3, 1: 3}), n=4, seed=0, test_fraction=0.0)
    mixed = P.mixed_pairs(clinician, model, clinician_weight=100)
    assert [(r["origin"], r["weight"]) for r in mixed] == [("clinician", 100.0)] + [("model", 1.0)] * 4
    with pytest.raises(ValueError):
        P.mixed_pairs(clinician, model, 0)


def test_judge_agreement_counts_agreement_ties_and_missing_scores():
    records = [judgement(f"f{i}#q0", True, False) for i in range(4)]
    pairs, _ = P.clinician_pairs(records)
    score = {"f0": (9, 2), "f1": (3, 6), "f2": (5, 5)}
    scores = [
        {
            "score_id": f"{f}{side}",
            "question": f"Q {f}#q0?",
            "answer": f"{side.upper()}  of {f}#q0",
            "score": s,
            "status": "ok",
        }
        for f, (sa, sb) in score.items()
        for side, s in (("a", sa), ("b", sb))
    ]
    result = P.judge_agreement(pairs, scores)
    assert result == {
        "pairs": 4,
        "agree": 1,
        "disagree": 1,
        "tie": 1,
        "missing": 1,
        "not_judged": 1,
        "agreement": pytest.approx(1 / 3),
        "agreement_without_ties": 0.5,
        "missing_pairs": [{"pair_key": "clinician:f3#q0", "item_id": "f3#q0", "not_judged": ["chosen", "rejected"]}],
    }


def test_store_appends_durably_and_resumes(tmp_path):
    store = JudgementStore(tmp_path, "dr_a")
    store.append(judgement("f1#q0", True, False))
    store.append(judgement("f2#q0", False, False))
    assert store.resume_position(["f1#q0", "f2#q0", "f3#q0"]) == 2
    lines = (tmp_path / "dr_a.jsonl").read_text().splitlines()
    assert [json.loads(line)["item_id"] for line in lines] == ["f1#q0", "f2#q0"]
    assert all(json.loads(line)["annotator"] == "dr_a" for line in lines)
    reopened = JudgementStore(tmp_path, "dr_a")
    assert set(reopened.latest) == {"f1#q0", "f2#q0"} and reopened.count == 2
    JudgementStore(tmp_path, "dr_b").append(judgement("f1#q0", True, True))
    assert sorted(r["annotator"] for r in read_judgements(tmp_path)) == ["dr_a", "dr_a", "dr_b"]


def test_store_drops_a_line_torn_by_a_crash(tmp_path):
    store = JudgementStore(tmp_path, "dr_a")
    store.append(judgement("f1#q0", True, False))
    with open(store.path, "a") as handle:
        handle.write('{"item_id": "f2#q0", "accepta')
    assert [r["item_id"] for r in read_judgements(tmp_path)] == ["f1#q0"]
    reopened = JudgementStore(tmp_path, "dr_a")
    reopened.append(judgement("f3#q0", True, False))
    assert [r["item_id"] for r in read_judgements(tmp_path)] == ["f1#q0", "f3#q0"]


def test_store_rejects_bad_names_and_bad_judgements(tmp_path):
    for name in ("../evil", "", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="annotator name"):
            JudgementStore(tmp_path, name)
    store = JudgementStore(tmp_path, "dr_a")
    with pytest.raises(RecordError, match="acceptable_b"):
        store.append({"item_id": "x", "acceptable_a": True, "acceptable_b": "yes"})
    with pytest.raises(RecordError, match="better"):
        store.append({"item_id": "x", "acceptable_a": True, "acceptable_b": True, "better": "c"})
    assert not store.path.exists() or store.path.read_text() == ""
    (tmp_path / "dr_c.jsonl").write_text('{"item_id": "x"}\n')
    with pytest.raises(RecordError, match=r"dr_c.jsonl.*record 0.*'x'.*acceptable_a"):
        read_judgements(tmp_path)


def test_repo_configs_load_with_datasets_and_splits(tmp_path):
    from datasets import load_dataset

    repo = tmp_path / "prefs"
    clinician, _ = P.clinician_pairs(
        [judgement(f"f{i}#q0", True, False) for i in range(10)], test_fraction=0.3, seed=0
    )
    model = P.model_pairs(scores_at_levels({9: 10, 1: 10}), n=20, seed=0)
    assert write_config(repo, "clinician", clinician) == {
        "train": sum(p["split"] == "train" for p in clinician),
        "test": sum(p["split"] == "test" for p in clinician),
    }
    write_config(repo, "model", model)
    write_config(repo, "mixed", P.mixed_pairs(clinician, model, 10))
    assert has_config(repo, "mixed") and len(read_config(repo, "mixed")) == 30
    loaded = load_dataset(str(repo), "mixed", cache_dir=str(tmp_path / "cache"))
    assert loaded["train"].num_rows + loaded["test"].num_rows == 30
    assert set(loaded["test"]["split"]) == {"test"}
    assert loaded["train"].features["image"].__class__.__name__ == "Image"
    weights = {(r["origin"], r["weight"]) for r in loaded["train"]}
    assert weights == {("clinician", 10.0), ("model", 1.0)}
    write_config(repo, "mixed", P.mixed_pairs(clinician, model[:4], 10))
    reloaded = load_dataset(str(repo), "mixed", cache_dir=str(tmp_path / "cache"))
    assert sum(d.num_rows for d in reloaded.values()) == 14
