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
