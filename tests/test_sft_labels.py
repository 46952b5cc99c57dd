"""The labels of every batch are checked against the assistant texts, and every token-aligned input follows the ids.

After masking, the labelled tokens of a row, decoded, must read as that row's assistant answers, each followed by
the token that closes the turn; a template that writes something else there (GLM-4.1V's published template prints
`{{ msg.content }}`, the Python repr of the content list) is an error naming the row and the template, not a model
trained on `[{'type': 'text', ...}]`.
"""

import pytest
import torch

from vital_hub.training.collator import Batch, VisionSFTCollator, pad_batch, truncate_batch
from vital_hub.training.family_models import build_family
from vital_hub.training.masking import MaskingError, image_token_id_of, label_runs
from vital_hub.training.synthetic import synthetic_rows

# A ChatML template that prints an assistant message's content as it is: the content list's repr.
RAW_CONTENT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{{ m['content'] }}{% else %}"
    "{% for p in m['content'] %}{% if p['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ p['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def rows():
    return synthetic_rows(4, seed=3, image_sides=(96, 300))


def test_a_template_that_prints_the_content_list_is_an_error_naming_row_and_template(rows):
    processor, _ = build_family("qwen2.5-vl")
    collator = VisionSFTCollator(processor, max_image_side=300, chat_template=RAW_CONTENT_TEMPLATE)
    with pytest.raises(MaskingError) as caught:
        collator(rows[:2])
    message = str(caught.value)
    assert repr(rows[0]["id"]) in message
    assert "chat template" in message and "Qwen2_5_VLProcessor" in message
    assert "[{'type': 'text'" in message  # the difference: what the labels read


def test_labels_read_the_answers_when_pad_is_the_end_of_turn_token(rows):
    processor, _ = build_family("qwen2.5-vl")
    processor.tokenizer.pad_token = "<|im_end|>"
    batch = VisionSFTCollator(processor, max_image_side=300, pad_to_multiple_of=64)(rows[:2])
    for row_index, row in enumerate(rows[:2]):
        answers = [m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant"]
        decoded = [processor.tokenizer.decode(run) for run in label_runs(batch["labels"][row_index].tolist())]
        assert [text.strip() for text in decoded] == [answer + "<|im_end|>" for answer in answers]


def test_gemma3_image_token_is_the_soft_token_not_the_start_of_image():
    processor, config = build_family("gemma3")
    assert image_token_id_of(processor) == config.image_token_id
    assert image_token_id_of(processor) != processor.tokenizer.convert_tokens_to_ids("<start_of_image>")


def test_gemma3_truncation_refuses_a_cut_through_the_soft_image_tokens(rows):
    processor, _ = build_family("gemma3")
    with pytest.raises(MaskingError, match="cuts through the image tokens"):
        VisionSFTCollator(processor, max_image_side=300, max_length=10)(rows[:1])


def side_input_batch(length: int) -> Batch:
    batch = Batch(
        input_ids=torch.arange(2 * length).reshape(2, length) + 10,
        attention_mask=torch.ones(2, length, dtype=torch.long),
        cross_attention_mask=torch.ones(2, length, 1, 4, dtype=torch.long),
        pixel_values=torch.zeros(2, length, 3),  # image tensors never follow the ids, whatever their shape
        labels=torch.ones(2, length, dtype=torch.long),
    )
    batch.token_keys = ("input_ids", "attention_mask", "cross_attention_mask", "labels")
    return batch


def test_side_inputs_of_any_rank_are_padded_with_the_ids():
    from vital_hub.training.collator import token_keys_of

    batch = side_input_batch(10)
    assert set(token_keys_of(batch, ("labels",))) == {"input_ids", "attention_mask", "cross_attention_mask", "labels"}
    padded = pad_batch(batch, 64, pad_id=0)
    assert padded["cross_attention_mask"].shape == (2, 64, 1, 4)
    assert int(padded["cross_attention_mask"][:, 10:].abs().sum()) == 0
    assert padded["pixel_values"].shape == (2, 10, 3)


def test_side_inputs_of_any_rank_are_truncated_with_the_ids():
    from vital_hub.training.collator import token_keys_of

    batch = side_input_batch(10)
    batch.token_keys = token_keys_of(batch, ("labels",))
    batch = truncate_batch(batch, 7, image_token_id=None, ids=["a", "b"])
    assert batch["cross_attention_mask"].shape == (2, 7, 1, 4)
    assert batch["input_ids"].shape == (2, 7)
