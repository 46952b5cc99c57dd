"""`vital eval report` on hand-written result files: every result keeps its own name, the model-index names Hub
dataset ids, and the details dataset and the updated card parse with huggingface_hub's own parsers and load with
`load_dataset(folder)` (its default config)."""

import json

import pytest

from tests.fakes.card_rules import card_errors
from vital_hub.cli import main as vital


def winrate_folder(folder, model_b: str, rate: float):
    folder.mkdir(parents=True)
    questions = {"win_rate_excluding_ties": rate, "win_rate_over_all": rate / 2, "ties": 1, "position_consistency": 90}
    summary = {
        "model_a": "tuned",
        "model_b": model_b,
        "judgements": {"status_counts": {"ok": 2}},
        "questions": questions,
    }
    (folder / "winrate_summary.json").write_text(json.dumps(summary))
    rows = [{"question_id": i, "verdict": "A", "judge_raw": "A is better"} for i in range(3)]
    (folder / "winrate_details.json").write_text(json.dumps(rows))
    return folder


def vqa_result(path, dataset: str, closed: float):
    details = path.with_suffix(".details.jsonl")
    details.write_text("".join(json.dumps({"question_id": i, "correct": i % 2 == 0}) + "\n" for i in range(4)))
    scores = {"open_recall": 40.0, "closed_accuracy": closed}
    result = {
        "dataset": dataset,
        "compat": "llava-med",
        **scores,
        "counts": {"open": 2, "closed": 2, "questions": 4},
        "variants": {"llava-med": scores, "strict": scores},
        "details_file": str(details),
    }
    path.write_text(json.dumps(result))
    return path


def test_results_keep_their_own_names_and_the_model_index_names_hub_datasets(tmp_path, capsys):
    from datasets import load_dataset
    from huggingface_hub import DatasetCard, ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    win_rad = winrate_folder(tmp_path / "vqa-rad" / "winrate", "base-rad", 60.0)
    win_slake = winrate_folder(tmp_path / "slake" / "winrate", "base-slake", 70.0)
    vqa_rad = vqa_result(tmp_path / "rad.json", "vqa-rad", 80.0)
    vqa_own = vqa_result(tmp_path / "own.json", "my-set", 55.0)
    card = tmp_path / "model" / "README.md"
    argv = ["eval", "report", "--out", str(tmp_path / "report"), "--model-id", "me/tuned", "--card", str(card)]
    argv += ["--winrate", str(win_rad), str(win_slake), "--vqa", str(vqa_rad), str(vqa_own)]
    argv += ["--dataset-id", "slake/winrate=BoKelvin/SLAKE"]
    assert vital(argv) == 0
    assert "my-set, vqa-rad/winrate left out of the model-index" in capsys.readouterr().err

    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert {name: r["model_b"] for name, r in summary["win_rate"].items()} == {
        "vqa-rad/winrate": "base-rad",
        "slake/winrate": "base-slake",
    }
    assert set(summary["medical_vqa"]) == {"vqa-rad", "my-set"}

    parsed = ModelCard.load(card)
    assert card_errors(card.read_text(), "model") == []
    _, results = model_index_to_eval_results(parsed.data.to_dict()["model-index"])
    assert sorted({(r.dataset_type, r.metric_type) for r in results}) == [
        ("BoKelvin/SLAKE", "win_rate"),
        ("flaviagiammarino/vqa-rad", "closed_accuracy"),
        ("flaviagiammarino/vqa-rad", "open_recall"),
    ]
    assert all("/" in r.dataset_type for r in results)

    details = tmp_path / "report" / "details"
    assert card_errors((details / "README.md").read_text(), "dataset") == []
    meta = DatasetCard.load(details / "README.md").data
    assert meta.license == "other" and meta.license_link == "LICENSE.md" and (details / "LICENSE.md").exists()
    assert meta.task_categories == ["visual-question-answering"] and meta.pretty_name
    assert sorted(c["config_name"] for c in meta.configs) == [
        "vqa_my_set",
        "vqa_vqa_rad",
        "winrate_slake_winrate",
        "winrate_vqa_rad_winrate",
    ]
    default = load_dataset(str(details), split="test", cache_dir=str(tmp_path / "ds"))
    assert default.num_rows in (3, 4)


def test_the_same_folder_twice_or_one_dataset_twice_is_an_error(tmp_path, capsys):
    win = winrate_folder(tmp_path / "winrate", "base", 50.0)
    argv = ["eval", "report", "--out", str(tmp_path / "r"), "--model-id", "m", "--winrate", str(win), str(win)]
    assert vital(argv) == 1
    assert "given twice to --winrate" in capsys.readouterr().err
    one, two = vqa_result(tmp_path / "a.json", "slake", 1.0), vqa_result(tmp_path / "b.json", "slake", 2.0)
    assert vital(["eval", "report", "--out", str(tmp_path / "r"), "--model-id", "m", "--vqa", str(one), str(two)]) == 1
    err = capsys.readouterr().err
    assert "b.json: a second --vqa result for dataset 'slake'" in err and "a.json" in err


@pytest.mark.parametrize("pair", ["slake", "=org/x", "slake=/tmp/x"])
def test_a_bad_dataset_id_is_one_line(tmp_path, capsys, pair):
    win = winrate_folder(tmp_path / "winrate", "base", 50.0)
    argv = ["eval", "report", "--out", str(tmp_path / "r"), "--model-id", "m", "--winrate", str(win)]
    assert vital([*argv, "--dataset-id", pair]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
