"""Loss on assistant tokens only, checked on the published chat templates of every recipe model.

The templates are the models' real ones (llava-hf/llava-1.5-7b-hf in both its published versions, and
llava-hf/llava-interleave-qwen-0.5b-hf); the tokenizer is a small offline BPE with the same special tokens.
"""

import pytest
import torch
from PIL import Image

from vital_hub.training.collator import encode_conversation
from vital_hub.training.data import model_messages
from vital_hub.training.masking import (
    IGNORE_INDEX,
    MaskingError,
    render_with_targets,
    truncate,
)
from vital_hub.training.synthetic import build_processor

IMAGE_TOKENS = 16  # (32 / 8) ** 2 patches for the tiny CLIP processor
ANSWERS = ("A chest x-ray with a left opacity.", "In the left lung, lower lobe.")
# Recipe template name -> (tokenizer adds BOS like Llama's, text before each answer, token closing each answer)
TEMPLATES = {
    "llava-1.5": (True, " ", "</s>"),
    "llava-1.5-no-markers": (True, " ", "</s>"),
    "llava-interleave-qwen": (False, "\n", "<|im_end|>"),
}


@pytest.fixture(scope="module", params=sorted(TEMPLATES))
def template(request):
    adds_bos, _, _ = TEMPLATES[request.param]
    return request.param, build_processor(request.param, adds_bos=adds_bos)


def row_messages(image_first: bool = False, with_image_part: bool = True) -> list[dict]:
    question = [{"type": "text", "text": "What is shown?"}]
    if with_image_part:
        image = {"type": "image", "text": None}
        question = [image, {"type": "text", "text": "\nWhat is shown?"}] if image_first else [
            {"type": "text", "text": "What is shown?\n"}, image]  # fmt: skip
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[0]}]},
        {"role": "user", "content": [{"type": "text", "text": "Where is the lesion?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ANSWERS[1]}]},
    ]


def picture():
    return Image.new("RGB", (48, 40), (120, 30, 200))


def target_runs(labels: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of positions that carry a label."""
    runs, start = [], None
    for position, value in enumerate([*labels.tolist(), IGNORE_INDEX]):
        if value != IGNORE_INDEX and start is None:
            start = position
        elif value == IGNORE_INDEX and start is not None:
            runs.append((start, position))
            start = None
    return runs


def test_every_assistant_token_is_a_target_and_nothing_else(template):
    name, processor = template
    _, lead, closing = TEMPLATES[name]
    features = encode_conversation(processor, model_messages(row_messages(), has_image=True), [picture()])
    ids, labels = features["input_ids"], features["labels"]
    kept = labels != IGNORE_INDEX
    assert torch.equal(labels[kept], ids[kept]), "a target must be the token itself"
    runs = target_runs(labels)
    assert len(runs) == len(ANSWERS), "one contiguous run of targets per assistant turn"
    decoded = [processor.tokenizer.decode(ids[start:end]) for start, end in runs]
    assert decoded == [f"{lead}{answer}{closing}" for answer in ANSWERS]
    # Everything outside the runs -- BOS, role headers, questions, separators, image tokens -- is ignored.
    outside = torch.ones_like(kept)
    for start, end in runs:
        outside[start:end] = False
    assert bool((labels[outside] == IGNORE_INDEX).all())
    image_id = processor.image_token_id
    assert int((ids == image_id).sum()) == IMAGE_TOKENS
    assert bool((labels[ids == image_id] == IGNORE_INDEX).all())
    assert "What is shown?" in processor.tokenizer.decode(ids[~kept])


def test_bos_is_added_once_and_never_a_target(template):
    name, processor = template
    adds_bos, _, _ = TEMPLATES[name]
    ids = encode_conversation(processor, model_messages(row_messages(), True), [picture()])["input_ids"]
    bos_count = int((ids == processor.tokenizer.bos_token_id).sum())
    assert bos_count == (1 if adds_bos else 0)


def test_turns_without_an_end_token_get_the_eos_and_others_keep_theirs(template):
    name, processor = template
    rendered = render_with_targets(processor, model_messages(row_messages(), True))
    _, _, closing = TEMPLATES[name]
    assert rendered.end_tokens == (closing, closing)
    assert rendered.text.count(closing) == (2 if closing == "</s>" else 4)  # qwen closes user turns too
    assert "</s>" not in rendered.text or closing == "</s>"


def test_image_before_or_after_the_question_trains_alike(template):
    _, processor = template
    after = encode_conversation(processor, model_messages(row_messages(image_first=False), True), [picture()])
    before = encode_conversation(processor, model_messages(row_messages(image_first=True), True), [picture()])
    assert torch.equal(after["input_ids"], before["input_ids"])
    assert torch.equal(after["labels"], before["labels"])


def test_a_record_without_image_placeholder_gets_the_image_first(template):
    _, processor = template
    messages = model_messages(row_messages(with_image_part=False), has_image=True)
    assert messages[0]["content"][0] == {"type": "image"}
    features = encode_conversation(processor, messages, [picture()])
    assert int((features["input_ids"] == processor.image_token_id).sum()) == IMAGE_TOKENS
    assert features["pixel_values"].shape[0] == 1


def test_text_only_conversation_has_no_image_tokens(template):
    _, processor = template
    messages = model_messages(row_messages(), has_image=False)
    assert all(part["type"] == "text" for message in messages for part in message["content"])
    features = encode_conversation(processor, messages, [])
    assert "pixel_values" not in features
    assert int((features["input_ids"] == processor.image_token_id).sum()) == 0
    assert len(target_runs(features["labels"])) == len(ANSWERS)


def test_truncation_keeps_image_tokens_whole(template):
    _, processor = template
    features = encode_conversation(processor, model_messages(row_messages(), True), [picture()])
    cut = truncate(features, len(features["input_ids"]) - 3, processor.image_token_id)
    assert len(cut["input_ids"]) == len(features["input_ids"]) - 3
    assert torch.equal(cut["labels"], features["labels"][: len(cut["labels"])])
    with pytest.raises(MaskingError, match="cuts through the image tokens"):
        truncate(features, 5, processor.image_token_id)


def test_a_template_that_rewrites_earlier_turns_is_refused():
    processor = build_processor("llava-1.5")
    # Renders "(last)" after the final message only: turn 1 is not a prefix of the whole conversation.
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'][0]['text'] }}{% if loop.last %} (last){% endif %}\n{% endfor %}"  # noqa: E501
    messages = model_messages(row_messages(with_image_part=False), has_image=False)
    with pytest.raises(MaskingError, match="turn 1"):
        render_with_targets(processor, messages, chat_template=template)


def test_stock_trl_collator_would_train_on_image_tokens():
    """Why the project masks itself: TRL's VLM collator labels every token, image placeholders included."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    processor = build_processor("llava-1.5")
    row = {"images": [picture()], "messages": model_messages(row_messages(), True)}
    batch = DataCollatorForVisionLanguageModeling(processor)([row])
    image_positions = batch["input_ids"] == processor.image_token_id
    assert int(image_positions.sum()) == IMAGE_TOKENS
    assert bool((batch["labels"][image_positions] != IGNORE_INDEX).all())
