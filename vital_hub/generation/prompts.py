"""Requests for the vision LLM: system prompt, five clinician demonstrations, then the query figure.

Layout of one request (as the paper's code builds it, https://github.com/mao1207/BioMed-VITAL), all in one
place so no script builds prompts its own way:

    system     the prompt set's text (the project's own, or any `--prompt-file`)
    user       demonstration context (caption + in-text mentions) [+ its image when asked for]  } one pair per
    assistant  the demonstration conversation as `User: ...` / `Assistant: ...` paragraphs        } modality
    user       the query figure as a data URL, then its caption and context

The five demonstrations (one per modality: chest_xray, mri, ct_scan, histology, gross) are drawn again for
every request by a generator seeded from (run seed, pair_id, sample), so each request can be rebuilt exactly
from its recorded seed and prompt version. The prompt version is a hash of the system text, the mode and the
layout revision: changing any of them changes every request and so every cache key.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

from vital_hub.io import iter_json_records, read_text
from vital_hub.schema import DOMAINS, IMAGE_TOKEN, RecordError, conversation_of, mention_texts

# Bump when the way requests are laid out changes (it is part of the prompt version).
LAYOUT_REVISION = "1"
DETAILS = ("low", "high", "auto")
TOKEN_LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")  # newer OpenAI reasoning models take only the second
IMAGE_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}

CONVERSATION_SYSTEM = """\
You help build instruction-tuning data for a biomedical vision-language assistant. You will see one figure \
from a biomedical research article, with its caption and, when available, sentences of the article that refer \
to it (Figure Context).

Write a conversation in which a User asks about the figure and an Assistant, an expert looking at the same \
figure, answers.

What to ask and answer:
- Ask about what can be seen: the imaging modality or stain, the organ or tissue, the view, where findings \
lie, their size, shape and number, likely abnormalities, differences between panels, and questions that need \
reasoning over several findings. Mix yes/no questions with open ones.
- Phrase questions so that someone holding only the image could ask them; use the caption and context to \
make the answers precise, with the specialist terms the article uses rather than vague descriptions.
- Ground every answer in the image and the text given; say so when something cannot be told from them. Do not \
give personal medical advice.
- Write four to six rounds; more when the figure carries much information. The data will train another \
vision-language model, so every round should teach something.

Format: begin with the User's first question. Start each turn on a new line with `User:` or `Assistant:`; an \
answer may run over several lines. Write nothing before the first question or after the last answer.
"""

DUAL_ANSWER_SYSTEM = """\
You help clinicians review training data for a biomedical vision-language assistant. You will see one figure \
from a biomedical research article, with its caption and, when available, sentences of the article that refer \
to it (Figure Context).

Write questions a User could ask about the figure and, for every question, two different answers written by \
an expert looking at the same figure. The two answers should differ in approach or emphasis (for example one \
more descriptive, one more interpretive) so that a clinician can judge which is better; each must be a \
complete reply on its own.

What to ask and answer:
- Ask about what can be seen: modality or stain, organ or tissue, location, size and number of findings, \
likely abnormalities, and questions that need reasoning. Phrase questions so that someone holding only the \
image could ask them.
- Ground the answers in the image and the text given; do not give personal medical advice.
- Write three to five questions. The examples show the kind of questions wanted and have one answer each; \
you write two.

Format: start each question on a new line with `User:`, then its answers on new lines starting with \
`Answer 1:` and `Answer 2:`. Write nothing before the first question or after the last answer.
"""

REFERENCE_ANSWER_SYSTEM = """\
You are an expert in biomedical imaging. You will be given a figure from a biomedical research article (the \
image may be missing), its caption, sentences of the article that mention it, and a question. Answer the \
question using the image and the text together. Be concise and precise, usually a few sentences, and stay \
accurate and relevant; do not speculate beyond what the figure and the text support.
"""


@dataclass(frozen=True)
class PromptSet:
    """A system prompt and the reply shape it asks for ("conversation", "dual-answer" or "reference")."""

    name: str
    mode: str
    system: str

    @property
    def version(self) -> str:
        text = f"{self.mode}\n{LAYOUT_REVISION}\n{self.system}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


PROMPT_SETS: dict[str, PromptSet] = {
    "conversation": PromptSet("conversation", "conversation", CONVERSATION_SYSTEM),
    "dual-answer": PromptSet("dual-answer", "dual-answer", DUAL_ANSWER_SYSTEM),
    "reference-answer": PromptSet("reference-answer", "reference", REFERENCE_ANSWER_SYSTEM),
}


def get_prompt_set(name: str) -> PromptSet:
    if name not in PROMPT_SETS:
        raise KeyError(f"unknown prompt set {name!r}; known: {sorted(PROMPT_SETS)}")
    return PROMPT_SETS[name]


def prompt_set_from_file(path: str | Path, mode: str) -> PromptSet:
    """Any system prompt file (e.g. the paper's originals) used for the given reply mode."""
    text = read_text(path)
    if not text.strip():
        raise ValueError(f"{path}: the prompt file is empty")
    return PromptSet(Path(path).stem, mode, text)


# ------------------------------------------------------------------------------------------------ context


def figure_context(fig_label: str | None, caption: str | None, mentions: list[str]) -> str:
    """`Figure Caption:\\n{label}: {caption}` and, with mentions, `Figure Context:` as a tab-indented list."""
    parts = []
    if caption and caption.strip():
        label = f"{fig_label.strip()}: " if fig_label and fig_label.strip() else ""
        parts.append(f"Figure Caption:\n{label}{caption.strip()}")
    if mentions:
        parts.append("Figure Context:\n\t- " + "\n\t- ".join(mentions))
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------------ demonstrations


@dataclass(frozen=True)
class Demonstration:
    pair_id: str
    image_file: str
    modalities: frozenset[str]
    context: str
    conversation: str  # rendered `User: ...` / `Assistant: ...` paragraphs


def render_conversation(turns: list[dict]) -> str:
    """LLaVA turns as the `User:` / `Assistant:` paragraphs a reply should look like (no `<image>` token)."""
    speaker = {"human": "User", "gpt": "Assistant"}
    lines = []
    for turn in turns:
        text = turn["value"].replace(IMAGE_TOKEN, "").strip()
        lines.append(f"{speaker[turn['from']]}: {text}")
    return "\n\n".join(lines)


def load_demonstrations(path: str | Path) -> list[Demonstration]:
    """A demonstration pool (the format of `clinician_demonstrations.json`, JSON array or JSONL); a record whose
    id or pair_id repeats an earlier one is an error (it would be twice as likely to be shown)."""
    pool = []
    seen: dict[str, int] = {}
    for where, record in iter_json_records(path):
        if not isinstance(record, dict):
            raise where.error("a demonstration must be a JSON object")
        record_id = record.get("id", record.get("pair_id"))
        for key in ("pair_id", "fig_label", "fig_caption", "imgs", "image"):
            if record.get(key) is not None and not isinstance(record[key], str):
                raise where.error(f"{key!r} must be text, got {type(record[key]).__name__}", record_id)
        for key in {str(record_id), str(record.get("pair_id") or record_id)}:
            if key in seen:
                raise where.error(f"duplicate demonstration {key!r} (first at record {seen[key]})", record_id)
            seen[key] = where.index
        turns = conversation_of(record, where)
        if not turns or any(
            t.get("from") not in ("human", "gpt") or not isinstance(t.get("value"), str) for t in turns
        ):
            raise where.error("conversation must be human/gpt turns with string values", record_id)
        domain = record.get("domain") or {}
        modalities = frozenset(name for name in DOMAINS if domain.get(name))
        if not modalities:
            raise where.error(f"no modality flag set in 'domain' (one of {list(DOMAINS)})", record_id)
        pair_id = str(record.get("pair_id") or record_id)
        pool.append(
            Demonstration(
                pair_id=pair_id,
                image_file=str(record.get("imgs") or record.get("image") or f"{pair_id}.jpg"),
                modalities=modalities,
                context=figure_context(
                    record.get("fig_label"), record.get("fig_caption"), mention_texts(record.get("in_text_mention"))
                ),
                conversation=render_conversation(turns),
            )
        )
    if not pool:
        raise RecordError("the demonstration pool is empty", file=str(path))
    return pool


def missing_modalities(pool: list[Demonstration]) -> list[str]:
    covered = set().union(*(d.modalities for d in pool)) if pool else set()
    return [name for name in DOMAINS if name not in covered]


def sample_demonstrations(pool: list[Demonstration], rng: random.Random) -> list[Demonstration]:
    """One demonstration per modality, in DOMAINS order, never the same record twice."""
    chosen: list[Demonstration] = []
    for modality in DOMAINS:
        options = [d for d in pool if modality in d.modalities and d not in chosen]
        if options:
            chosen.append(rng.choice(options))
    return chosen


def request_seed(run_seed: int, pair_id: str, sample: int) -> int:
    """The seed of one request: stable across runs, machines and Python versions."""
    digest = hashlib.sha256(f"{run_seed}:{pair_id}:{sample}".encode()).hexdigest()
    return int(digest[:8], 16)


# ------------------------------------------------------------------------------------------------ images


class ImageError(ValueError):
    """An image that is missing, empty, cut off or not an image: never sent."""


def image_data_url(data: bytes | None, max_side: int | None = None) -> str:
    """A base64 data URL of a fully decodable image, downscaled to `max_side` pixels when larger."""
    from PIL import Image, UnidentifiedImageError

    from vital_hub.figures.safety import PixelLimitError, open_within_pixel_limit

    if not data:
        raise ImageError("image missing or empty")
    try:
        with open_within_pixel_limit(data) as image:  # the header only, so far
            image.load()  # decodes every byte: a file cut off mid-way fails here, not at the provider
            fmt = image.format
            if (max_side and max(image.size) > max_side) or fmt not in IMAGE_MIME:
                converted = image.convert("RGB")
                if max_side:
                    converted.thumbnail((max_side, max_side))
                buffer = io.BytesIO()
                converted.save(buffer, format="JPEG", quality=90)
                data, fmt = buffer.getvalue(), "JPEG"
    except PixelLimitError as err:
        raise ImageError(str(err)) from err
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"image unreadable ({err})") from err
    return f"data:{IMAGE_MIME[fmt]};base64,{base64.b64encode(data).decode('ascii')}"


def image_part(url: str, detail: str | None) -> dict:
    image = {"url": url}
    if detail:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


# ------------------------------------------------------------------------------------------------ requests


@dataclass
class PromptOptions:
    max_tokens: int = 4096
    temperature: float | None = None
    top_p: float | None = None
    detail: str | None = None  # None: the provider's default
    max_image_side: int | None = None  # None: send the image as stored
    demo_images: str | None = None  # folder of demonstration images; None: text-only demonstrations, as the paper
    send_seed: bool = True  # pass the request seed as the API's `seed` (sampling reproducibility where supported)
    max_tokens_field: str = "max_tokens"

    def __post_init__(self):
        if self.detail is not None and self.detail not in DETAILS:
            raise ValueError(f"detail must be one of {DETAILS}, got {self.detail!r}")
        if self.max_tokens_field not in TOKEN_LIMIT_FIELDS:
            raise ValueError(f"max_tokens_field must be one of {TOKEN_LIMIT_FIELDS}, got {self.max_tokens_field!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")

    def sampling(self) -> dict:
        """The sampling parameters sent with every request (recorded per candidate)."""
        params = {self.max_tokens_field: self.max_tokens}
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.top_p is not None:
            params["top_p"] = self.top_p
        return params


@dataclass
class PromptBuilder:
    prompt_set: PromptSet
    pool: list[Demonstration] = field(default_factory=list)
    options: PromptOptions = field(default_factory=PromptOptions)
    # demonstration image file -> its data URL, or None when it is sent as text only (the pool is fixed for a run)
    _demo_urls: dict[str, str | None] = field(default_factory=dict, init=False, repr=False)

    def image_url(self, figure: dict) -> str:
        """The data URL of the figure's image; raises ImageError for a bad image."""
        return image_data_url(figure.get("image"), self.options.max_image_side)

    def build(self, figure: dict, seed: int, url: str | None = None) -> dict:
        """The chat.completions arguments (without model) for one figure; raises ImageError for a bad image.

        `url` is the figure's `image_url` when the caller already has it (one per figure, shared by its samples).
        """
        url = url or self.image_url(figure)
        messages: list[dict] = [{"role": "system", "content": self.prompt_set.system}]
        for demo in sample_demonstrations(self.pool, random.Random(seed)):
            messages.append({"role": "user", "content": self._demo_content(demo)})
            messages.append({"role": "assistant", "content": demo.conversation})
        context = figure_context(figure.get("fig_label"), figure.get("caption"), figure.get("mentions") or [])
        query = [image_part(url, self.options.detail), {"type": "text", "text": context or "(no caption)"}]
        messages.append({"role": "user", "content": query})
        request = {"messages": messages, **self.options.sampling()}
        if self.options.send_seed:
            request["seed"] = seed
        return request

    def _demo_content(self, demo: Demonstration) -> str | list[dict]:
        if not self.options.demo_images:
            return demo.context
        if demo.image_file not in self._demo_urls:
            self._demo_urls[demo.image_file] = self._demo_url(demo.image_file)
        url = self._demo_urls[demo.image_file]
        if url is None:
            return demo.context
        return [image_part(url, self.options.detail), {"type": "text", "text": demo.context}]

    def _demo_url(self, image_file: str) -> str | None:
        path = Path(self.options.demo_images) / image_file
        try:
            return image_data_url(path.read_bytes(), self.options.max_image_side)
        except (OSError, ImageError):
            return None


def reference_answer_request(
    question: str, context: str, image: bytes | None, options: PromptOptions, prompt_set: PromptSet | None = None
) -> tuple[dict, bool]:
    """The request for one qa50 reference answer and whether the image could be attached."""
    prompt_set = prompt_set or get_prompt_set("reference-answer")
    question = question.replace(IMAGE_TOKEN, "").strip()
    text = f"{context}\n\nQuestion: {question}" if context else f"Question: {question}"
    content: list[dict] = [{"type": "text", "text": text}]
    try:
        content.insert(0, image_part(image_data_url(image, options.max_image_side), options.detail))
        has_image = True
    except ImageError:
        has_image = False
    messages = [{"role": "system", "content": prompt_set.system}, {"role": "user", "content": content}]
    return {"messages": messages, **options.sampling()}, has_image
