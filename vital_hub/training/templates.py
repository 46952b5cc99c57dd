"""The project's corrected chat templates, applied by themselves where a family's published one cannot be trained on.

Assistant-only labels need a template that renders each assistant turn as the continuation of the generation prompt
the model gets at inference, and writes the answer's text as it is (`masking`). Some published templates do not:

- LLaVA-OneVision (`llava-hf/*-ov-hf`) writes `<|im_start|>assistant \\n` in past turns but `<|im_start|>assistant\\n`
  as the generation prompt;
- LLaVA-NeXT (`llava-hf/llava-v1.6-mistral-7b-hf`) closes each answer with the text `<\\s>`, not the eos token `</s>`;
- Qwen3.5 adds an empty `<think>` block only to the answers after the last user turn, and its generation prompt
  opens a thinking block;
- Gemma 4's generation prompt (`<|turn>model\\n<|channel>thought\\n<channel|>`) differs from its past model turns;
- GLM-4.1V prints an assistant message's content as it is, so a content list renders as its Python repr;
- PaliGemma (1 and 2) publishes none: `chat_templates/paligemma.jinja` documents the prefix/suffix layout its
  processor completes.

Each is found on a probe conversation (two rounds, an image in the first), not by the template's text, so a template
that already renders correctly (one given with `--chat_template_path`, or a fixed upstream one) is never replaced.
Where the probe fails and vital-hub ships a correction for the processor's family, the processor's template is
replaced (it is then saved with the model, so inference prompts as training did), one log line says so, and
`correction_of(processor)` tells the model card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vital_hub.training.family_kit import chat_template
from vital_hub.training.masking import MaskingError, reads_as, render_with_targets

logger = logging.getLogger(__name__)

# Processor class -> the corrected template vital-hub ships for that family (vital_hub/training/chat_templates/).
CORRECTED = {
    "LlavaOnevisionProcessor": "llava_onevision_fixed",
    "LlavaNextProcessor": "llava_next_fixed",
    "Qwen3VLProcessor": "qwen3_5_fixed",
    "Gemma4Processor": "gemma4_fixed",
    "Glm4vProcessor": "glm4v_fixed",
    "PaliGemmaProcessor": "paligemma",
}
ATTRIBUTE = "vital_template_correction"  # not an __init__ argument, so never written by save_pretrained

PROBE = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What does the figure show?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "An axial CT of the chest."}]},
    {"role": "user", "content": [{"type": "text", "text": "Which side is the lesion on?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "The left lower lobe."}]},
]


@dataclass(frozen=True)
class TemplateCorrection:
    """A published chat template replaced by vital-hub's corrected one (for the log and the model card)."""

    processor: str  # the processor class, e.g. Gemma4Processor
    template: str  # the shipped file, e.g. chat_templates/gemma4_fixed.jinja
    problem: str  # what the published template did on the probe conversation

    def card_line(self) -> str:
        return (
            f"{self.processor}: the published chat template cannot be trained on turn by turn ({self.problem}); "
            f"training and the saved processor use vital-hub's corrected template `{self.template}`."
        )


def template_problem(processor, template: str | None = None) -> str | None:
    """Why a chat template cannot be trained on (found on a probe conversation), or None when it can."""
    try:
        rendered = render_with_targets(processor, PROBE, template)
    except MaskingError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - a template that fails to render (no template, a raise_exception)
        return f"it does not render a two-round conversation with an image: {err}"
    for (start, end), answer, closing in zip(rendered.spans, rendered.answers, rendered.end_tokens, strict=True):
        if not reads_as(rendered.text[start:end], answer, closing):
            return f"an answer renders as {rendered.text[start:end]!r} for {answer!r}"
    return None


def correct_template(processor) -> TemplateCorrection | None:
    """Replace the processor's chat template by vital-hub's corrected one where the published one cannot be
    trained on and a correction exists for its family; None when nothing was replaced."""
    name = type(processor).__name__
    if name not in CORRECTED:
        return correction_of(processor)
    published = getattr(processor, "chat_template", None)
    problem = template_problem(processor) if published else "the model publishes no chat template"
    if problem is None:
        return correction_of(processor)
    fixed = chat_template(CORRECTED[name])
    if (
        template_problem(processor, fixed) is not None
    ):  # not this family's layout after all: leave the error to masking
        return None
    processor.chat_template = fixed
    correction = TemplateCorrection(name, f"chat_templates/{CORRECTED[name]}.jinja", summary(problem))
    setattr(processor, ATTRIBUTE, correction)
    logger.warning("%s", correction.card_line())
    return correction


def correction_of(processor) -> TemplateCorrection | None:
    """The correction applied to this processor's chat template, if any (for the model card)."""
    return getattr(processor, ATTRIBUTE, None)


def summary(problem: str) -> str:
    """The probe's finding, without the advice aimed at users of a template they chose."""
    return problem.split("; pass a template")[0].split(", so the model would be trained")[0]
