"""Loss on assistant tokens only, for any chat template, without `{% generation %}` markers.

Stock TRL trains a vision-language model on every token of `messages`, the hundreds of image placeholder tokens
included, and its `assistant_only_loss` needs generation markers in the chat template. Here the targets come from
the template itself: the conversation up to turn i rendered with the generation prompt is a prefix of the
conversation up to and including turn i, and the characters in between are what the model must write. Those
character spans select tokens through the tokenizer's offsets; the processor's expansion of each image
placeholder into its image tokens is then aligned back, and every image token gets -100.

Templates that end an assistant turn with no special token (llava-hf's LLaVA-1.5 template writes `answer ` and the
next `USER:`) would teach a model that never stops, so the tokenizer's eos is written after such turns, as the
original LLaVA v1 format did (`answer</s>`), and it is a target.
"""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = -100


class MaskingError(ValueError):
    """A conversation whose assistant tokens cannot be located with this processor and template."""


@dataclass(frozen=True)
class RenderedConversation:
    """The training text of one conversation and the character spans the loss is computed on."""

    text: str
    spans: tuple[tuple[int, int], ...]
    end_tokens: tuple[str, ...]  # the token closing each assistant turn (for the generation config)


def special_token_strings(tokenizer) -> set[str]:
    """Every special token's text: the named ones and the added tokens marked special (e.g. `<|im_end|>`)."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(token, "special", False):
            specials.add(token.content)
    return specials


def render(processor, messages: list[dict], chat_template: str | None, add_generation_prompt: bool) -> str:
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=chat_template
    )


def render_with_targets(processor, messages: list[dict], chat_template: str | None = None) -> RenderedConversation:
    """The conversation as training text, with the span of every assistant turn (its end-of-turn token included)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    image_token = getattr(processor, "image_token", None)
    end_markers = sorted(special_token_strings(tokenizer) - {image_token, tokenizer.pad_token}, key=len, reverse=True)
    full = render(processor, messages, chat_template, add_generation_prompt=False)
    raw_spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(processor, messages[:index], chat_template, add_generation_prompt=True)
        with_answer = render(processor, messages[: index + 1], chat_template, add_generation_prompt=False)
        if not (with_answer.startswith(prompt) and full.startswith(with_answer)):
            raise MaskingError(
                f"the chat template does not render turn {index} as an extension of the turns before it, so its "
                "assistant text cannot be located; use a template that renders conversations incrementally"
            )
        end = len(with_answer.rstrip())
        raw_spans.append((len(prompt), max(end, len(prompt))))
    return close_turns(full, raw_spans, end_markers, tokenizer.eos_token)


def close_turns(text: str, spans: list[tuple[int, int]], end_markers: list[str], eos: str | None):
    """Write `eos` after each assistant span that does not already end with a special token; shift spans to match."""
    pieces, new_spans, ends, cursor, shift = [], [], [], 0, 0
    for start, end in spans:
        closing = next((marker for marker in end_markers if text[start:end].endswith(marker)), None)
        pieces.append(text[cursor:end])
        new_start, new_end = start + shift, end + shift
        if closing is None:
            if not eos:
                raise MaskingError("an assistant turn ends with no special token and the tokenizer has no eos token")
            pieces.append(eos)
            shift += len(eos)
            new_end += len(eos)
            closing = eos
        new_spans.append((new_start, new_end))
        ends.append(closing)
        cursor = end
    pieces.append(text[cursor:])
    return RenderedConversation("".join(pieces), tuple(new_spans), tuple(ends))


def adds_special_tokens(tokenizer, text: str) -> bool:
    """Let the tokenizer add its BOS only when the template did not write one (LLaVA-1.5's does not)."""
    bos = tokenizer.bos_token
    return not (bos and text.startswith(bos))


def labels_from_offsets(ids: list[int], offsets: list[tuple[int, int]], spans) -> list[int]:
    """Token i is a target when its first character lies inside an assistant span."""
    labels = []
    for token_id, (start, end) in zip(ids, offsets, strict=True):
        inside = end > start and any(span_start <= start < span_end for span_start, span_end in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return labels


def expand_image_labels(plain_ids: list[int], plain_labels: list[int], ids: list[int], image_token_id: int):
    """Carry labels from the text as written to the processor's ids, where each image placeholder became a run.

    Every token of an image run gets -100. Any other difference between the two sequences means the processor
    rewrote the text in a way this alignment does not know, which is an error rather than a silent mis-mask.
    """
    labels, i, j = [], 0, 0
    while j < len(ids):
        if i >= len(plain_ids) or plain_ids[i] != ids[j]:
            raise MaskingError(
                f"the processor's tokens differ from the text's tokens at position {j} (not an image placeholder "
                "expansion); this processor is not supported by the assistant-token masking"
            )
        if ids[j] == image_token_id:
            while i < len(plain_ids) and plain_ids[i] == image_token_id:
                i += 1
            while j < len(ids) and ids[j] == image_token_id:
                labels.append(IGNORE_INDEX)
                j += 1
            continue
        labels.append(plain_labels[i])
        i += 1
        j += 1
    if i != len(plain_ids):
        raise MaskingError("the processor dropped tokens of the text; cannot align the labels")
    return labels


def image_token_id_of(processor) -> int | None:
    token_id = getattr(processor, "image_token_id", None)
    if token_id is None and getattr(processor, "image_token", None):
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return token_id


def encode_conversation(processor, messages: list[dict], images: list, chat_template: str | None = None) -> dict:
    """input_ids, labels and the processor's image tensors for one conversation (tensors without a batch axis).

    `images` holds one decoded image per image part of `messages` (an empty list for a text-only conversation).
    """
    tokenizer = processor.tokenizer
    rendered = render_with_targets(processor, messages, chat_template)
    add_special = adds_special_tokens(tokenizer, rendered.text)
    plain = tokenizer(rendered.text, add_special_tokens=add_special, return_offsets_mapping=True)
    plain_labels = labels_from_offsets(plain["input_ids"], plain["offset_mapping"], rendered.spans)
    encoded = processor(
        text=[rendered.text], images=[images] if images else None, add_special_tokens=add_special, return_tensors="pt"
    )
    ids = encoded["input_ids"][0].tolist()
    image_token_id = image_token_id_of(processor)
    if image_token_id is None:
        labels = plain_labels if ids == plain["input_ids"] else None
        if labels is None:
            raise MaskingError("the processor changed the text's tokens and names no image token to align them")
    else:
        labels = expand_image_labels(plain["input_ids"], plain_labels, ids, image_token_id)
    features = {key: value for key, value in encoded.items() if key not in ("input_ids", "attention_mask")}
    features["input_ids"] = encoded["input_ids"][0]
    features["labels"] = encoded["input_ids"].new_tensor(labels)
    return features


def truncate(features: dict, max_length: int | None, image_token_id: int | None) -> dict:
    """Cut a long conversation at max_length, but never through its image tokens (the model would reject it)."""
    ids = features["input_ids"]
    if max_length is None or len(ids) <= max_length:
        return features
    if image_token_id is not None and bool((ids[max_length:] == image_token_id).any()):
        raise MaskingError(
            f"max_length {max_length} cuts through the image tokens of a {len(ids)}-token conversation; "
            "raise max_length or lower the image resolution"
        )
    return {**features, "input_ids": ids[:max_length], "labels": features["labels"][:max_length]}
