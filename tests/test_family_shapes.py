"""Size "full" of `family_models.build_family`: the published shape of each benchmarked checkpoint, checked by its
parameter count (built on the meta device, no memory) against the count its model page states, and by the image
tokens its image processor gives figures of PMC sizes and aspect ratios."""

import pytest
from PIL import Image

from vital_hub.training.family_models import build_family
from vital_hub.training.family_shapes import PUBLISHED, count_parameters, main

# Figures as PMC has them: small, wide, tall, larger than the collator's 1024 px cap.
SIDES = [(96, 96), (256, 256), (1024, 700), (300, 1024), (2000, 1500)]


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_full_size_has_the_published_parameter_count(family):
    built = count_parameters(build_family(family, "full")[1])
    published = PUBLISHED[family].params
    # The model pages give three significant figures.
    assert abs(built / published - 1) < 0.005, f"{family}: built {built:,} vs published {published:,.0f}"


def test_the_shapes_table_prints_built_against_published(capsys):
    assert main(["--family", "gemma3"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.split()[:4] == ["gemma3", "google/gemma-3-4b-it", "4.300B", "4.30B"]


def image_tokens(family: str, side: tuple[int, int]) -> int:
    processor, config = build_family(family, "full")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    text = processor.apply_chat_template(messages)
    batch = processor(text=[text], images=[[Image.new("RGB", side, (90, 40, 160))]], return_tensors="pt")
    return int((batch["input_ids"] == config.image_token_id).sum())


@pytest.mark.parametrize(
    "family,allowed",
    [
        ("gemma3", lambda n: n == 256),  # 896 px, pooled to 16x16
        ("qwen3-vl", lambda n: 64 <= n <= 640),  # the recipe's pixel budget, 32 px a token
        ("qwen2.5-vl", lambda n: 64 <= n <= 640),  # the recipe's pixel budget, 28 px a token
        ("internvl", lambda n: n % 256 == 0 and n <= 4 * 256),  # 448 px tiles, at most 3 and the thumbnail
        ("smolvlm", lambda n: n % 81 == 0 and n <= 17 * 81),  # 384 px tiles up to 1536 px, and the global view
    ],
)
def test_full_size_image_tokens_follow_the_published_processor(family, allowed):
    counts = [image_tokens(family, side) for side in SIDES]
    assert all(allowed(n) for n in counts), f"{family}: image tokens {counts} for figures {SIDES}"
    if family != "gemma3":
        assert len(set(counts)) > 1, f"{family}: every figure gave {counts[0]} tokens; the budget is not applied"


def test_sizes_full_for_published_families_only_and_7b_stays_qwen25():
    assert build_family("qwen2.5-vl", "7b")[1].to_dict() == build_family("qwen2.5-vl", "full")[1].to_dict()
    with pytest.raises(ValueError, match="'full' .* for gemma3, internvl, qwen2.5-vl, qwen3-vl, smolvlm"):
        build_family("idefics3", "full")
    with pytest.raises(ValueError, match="size '7b' is not built for gemma3"):
        build_family("gemma3", "7b")


def narrow(shape):
    """The published shape with narrow, 2-layer towers and a vocabulary just above the offline tokenizer's, and
    every size that sets image tokens kept: image and patch sizes, merges, pixel-shuffle factors, tokens per
    image, the image processor's budget."""
    from dataclasses import replace

    text = {**shape.text, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1024}  # fmt: skip
    vision = {**shape.vision, "hidden_size": 32, "intermediate_size": 64}
    if "depth" in vision:  # Qwen
        vision.update(depth=2, num_heads=2, out_hidden_size=64)
        vision.update({k: [1] for k in ("fullatt_block_indexes", "deepstack_visual_indexes") if k in vision})
    else:
        vision.update(num_hidden_layers=2, num_attention_heads=2)
    return replace(shape, text=text, vision=vision)


@pytest.mark.slow
@pytest.mark.parametrize("model,family", [("qwen3-vl", "qwen3-vl"), ("gemma3", "gemma3"),
                                          ("internvl3", "internvl"), ("smolvlm2", "smolvlm")])  # fmt: skip
def test_benchmark_trains_at_the_published_image_geometry(model, family, monkeypatch, tmp_path):
    """The benchmark's worker at `--size full` with narrow towers: full-size figures through the published image
    processor, TRL's collator (tuned) and the packed path, into a model of the published image geometry."""
    import importlib.util
    import json
    import sys

    from tests.conftest import REPO_ROOT
    from vital_hub.training import family_shapes

    monkeypatch.setitem(family_shapes.PUBLISHED, family, narrow(family_shapes.PUBLISHED[family]))
    spec = importlib.util.spec_from_file_location(
        "sft_throughput_geometry", REPO_ROOT / "benchmarks" / "sft_throughput.py"
    )
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)
    spec.loader.exec_module(bench)
    for case in ("lora-tuned-1gpu", "lora-packed-1gpu"):
        result = tmp_path / f"{case}.json"
        argv = ["--worker", case, "--result", str(result), "--model", model, "--size", "full", "--steps", "2"]
        assert bench.main([*argv, "--warmup", "1", "--batch-size", "2", "--workers", "0"]) == 0
        measured = json.loads(result.read_text())
        assert "error" not in measured, measured["error"]
        assert measured["tokens_per_s"] > 0 and measured["tokens_per_sample"] > 256
