"""Golden prompt assembly: system prompt, one demonstration per modality drawn by seed, then the query figure."""

import base64
import io
import json
import random

import pytest
from PIL import Image

from tests.conftest import shared_fixture
from tests.generation_support import make_demonstrations
from vital_hub.generation.prompts import (
    ImageError,
    PromptBuilder,
    PromptOptions,
    figure_context,
    get_prompt_set,
    image_data_url,
    load_demonstrations,
    prompt_set_from_file,
    reference_answer_request,
    request_seed,
    sample_demonstrations,
)
from vital_hub.schema import DOMAINS, RecordError

DEMOS = ("biomed_vital", "clinician_demonstrations.json")


def jpeg_bytes(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 40, 40)).save(buffer, format="JPEG")
    return buffer.getvalue()


def figure(**overrides) -> dict:
    base = {
        "pair_id": "28104940_F2",
        "fig_label": "Figure 2",
        "caption": "CT of the brain",
        "mentions": ["Brain CT showed a collection [ Figure 2 ] .", "Second mention ."],
        "domain": None,
        "image": jpeg_bytes(),
    }
    return {**base, **overrides}


def test_context_matches_the_reference_layout():
    assert figure_context("Fig. 3", "Cells.", ["one", "two"]) == (
        "Figure Caption:\nFig. 3: Cells.\n\nFigure Context:\n\t- one\n\t- two"
    )
    assert figure_context(None, "Cells.", []) == "Figure Caption:\nCells."
    assert figure_context(None, None, ["only"]) == "Figure Context:\n\t- only"


def test_golden_request_with_the_clinician_demonstrations():
    pool = load_demonstrations(shared_fixture(*DEMOS))
    assert len(pool) == 58
    builder = PromptBuilder(get_prompt_set("conversation"), pool, PromptOptions())
    seed = request_seed(0, "28104940_F2", 0)
    request = builder.build(figure(), seed)

    messages = request["messages"]
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 5 + ["user"]
    assert messages[0]["content"] == get_prompt_set("conversation").system
    chosen = sample_demonstrations(pool, random.Random(seed))
    assert [sorted(d.modalities & {m})[0] for d, m in zip(chosen, DOMAINS, strict=True)] == list(DOMAINS)
    assert len({d.pair_id for d in chosen}) == 5
    for position, demo in enumerate(chosen):
        assert messages[1 + 2 * position]["content"] == demo.context  # text only, as in the paper
        assert messages[2 + 2 * position]["content"] == demo.conversation

    by_id = {d.pair_id: d for d in pool}
    first = by_id["28104940_F2"]
    assert first.context == (
        "Figure Caption:\nFigure 2: Computed tomography scan of the brain demonstrating recurrence of extradural "
        "collection causing subfalcine herniation\n\nFigure Context:\n\t- Brain CT was immediately performed and "
        "showed recurrence of extradural collection ( 22HU ) with subfalcine herniation [ Figure 2 ] ."
    )
    assert first.conversation.startswith(
        "User: What modality is used to take this image?\n\n"
        "Assistant: The image is taken using a computed tomography (CT) scan modality.\n\n"
        "User: What does extradural collection mean in this context?"
    )
    assert first.conversation.count("\n\nUser: ") == 4 and "<image>" not in first.conversation

    query = messages[-1]["content"]
    assert query[0]["type"] == "image_url" and query[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "detail" not in query[0]["image_url"]
    assert query[1] == {
        "type": "text",
        "text": "Figure Caption:\nFigure 2: CT of the brain\n\nFigure Context:\n\t- Brain CT showed a collection "
        "[ Figure 2 ] .\n\t- Second mention .",
    }
    assert request["max_tokens"] == 4096 and request["seed"] == seed
    assert builder.build(figure(), seed) == request  # reproducible from the recorded seed


def test_demonstrations_are_resampled_per_request():
    pool = load_demonstrations(shared_fixture(*DEMOS))
    draws = {
        tuple(d.pair_id for d in sample_demonstrations(pool, random.Random(request_seed(0, "p", s))))
        for s in range(20)
    }
    assert len(draws) > 10


def test_golden_request_with_a_generated_pool(tmp_path):
    pool = load_demonstrations(make_demonstrations(tmp_path / "demos.json"))
    options = PromptOptions(max_tokens=512, temperature=0.7, detail="low", send_seed=False)
    request = PromptBuilder(get_prompt_set("dual-answer"), pool, options).build(figure(), 7)
    messages = request["messages"]
    assert set(request) == {"messages", "max_tokens", "temperature"}
    assert request["temperature"] == 0.7
    assert messages[0]["content"] == get_prompt_set("dual-answer").system
    demo_contexts = [m["content"] for m in messages[1:-1:2]]
    for modality, context in zip(DOMAINS, demo_contexts, strict=True):
        assert context.startswith(f"Figure Caption:\nFig. 1: A {modality} example ")
    chest_demos = {
        f"User: What modality is this?\n\nAssistant: It is chest_xray.\n\nUser: What is seen in example {n}?"
        f"\n\nAssistant: Finding {n}."
        for n in range(2)
    }
    assert messages[2]["content"] in chest_demos
    assert messages[-1]["content"][0]["image_url"]["detail"] == "low"


def test_demonstration_images_are_attached_on_request(tmp_path):
    pool = load_demonstrations(make_demonstrations(tmp_path / "demos.json", per_modality=1))
    images = tmp_path / "demo_images"
    images.mkdir()
    for demo in pool:
        (images / demo.image_file).write_bytes(jpeg_bytes())
    request = PromptBuilder(get_prompt_set("conversation"), pool, PromptOptions(demo_images=str(images))).build(
        figure(), 1
    )
    demo_turn = request["messages"][1]["content"]
    assert demo_turn[0]["type"] == "image_url" and demo_turn[1]["text"].startswith("Figure Caption:")


def test_prompt_versions_are_hashes_of_the_prompt():
    conversation = get_prompt_set("conversation")
    assert len(conversation.version) == 12
    assert conversation.version != get_prompt_set("dual-answer").version
    original = shared_fixture("biomed_vital", "prompts", "generation_system.txt")
    from_file = prompt_set_from_file(original, "conversation")
    assert from_file.system == original.read_text(encoding="utf-8")
    assert from_file.version != conversation.version
    with pytest.raises(KeyError, match="known: \\['conversation', 'dual-answer', 'reference-answer'\\]"):
        get_prompt_set("paper")


def test_image_resolution_cap_and_round_trip():
    raw = jpeg_bytes((800, 400))
    url = image_data_url(raw)
    assert base64.b64decode(url.split(",", 1)[1]) == raw
    capped = image_data_url(raw, max_side=200)
    with Image.open(io.BytesIO(base64.b64decode(capped.split(",", 1)[1]))) as image:
        assert image.size == (200, 100)


def test_bmp_is_converted_to_jpeg():
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buffer, format="BMP")
    assert image_data_url(buffer.getvalue()).startswith("data:image/jpeg;base64,")


@pytest.mark.parametrize("name", ["30420960_fig2.jpg", "27679760_fig2.jpg"])  # empty, cut off at 256 KiB
def test_broken_qa50_images_are_never_embedded(name):
    data = shared_fixture("llava_med", "qa50_images", name).read_bytes()
    with pytest.raises(ImageError):
        image_data_url(data)
    with pytest.raises(ImageError):
        PromptBuilder(get_prompt_set("conversation")).build(figure(image=data), 0)


def test_reference_request_without_image_goes_text_only():
    request, attached = reference_answer_request("What organ?\n<image>", "Figure Caption:\nX", None, PromptOptions())
    assert attached is False
    assert request["messages"][1]["content"] == [
        {"type": "text", "text": "Figure Caption:\nX\n\nQuestion: What organ?"}
    ]
    request, attached = reference_answer_request("What organ?\n<image>", "", jpeg_bytes(), PromptOptions())
    assert attached is True and request["messages"][1]["content"][0]["type"] == "image_url"


def test_bad_demonstration_pool_names_the_record(tmp_path):
    path = tmp_path / "demos.json"
    path.write_text(json.dumps([{"id": 5, "domain": {}, "conversations": [{"from": "human", "value": "q"}]}]))
    with pytest.raises(RecordError, match="record 0.*id 5.*no modality flag"):
        load_demonstrations(path)


def test_demonstration_images_are_encoded_once_per_file(tmp_path, monkeypatch):
    import vital_hub.generation.prompts as prompts

    pool = load_demonstrations(make_demonstrations(tmp_path / "demos.json", per_modality=1))
    images = tmp_path / "demo_images"
    images.mkdir()
    for demo in pool[1:]:  # the first demonstration has no image file: it goes as text, and is not retried
        (images / demo.image_file).write_bytes(jpeg_bytes())
    options = PromptOptions(demo_images=str(images))
    expected = [PromptBuilder(get_prompt_set("conversation"), pool, options).build(figure(), seed) for seed in (1, 2)]
    encoded = []

    def counting(data, max_side=None):
        encoded.append(data)
        return image_data_url(data, max_side)

    monkeypatch.setattr(prompts, "image_data_url", counting)
    builder = PromptBuilder(get_prompt_set("conversation"), pool, options)
    assert [builder.build(figure(), seed) for seed in (1, 2)] == expected
    assert len(encoded) == 2 + len(pool) - 1  # the query figure per request, each demonstration image once
    assert all(request["messages"][1]["content"] == pool[0].context for request in expected)


def test_an_image_between_one_and_two_bomb_limits_is_refused_from_its_header_not_decoded():
    """PIL refuses images over twice `MAX_IMAGE_PIXELS` and only warns below that; a valid 10000 x 10000 PNG
    (100 MB decoded, ~100 KB on disk) must be refused before any decoding, as the larger ones are."""
    from tests.fakes.pmc_server import grey_png

    side = 10_000
    assert Image.MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match=r"^image too large to decode: 10000x10000 px, over [\d,]+ px$"):
        image_data_url(grey_png(side), max_side=1024)
