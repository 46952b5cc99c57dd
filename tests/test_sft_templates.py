"""Published chat templates that cannot be trained on turn by turn are replaced by the project's corrected ones,
by themselves, once, with a log line and a record for the model card; a template that renders well is never touched.
"""

import logging

import pytest

from vital_hub.training.collator import VisionSFTCollator
from vital_hub.training.family_models import build_family
from vital_hub.training.masking import MaskingError
from vital_hub.training.synthetic import synthetic_rows
from vital_hub.training.templates import CORRECTED, correction_of, template_problem

# family -> what its published template does wrong, as the probe reports it
PUBLISHED_PROBLEMS = {
    "llava-onevision": "assistant \\n",  # a space before the newline in past turns only
    "llava-next": "<\\\\s>",  # the text `<\s>` where the eos belongs
    "qwen3.5": "<think>",  # think blocks after the last user turn only
    "gemma4": "<|channel>",  # the generation prompt's empty thought channel
    "glm4v": "[{'type': 'text'",  # the content list's repr
    "paligemma2": "does not render",  # none published
}


@pytest.fixture(scope="module")
def rows():
    return synthetic_rows(2, seed=5, image_sides=(96, 300))


@pytest.mark.parametrize("family", sorted(PUBLISHED_PROBLEMS))
def test_a_published_template_known_broken_is_replaced_once_with_a_log_line(family, rows, caplog, tmp_path):
    processor, _ = build_family(family)
    problem = template_problem(processor)
    assert problem is not None and PUBLISHED_PROBLEMS[family] in problem
    with caplog.at_level(logging.INFO, logger="vital_hub"):
        collator = VisionSFTCollator(processor, max_image_side=300, pad_to_multiple_of=64)
        collator(rows)
        VisionSFTCollator(processor, max_image_side=300)  # a second collator (eval) corrects nothing more
    lines = [r.getMessage() for r in caplog.records if "corrected template" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and type(processor).__name__ in lines[0]
    correction = correction_of(processor)
    assert correction is collator.template_correction
    assert correction.template == f"chat_templates/{CORRECTED[type(processor).__name__]}.jinja"
    assert correction.template in correction.card_line()
    assert template_problem(processor) is None
    processor.save_pretrained(tmp_path)  # saved with the corrected template, not with the record
    saved = type(processor).from_pretrained(tmp_path)
    assert saved.chat_template == processor.chat_template
    assert correction_of(saved) is None
    assert "vital_template_correction" not in (tmp_path / "processor_config.json").read_text()


def test_a_template_that_renders_well_is_never_replaced(rows):
    processor, _ = build_family("llava-onevision")
    from vital_hub.training.family_models import chat_template

    processor.chat_template = chat_template("llava_onevision_fixed") + "{# the user's own #}"  # --chat_template_path
    collator = VisionSFTCollator(processor, max_image_side=300)
    collator(rows)
    assert collator.template_correction is None and processor.chat_template.endswith("{# the user's own #}")


def test_correction_off_keeps_the_published_template_and_its_error(rows):
    processor, _ = build_family("gemma4")
    published = processor.chat_template
    collator = VisionSFTCollator(processor, max_image_side=300, correct_template=False)
    with pytest.raises(MaskingError, match="Gemma4Processor"):
        collator(rows)
    assert processor.chat_template == published and correction_of(processor) is None


def test_a_family_without_a_correction_keeps_the_error(rows):
    from tests.test_sft_labels import RAW_CONTENT_TEMPLATE

    processor, _ = build_family("qwen2.5-vl")
    processor.chat_template = RAW_CONTENT_TEMPLATE
    collator = VisionSFTCollator(processor, max_image_side=300)
    assert collator.template_correction is None
    with pytest.raises(MaskingError, match="not the assistant answers"):
        collator(rows)
