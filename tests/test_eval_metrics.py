"""VQA metric cases derived from LLaVA-Med's evaluation code (https://github.com/microsoft/LLaVA-Med): its rules
with their quirks, and the strict fixes."""

import pytest

from vital_hub.eval.metrics import metric_path
from vital_hub.eval.metrics.med_vqa.vqa_scoring import (
    normalize_llava_med,
    normalize_strict,
    score_all,
    score_one,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("left-sided", "left sided"),  # no space next to '-': it becomes a space
        ("left - sided", "left sided"),  # a space next to '-' somewhere: every '-' is deleted
        ("left-sided, right - sided", "leftsided right sided"),  # ... including the one with no space
        ("1,000 left-sided", "1000 leftsided"),  # digit-comma-digit: all punctuation deleted
        ("(pleural) effusion?", "pleural effusion"),
        ("x/y", "x y"),
    ],
)
def test_llava_med_punctuation(text, expected):
    assert normalize_llava_med(text) == expected


def test_llava_med_periods_deleted_unless_before_a_digit():
    assert normalize_llava_med("Lesion 3.5 cm.") == "lesion 3.5 cm"
    assert normalize_llava_med("e.g. mass") == "eg mass"
    # The original passes re.UNICODE (32) as re.sub's count: only 32 periods go per pass.
    assert normalize_llava_med("x" + "." * 40) == "x" + "." * 8


def test_number_words_articles_and_contractions():
    assert normalize_llava_med("The Two lesions and none") == "2 lesions and 0"
    assert normalize_llava_med("an apple a day") == "apple day"
    assert normalize_llava_med("dont isnt") == "don't isn't"
    # The table's capitalised keys never match lower-cased words: "Im" stays "im".
    assert normalize_llava_med("Im") == "im"
    assert normalize_strict("Im dont") == "i'm don't"


def test_closed_no_matches_nodule_in_llava_med_but_not_in_strict():
    prediction = "There is a nodule in the left lung."
    assert score_one(prediction, "no", "CLOSED", "llava-med") == 1.0
    assert score_one(prediction, "no", "CLOSED", "strict") == 0.0
    assert score_one("yes", "no", "CLOSED", "llava-med") == 0.0
    assert score_one("No, there is no effusion.", "no", "CLOSED", "strict") == 1.0
    assert score_one("Yes. No effusion is seen.", "no", "CLOSED", "strict") == 0.0  # the first yes/no decides


def test_closed_yes_no_rule_of_run_eval():
    # "eyes" holds "yes": a substring hit; run_eval.py's extra rule then accepts it too (it holds "yes").
    assert score_one("the eyes", "yes", "CLOSED", "llava-med", "substring") == 1.0
    assert score_one("left", "left", "CLOSED", "llava-med", "substring") == 1.0
    assert score_one("left", "left", "CLOSED", "llava-med", "substring-yes-no") == 0.0
    assert score_one("the eyes", "yes", "CLOSED", "strict") == 0.0


def test_open_recall_repeated_words_inflate_only_llava_med():
    assert score_one("lung lung", "left lung", "OPEN", "llava-med") == pytest.approx(2 / 3)
    assert score_one("lung lung", "left lung", "OPEN", "strict") == pytest.approx(1 / 2)
    assert score_one("the left lung.", "Left lung", "OPEN", "llava-med") == 1.0
    assert score_one("three lesions", "3", "OPEN", "strict") == 1.0
    assert score_one("", "lung", "OPEN", "llava-med") == 0.0


def test_open_recall_is_word_level_in_strict():
    # Substring-style matching would find "no" in "nodule"; the strict recall matches whole words.
    assert score_one("nodule", "no", "OPEN", "strict") == 0.0
    assert score_one("a right-sided mass", "right sided", "OPEN", "strict") == 1.0
    assert score_one("mass of 1,000 cells", "1000", "OPEN", "strict") == 1.0


def test_score_all_reports_x100_and_counts():
    result = score_all(
        ["yes", "nodule", "left lung"], ["yes", "no", "right lung"], ["CLOSED", "CLOSED", "OPEN"], compat="strict"
    )
    assert result["closed_accuracy"] == 50.0
    assert result["open_recall"] == 50.0
    assert (result["open_count"], result["closed_count"]) == (1, 2)
    with pytest.raises(ValueError, match="same length"):
        score_all(["a"], [], [])
    with pytest.raises(ValueError, match="OPEN or CLOSED"):
        score_one("a", "a", "MAYBE", "strict")
    with pytest.raises(ValueError, match="known"):
        score_one("a", "a", "OPEN", "fuzzy")


def test_evaluate_module_loads_offline_and_matches(tmp_path, monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_EVALUATE_CACHE", str(tmp_path / "evaluate"))
    predictions, references, types = ["nodule seen", "lung lung"], ["no", "left lung"], ["CLOSED", "OPEN"]
    for compat in ("llava-med", "strict"):
        metric = evaluate.load(metric_path("med_vqa"), config_name=compat, cache_dir=str(tmp_path / compat))
        result = metric.compute(predictions=predictions, references=references, answer_types=types)
        expected = score_all(predictions, references, types, compat=compat)
        assert result["open_recall"] == pytest.approx(expected["open_recall"])
        assert result["closed_accuracy"] == expected["closed_accuracy"]
    assert expected["closed_accuracy"] == 0.0  # strict, the last one
