"""The selector: losses by hand, a tiny CLIP-family model that trains, save/load, selection with ties, text-only."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from selector_helpers import (  # noqa: E402
    candidate_rows,
    preference_rows,
    save_selector,
    tiny_selector,
    tiny_tokenizer,
    write_candidates,
    write_figures,
)

from tests.fakes.card_rules import card_errors  # noqa: E402
from vital_hub.selector.losses import bradley_terry, get_loss, pairwise_hinge, preference_loss  # noqa: E402
from vital_hub.selector.text import candidate_text, first_round, selector_text  # noqa: E402

PAIR_IDS = [f"3000{i}_F{i}" for i in range(6)]
# Tiny shards, batches and chunks, so that a handful of candidates exercises sharding, batching and resume.
SMALL_SCORING = ["--shard-size", "5", "--batch-size", "3", "--chunk-size", "2", "--num-workers", "0", "--no-progress"]
CHOSEN, REJECTED = torch.tensor([0.9, 0.2]), torch.tensor([0.1, 0.6])


def train_args(tmp_path, **overrides):
    from trl import RewardConfig

    settings = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
    )
    return RewardConfig(**{**settings, **overrides})


@pytest.fixture
def tokenizer(tmp_path):
    return tiny_tokenizer(tmp_path / "tokenizer")


@pytest.fixture
def preferences(tmp_path):
    from vital_hub.preferences.repo import write_config

    images = write_figures(tmp_path / "figures", PAIR_IDS)
    write_config(tmp_path / "prefs", "mixed", preference_rows(PAIR_IDS))
    return tmp_path / "prefs", images


# ---------------------------------------------------------------- text and losses


def test_selector_text_is_the_released_format():
    assert selector_text("Cap.", ["m1", "m2"], "What?\n<image>", "A.") == "Cap.m1\nm2Question:What?Answer:A."
    assert first_round([{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]) == ("q", "a")
    row = {
        "caption": "C",
        "mentions": None,
        "conversations": [{"from": "human", "value": "q\n<image>"}, {"from": "gpt", "value": "a"}],
    }
    assert candidate_text(row) == "CQuestion:qAnswer:a"
    with pytest.raises(ValueError, match="human then gpt"):
        first_round([{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}])


def test_hinge_matches_hand_computed_values():
    # per pair: max(0, 1 - 0.8) = 0.2 and max(0, 1 + 0.4) = 1.4
    assert pairwise_hinge(CHOSEN, REJECTED).item() == pytest.approx(0.8)
    assert pairwise_hinge(CHOSEN, REJECTED, torch.tensor([1.0, 10.0])).item() == pytest.approx((0.2 + 14.0) / 2)
    assert pairwise_hinge(CHOSEN, REJECTED, margin=0.5).item() == pytest.approx((0.0 + 0.9) / 2)


def test_bradley_terry_matches_hand_computed_values():
    first, second = -math.log(1 / (1 + math.exp(-0.8))), -math.log(1 / (1 + math.exp(0.4)))
    assert bradley_terry(CHOSEN, REJECTED).item() == pytest.approx((first + second) / 2, rel=1e-6)
    weighted = bradley_terry(CHOSEN, REJECTED, torch.tensor([2.0, 0.5])).item()
    assert weighted == pytest.approx((2 * first + 0.5 * second) / 2, rel=1e-6)


def test_weights_and_centring_change_the_loss_as_expected():
    base = preference_loss("hinge", CHOSEN, REJECTED)
    # Up-weighting the violated pair raises the loss; up-weighting a pair past the margin changes nothing.
    assert preference_loss("hinge", CHOSEN, REJECTED, torch.tensor([1.0, 100.0])) > base
    satisfied_chosen, satisfied_rejected = torch.tensor([2.0, 0.2]), torch.tensor([0.5, 0.6])
    assert preference_loss("hinge", satisfied_chosen, satisfied_rejected, torch.tensor([50.0, 1.0])).item() == (
        pytest.approx(preference_loss("hinge", satisfied_chosen, satisfied_rejected).item())
    )
    centred = preference_loss("bradley_terry", CHOSEN, REJECTED, center_rewards_coefficient=0.1)
    penalty = 0.1 * ((1.0**2 + 0.8**2) / 2)
    assert centred.item() == pytest.approx(bradley_terry(CHOSEN, REJECTED).item() + penalty, rel=1e-6)
    with pytest.raises(ValueError, match="known: hinge, bradley_terry"):
        get_loss("focal")


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("kind", ["clip", "siglip", "biomedclip"])
def test_save_load_gives_identical_scores(tmp_path, tokenizer, kind):
    from transformers import AutoModel

    model = tiny_selector(kind, tokenizer).eval()
    folder = save_selector(model, tokenizer, tmp_path / "selector")
    reloaded = AutoModel.from_pretrained(folder).eval()
    assert type(reloaded).__name__ == "SelectorModel" and reloaded.config.backbone == model.config.backbone
    ids = tokenizer(["the lesion shows", "normal chest"], padding=True, return_tensors="pt")
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        before = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=pixels).logits
        after = reloaded(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=pixels).logits
    assert before.shape == (2, 1) and torch.equal(before, after)
    assert ((before > 0) & (before < 1)).all()  # the paper's sigmoid
    # One image shared by k texts gives the same scores as the image repeated.
    texts = torch.cat([ids["input_ids"], ids["input_ids"]])
    with torch.no_grad():
        shared = model(input_ids=texts, attention_mask=torch.ones_like(texts), pixel_values=pixels).logits
        repeated = model(
            input_ids=texts, attention_mask=torch.ones_like(texts), pixel_values=pixels.repeat(2, 1, 1, 1)
        )
    torch.testing.assert_close(shared, repeated.logits)


def test_head_widths_follow_the_backbone(tokenizer):
    model = tiny_selector("clip", tokenizer)
    assert model.head[0].in_features == 16 + 16  # text projection + image projection
    siglip = tiny_selector("siglip", tokenizer)
    assert siglip.head[0].in_features == 32 + 32  # SigLIP has no projection: the towers' widths


def test_tiny_clip_selector_trains_and_reports_the_paper_metrics(tmp_path, tokenizer, preferences):
    from vital_hub.selector.data import FigureImages
    from vital_hub.selector.trainer import SelectorRewardTrainer, SelectorScriptArguments, load_pairs

    repo, images = preferences
    train, test = load_pairs(SelectorScriptArguments(dataset_name=str(repo), clinician_weight=10.0))
    assert len(train) + len(test) == 18
    assert {row["weight"] for row in train if row["origin"] == "clinician"} == {10.0}
    assert {row["weight"] for row in train if row["origin"] == "model"} == {1.0}

    model = tiny_selector("clip", tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = SelectorRewardTrainer(
        model=model,
        args=train_args(tmp_path),
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
        images=FigureImages(images),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    moved = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("head.") for name in moved)
    assert any("vision_model" in name for name in moved) and any("text_model" in name for name in moved)

    metrics = trainer.evaluate()
    for key in (
        "eval_pairwise_accuracy",
        "eval_model_pair_accuracy",
        "eval_clinician_alignment",
        "eval_clinician_auc",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key


def test_preference_metrics_by_hand():
    from transformers import EvalPrediction

    from vital_hub.selector.trainer import preference_metrics

    scores = [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]]  # wins: yes, no, yes, yes
    metrics = preference_metrics(EvalPrediction(predictions=scores, label_ids=[1, 1, 0, 0]))
    assert metrics["pairwise_accuracy"] == 0.75
    assert metrics["model_pair_accuracy"] == 1.0 and metrics["clinician_alignment"] == 0.5
    # clinician chosen {0.9, 0.2} vs rejected {0.1, 0.8}: 3 of the 4 orderings are right.
    assert metrics["clinician_auc"] == pytest.approx(0.75)


def test_unreadable_figures_are_dropped_with_a_count(tmp_path, preferences):
    from vital_hub.selector.data import FigureImages
    from vital_hub.selector.trainer import SelectorScriptArguments, drop_pairs_without_images, load_pairs

    repo, images = preferences
    (images / f"{PAIR_IDS[0]}.jpg").write_bytes(b"")  # an empty download, as in the real qa50 images
    (images / f"{PAIR_IDS[1]}.jpg").write_bytes((images / f"{PAIR_IDS[2]}.jpg").read_bytes()[:100])  # truncated
    train, _ = load_pairs(SelectorScriptArguments(dataset_name=str(repo)))
    kept, dropped = drop_pairs_without_images(train, FigureImages(images), 32)
    bad = {PAIR_IDS[0], PAIR_IDS[1]}
    expected = sum(1 for row in train if {row["pair_id"], row["rejected_pair_id"]} & bad)
    assert dropped == expected > 0 and len(kept) == len(train) - expected


def test_weighting_the_kept_pairs_equals_weighting_before_dropping(tmp_path, preferences):
    """The sweep checks figures once and weights the kept pairs: per weight, the same rows as weighting first."""
    from vital_hub.selector.data import FigureImages
    from vital_hub.selector.trainer import (
        SelectorScriptArguments,
        drop_pairs_without_images,
        load_pairs,
        with_clinician_weight,
    )

    repo, images = preferences
    (images / f"{PAIR_IDS[0]}.jpg").write_bytes(b"")
    script_args = SelectorScriptArguments(dataset_name=str(repo))
    kept = [drop_pairs_without_images(split, FigureImages(images), 32)[0] for split in load_pairs(script_args)]
    for weight in (1.0, 100.0):
        weighted_first = [
            drop_pairs_without_images(split, FigureImages(images), 32)[0]
            for split in load_pairs(dataclasses.replace(script_args, clinician_weight=weight))
        ]
        for first, then in zip(weighted_first, kept, strict=True):
            assert with_clinician_weight(then, weight).to_list() == first.to_list()
        clinician = [row["weight"] for row in with_clinician_weight(kept[0], weight) if row["origin"] == "clinician"]
        assert clinician and set(clinician) == {weight}


# ---------------------------------------------------------------- selection


def test_rank_order_breaks_ties_by_candidate_id_and_quotas_keep_shares():
    from vital_hub.selector.select import allocate_quotas, rank_order, select_top

    ordered = rank_order([("b#0", 0.5), ("a#1", 0.9), ("a#0", 0.5), ("c#0", 0.5), ("d#0", 0.1)])
    assert [cid for cid, _ in ordered] == ["a#1", "a#0", "b#0", "c#0", "d#0"]
    assert [cid for cid, _ in select_top(ordered, 3, {})] == ["a#1", "a#0", "b#0"]
    domains = {"a#1": "mri", "a#0": "mri", "b#0": "mri", "c#0": "ct_scan", "d#0": "ct_scan"}
    assert allocate_quotas(3, {"mri": 3, "ct_scan": 2}) == {"mri": 2, "ct_scan": 1}
    kept = select_top(ordered, 3, domains, "proportional")
    assert [cid for cid, _ in kept] == ["a#1", "a#0", "c#0"]
    kept = select_top(ordered, 2, domains, {"ct_scan": 1.0})
    assert [cid for cid, _ in kept] == ["c#0", "d#0"]


def run_select(tmp_path, selector, candidates, images, out, *extra):
    from vital_hub.select_cli import main

    argv = [
        "--selector",
        str(selector),
        "--candidates",
        str(candidates),
        "--out",
        str(out),
        *SMALL_SCORING,
        *extra,
    ]
    if images is not None:
        argv += ["--images", str(images)]
    assert main(argv) == 0
    return pq.read_table(out / "selected.parquet").to_pylist(), json.loads((out / "selected.json").read_text())


def test_select_end_to_end_with_ties_resume_and_unreadable_images(tmp_path, tokenizer):
    model = tiny_selector("biomedclip", tokenizer)
    selector = save_selector(model, tokenizer, tmp_path / "selector")
    images = write_figures(tmp_path / "figures", PAIR_IDS)
    (images / f"{PAIR_IDS[5]}.jpg").write_bytes(b"")
    rows = candidate_rows(PAIR_IDS, samples=2)
    rows.append({**rows[0], "candidate_id": "zz#9", "status": "unparsed"})
    # An exact duplicate of candidate 0 under a smaller id: same figure, same text, hence the same score.
    rows.append({**rows[0], "candidate_id": f"{PAIR_IDS[0]}#!"})
    candidates = write_candidates(tmp_path / "candidates", rows)

    selected, records = run_select(tmp_path, selector, candidates, images, tmp_path / "out", "--top", "6")
    assert len(selected) == 6 and [r["rank"] for r in selected] == [1, 2, 3, 4, 5, 6]
    scores = [r["score"] for r in selected]
    assert scores == sorted(scores, reverse=True)
    assert {r["selector_revision"] for r in selected} == {
        json.loads((tmp_path / "out" / "selection.json").read_text())["selector_revision"]
    }
    ids = [r["candidate_id"] for r in selected]
    assert [rec["id"] for rec in records] == ids
    assert records[0]["conversations"][0]["value"].endswith("<image>") and records[0]["image"].endswith(".jpg")
    summary = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert summary["unreadable_images"] == 2 and summary["skipped_by_status"] == {"unparsed": 1}
    assert not any(cid.startswith(PAIR_IDS[5]) for cid in ids)

    all_scores = {}
    for shard in sorted((tmp_path / "out" / "scores").glob("shard-*.parquet")):
        all_scores.update({r["candidate_id"]: r["score"] for r in pq.read_table(shard).to_pylist()})
    twin, original = all_scores[f"{PAIR_IDS[0]}#!"], all_scores[f"{PAIR_IDS[0]}#0"]
    assert twin == original  # a real tie

    # Resume: finished shards are not scored again; a lost shard is redone and the result is identical.
    markers = sorted((tmp_path / "out" / "scores" / "completions").iterdir())
    assert len(markers) == 3
    markers[1].unlink()
    stamp = {m.name: m.stat().st_mtime_ns for m in markers if m.exists()}
    again, _ = run_select(tmp_path, selector, candidates, images, tmp_path / "out", "--top", "6")
    assert again == selected
    assert all(m.stat().st_mtime_ns == stamp[m.name] for m in markers if m.name in stamp)
    # Another k re-uses the scores; every readable candidate is kept and the tie is broken by candidate_id.
    everything, _ = run_select(tmp_path, selector, candidates, images, tmp_path / "out", "--top", "11")
    ids = [r["candidate_id"] for r in everything]
    assert len(ids) == 11 and ids[:6] == [r["candidate_id"] for r in selected]
    assert ids.index(f"{PAIR_IDS[0]}#!") == ids.index(f"{PAIR_IDS[0]}#0") - 1  # '#!' sorts before '#0'
    # Another selector's scores are never mixed into the same folder.
    other = save_selector(tiny_selector("biomedclip", tokenizer, seed=1), tokenizer, tmp_path / "other")
    with pytest.raises(SystemExit, match="another run"):
        run_select(tmp_path, other, candidates, images, tmp_path / "out", "--top", "6")


def test_text_only_selector_trains_and_selects_without_images(tmp_path, tokenizer, preferences):
    from transformers import AutoModel

    from vital_hub.selector.trainer import SelectorRewardTrainer, SelectorScriptArguments, load_pairs

    repo, _ = preferences
    model = tiny_selector("text", tokenizer)
    assert not model.config.uses_images and type(model.backbone).__name__ == "BertForSequenceClassification"
    train, test = load_pairs(SelectorScriptArguments(dataset_name=str(repo)))
    before = model.backbone.classifier.weight.detach().clone()
    trainer = SelectorRewardTrainer(
        model=model,
        args=train_args(tmp_path, max_steps=2),
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
        loss_type="bradley_terry",
    )
    trainer.train()
    assert not torch.equal(model.backbone.classifier.weight, before)
    assert "eval_clinician_auc" in trainer.evaluate()

    selector = save_selector(model, tokenizer, tmp_path / "text-selector")
    assert AutoModel.from_pretrained(selector).config.backbone == "text"
    candidates = write_candidates(tmp_path / "candidates", candidate_rows(PAIR_IDS, samples=1))
    selected, _ = run_select(tmp_path, selector, candidates, None, tmp_path / "out", "--top-percent", "50")
    assert len(selected) == 3


def test_select_refuses_an_image_selector_without_images(tmp_path, tokenizer):
    from vital_hub.select_cli import main

    selector = save_selector(tiny_selector("clip", tokenizer), tokenizer, tmp_path / "selector")
    candidates = write_candidates(tmp_path / "candidates", candidate_rows(PAIR_IDS[:2]))
    with pytest.raises(SystemExit, match="reads images"):
        main(
            ["--selector", str(selector), "--candidates", str(candidates), "--top", "1", "--out", str(tmp_path / "o")]
        )


# ---------------------------------------------------------------- recipes


def test_every_selector_recipe_parses():
    from trl import RewardConfig, TrlParser

    from vital_hub.selector.trainer import SelectorModelArguments, SelectorScriptArguments

    recipes = sorted((Path(__file__).parents[1] / "recipes" / "selector").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        parser = TrlParser((SelectorScriptArguments, RewardConfig, SelectorModelArguments))
        # bf16 stays the recipes' GPU default; this CPU machine overrides it as a user would.
        overrides = ["--bf16", "false", "--use_cpu", "true"]
        script_args, training_args, model_args = parser.parse_args_and_config(["--config", str(recipe), *overrides])
        assert script_args.loss_type in ("hinge", "bradley_terry"), recipe
        assert training_args.output_dir, recipe


def test_two_processes_select_what_one_selects(tmp_path, tokenizer):
    """Shards, not processes, define the work: torchrun with 2 CPU processes gives the single process's top k."""
    import os
    import shutil
    import subprocess

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    selector = save_selector(tiny_selector("biomedclip", tokenizer), tokenizer, tmp_path / "selector")
    images = write_figures(tmp_path / "figures", PAIR_IDS)
    candidates = write_candidates(tmp_path / "candidates", candidate_rows(PAIR_IDS, samples=3))
    single, _ = run_select(tmp_path, selector, candidates, images, tmp_path / "one", "--top", "7")
    args = [
        "--selector",
        str(selector),
        "--candidates",
        str(candidates),
        "--images",
        str(images),
        "--top",
        "7",
        "--out",
        str(tmp_path / "two"),
        *SMALL_SCORING,
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "-m", "vital_hub.cli", "select", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[rank 1] scored" in result.stdout
    assert pq.read_table(tmp_path / "two" / "selected.parquet").to_pylist() == single


def test_reward_recipe_runs_a_clinician_weight_sweep_and_writes_cards(tmp_path, tokenizer, preferences, monkeypatch):
    """recipes/reward.py end to end on CPU: two weights, a table, a plot, and a loadable selector with a card."""
    from transformers import AutoModel
    from trl import RewardConfig, TrlParser

    from vital_hub.selector.trainer import SelectorModelArguments, SelectorScriptArguments

    sys.path.insert(0, str(Path(__file__).parents[1] / "recipes"))
    import reward

    repo, images = preferences
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    out = tmp_path / "sweep"
    parser = TrlParser((SelectorScriptArguments, RewardConfig, SelectorModelArguments))
    recipe = Path(__file__).parents[1] / "recipes" / "selector" / "config_smoke.yaml"
    parsed = parser.parse_args_and_config(
        [
            "--config",
            str(recipe),
            "--bf16",
            "false",
            "--use_cpu",
            "true",
            "--dataset_name",
            str(repo),
            "--images_dir",
            str(images),
            "--tokenizer_name_or_path",
            str(tmp_path / "tokenizer"),
            "--output_dir",
            str(out),
            "--sweep_clinician_weights",
            "1",
            "100",
            "--max_steps",
            "2",
        ]
    )
    checks = []
    drop = reward.drop_pairs_without_images
    monkeypatch.setattr(reward, "drop_pairs_without_images", lambda *args: checks.append(args) or drop(*args))
    rows = reward.main(*parsed)
    assert len(checks) == 2  # figures checked once (train and test), not once per weight
    assert [row["clinician_weight"] for row in rows] == [1.0, 100.0]
    assert all(0.0 <= row["eval_clinician_auc"] <= 1.0 for row in rows)
    table = (out / "sweep.md").read_text()
    assert "eval_clinician_alignment" in table and len(table.strip().splitlines()) == 4
    assert (out / "sweep.png").stat().st_size > 0 and (out / "sweep.csv").exists()
    card = (out / "w100" / "README.md").read_text()
    assert "library_name: transformers" in card and "| clinician pair weight | 100.0 |" in card
    assert "eval_clinician_auc" in card and "| loss | hinge" in card
    assert "(margin 1.0)" in card, "the margin the hinge used, not the unset option"
    assert "| training length | " in card and ", 2 steps (max_steps 2 configured) |" in card
    assert "trust_remote_code=True" in card and "import vital_hub" not in card
    assert "`attention_mask` is required" in card and "draft" in card and "centre-cropped" in card
    assert card_errors(card, "model") == []
    assert AutoModel.from_pretrained(out / "w100").config.backbone == "biomedclip"


def test_select_reads_figures_through_the_figure_store(tmp_path, tokenizer):
    """`--figures` goes through vital_hub.figures.store.open_figures (here: a plain folder of <pair_id>.jpg)."""
    pytest.importorskip("vital_hub.figures.store")
    selector = save_selector(tiny_selector("clip", tokenizer), tokenizer, tmp_path / "selector")
    figures = write_figures(tmp_path / "figures", PAIR_IDS)
    (figures / f"{PAIR_IDS[3]}.jpg").write_bytes(b"")
    candidates = write_candidates(tmp_path / "candidates", candidate_rows(PAIR_IDS, samples=1))
    selected, _ = run_select(
        tmp_path, selector, candidates, None, tmp_path / "out", "--top", "10", "--figures", str(figures)
    )
    summary = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert summary["scored"] == 5 and summary["unreadable_images"] == 1
    assert len(selected) == 5 and not any(r["candidate_id"].startswith(PAIR_IDS[3]) for r in selected)


def test_preference_collator_shapes_and_embedded_images(tokenizer):
    from selector_helpers import jpeg_bytes

    from vital_hub.selector.data import PreferenceCollator

    model = tiny_selector("clip", tokenizer)
    rows = preference_rows(PAIR_IDS, n_model=2, n_clinician=0)
    for row in rows:
        row["image"] = {"bytes": jpeg_bytes(1), "path": None}
    same = [{**rows[0], "rejected_pair_id": rows[0]["pair_id"]}, {**rows[1], "rejected_pair_id": None}]
    batch = PreferenceCollator(tokenizer, model.config)(same)
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["pixel_values"].dtype == torch.uint8 and batch["weight"].tolist() == [1.0, 1.0]
    assert tokenizer.decode(batch["input_ids"][2], skip_special_tokens=True).startswith(same[0]["caption"][:5])
    with pytest.raises(ValueError, match="no readable image"):  # the other figure is not embedded, no folder given
        PreferenceCollator(tokenizer, model.config)([{**rows[1], "rejected_pair_id": PAIR_IDS[4]}])


def test_saved_selector_loads_where_vital_hub_is_not_installed(tmp_path, tokenizer):
    import subprocess
    import sys

    model = tiny_selector("biomedclip", tokenizer)
    folder = save_selector(model, tokenizer, tmp_path / "selector")
    assert json.loads((folder / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "modeling.SelectorConfig",
        "AutoModel": "modeling.SelectorModel",
    }
    inputs = tokenizer(["a caption Question: what is it? Answer: a lesion"], return_tensors="pt")
    pixels = torch.zeros(
        1,
        3,
        model.config.backbone_config.vision_config.image_size,
        model.config.backbone_config.vision_config.image_size,
    )
    expected = model.eval()(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values=pixels
    ).logits
    script = f"""
import sys, torch
sys.modules["vital_hub"] = None  # any import of vital_hub now fails
from transformers import AutoModel
model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
ids = torch.tensor({inputs["input_ids"].tolist()}); mask = torch.tensor({inputs["attention_mask"].tolist()})
print(model(input_ids=ids, attention_mask=mask, pixel_values=torch.zeros({list(pixels.shape)})).logits.item())
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) == pytest.approx(expected.item(), abs=1e-6)
