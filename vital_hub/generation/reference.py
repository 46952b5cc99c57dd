"""Regenerate the qa50 reference answers with today's models on the same client (LLaVA-Med's protocol:
https://github.com/microsoft/LLaVA-Med).

The released reference answers came from a retired GPT-4; relative scores are only comparable when the
reference model is known, so this writes the question file again with `gpt4_answer` replaced by the new answer,
the old one kept as `original_gpt4_answer`, and `reference_model` / `reference_status` / `reference_error` /
`reference_image` (whether the figure could be attached: the only public copy has empty and cut-off images).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vital_hub.config import help_field
from vital_hub.eval.records import load_questions
from vital_hub.generation.client import ChatClient, ServerOptions
from vital_hub.generation.pricing import load_prices
from vital_hub.generation.prompts import (
    PromptOptions,
    figure_context,
    get_prompt_set,
    prompt_set_from_file,
    reference_answer_request,
)
from vital_hub.io import atomic_path
from vital_hub.schema import RecordError, mention_texts


@dataclass(kw_only=True)
class ReferenceConfig(ServerOptions):
    questions: str = help_field("llava_med_eval_qa50_qa.jsonl")
    out: str = help_field("output JSONL (same records, new gpt4_answer)")
    model: str = help_field("model (Azure: deployment) name")
    images: str | None = help_field(
        "folder of <pair_id>.jpg figures (missing/corrupt ones go text-only)", default=None
    )
    prompt_file: str | None = help_field("system prompt file replacing the built-in one", default=None)
    max_tokens: int = help_field("completion budget per request", default=1024)
    temperature: float | None = help_field("None: the server default", default=None)
    detail: str | None = help_field("image detail: low | high | auto (None: default)", default=None)
    max_image_side: int | None = help_field("downscale images larger than this (px)", default=None)
    cache: str | None = help_field("SQLite request cache (default: <out>.cache.sqlite)", default=None)
    prices: str | None = help_field("price table file (YAML/JSON) over the defaults", default=None)

    def __post_init__(self):
        self.prompt_options()  # rejects a bad detail or max_tokens before anything is sent

    def prompt_options(self) -> PromptOptions:
        return PromptOptions(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            detail=self.detail,
            max_image_side=self.max_image_side,
            send_seed=False,
        )

    def client(self) -> ChatClient:
        prices = load_prices(self.prices) if self.prices else None
        return ChatClient(self.client_config(self.model, self.cache or f"{self.out}.cache.sqlite"), prices)


def regenerate_reference_answers(config: ReferenceConfig, client: ChatClient) -> dict[str, int]:
    prompt_set = (
        prompt_set_from_file(config.prompt_file, "reference")
        if config.prompt_file
        else get_prompt_set("reference-answer")
    )
    options = config.prompt_options()
    records = [question.record for question in load_questions(config.questions)]  # checked: shape, text, ids
    if vqa := next((r for r in records if "text" not in r), None):
        raise RecordError(f"a VQA record (id {vqa.get('id')!r}), not a qa50 question", file=str(config.questions))
    requests, attached = [], []
    for record in records:
        context = figure_context(
            record.get("fig_label"), record.get("fig_caption"), mention_texts(record.get("in_text_mention"))
        )
        request, has_image = reference_answer_request(
            record["text"], context, read_image(config.images, record), options, prompt_set
        )
        requests.append(request)
        attached.append(has_image)
    results = client.chat_many(requests, desc="reference answers")
    counts: dict[str, int] = {}
    with atomic_path(config.out) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for record, result, has_image in zip(records, results, attached, strict=True):
            updated = {
                **record,
                "original_gpt4_answer": record.get("original_gpt4_answer", record.get("gpt4_answer")),
                "gpt4_answer": result.text if result.ok else None,
                "reference_model": client.config.model,
                "reference_prompt_version": prompt_set.version,
                "reference_status": result.status,
                "reference_error": result.error,
                "reference_image": has_image,
            }
            counts[result.status] = counts.get(result.status, 0) + 1
            handle.write(json.dumps(updated, ensure_ascii=False) + "\n")
    print(f"reference answers: {counts} -> {config.out}; usage: {client.stats.summary()}")
    return counts


def read_image(folder: str | None, record: dict) -> bytes | None:
    if not folder:
        return None
    name = record.get("image") or f"{record.get('pair_id')}.jpg"
    path = Path(folder) / name
    return path.read_bytes() if path.is_file() else None
