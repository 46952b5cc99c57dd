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

import difflib
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
    answers: tuple[str, ...] = ()  # each assistant turn's text as the conversation gives it


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
    # The pad token is an end marker too: where pad == the end-of-turn token, a turn it closes is closed.
    end_markers = sorted(special_token_strings(tokenizer) - {image_token}, key=len, reverse=True)
    full = render(processor, messages, chat_template, add_generation_prompt=False)
    raw_spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(processor, messages[:index], chat_template, add_generation_prompt=True)
        with_answer = render(processor, messages[: index + 1], chat_template, add_generation_prompt=False)
        if not (with_answer.startswith(prompt) and full.startswith(with_answer)):
            raise MaskingError(template_mismatch(processor, index, prompt, with_answer, full))
        end = len(with_answer.rstrip())
        raw_spans.append((len(prompt), max(end, len(prompt))))
    closed = close_turns(full, raw_spans, end_markers, tokenizer.eos_token)
    answers = tuple(text_of(message["content"]) for message in messages if message["role"] == "assistant")
    return RenderedConversation(closed.text, closed.spans, closed.end_tokens, answers)


def text_of(content) -> str:
    """The text of a message's content: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text") or "" for part in content if part.get("type") == "text")


def template_mismatch(processor, index: int, prompt: str, with_answer: str, full: str) -> str:
    """Where the template renders a turn differently from the prompt a model gets at inference, and the fix."""
    if with_answer.startswith(prompt):
        first, second, what = with_answer, full, "the whole conversation"
    else:
        first, second, what = prompt, with_answer, f"turn {index} itself"
    at = next((i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b), min(len(first), len(second)))
    return (
        f"the chat template of {type(processor).__name__} does not render turn {index} as an extension of what "
        f"comes before it: the generation prompt reads {first[max(0, at - 20) : at + 10]!r} where {what} reads "
        f"{second[max(0, at - 20) : at + 10]!r}, so the model would be trained on a prompt it never sees at "
        "inference; pass a template that writes both alike with --chat_template_path FILE.jinja (vital-hub "
        "ships fixed ones in vital_hub/training/chat_templates/)"
    )


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


def template_name(processor, chat_template: str | None = None) -> str:
    """How an error names the chat template in use: the file vital-hub ships it as, else its class and a digest."""
    import hashlib
    from importlib import resources

    text = chat_template or getattr(processor, "chat_template", None) or ""
    if isinstance(text, dict):
        text = text.get("default", "")
    shipped = resources.files("vital_hub.training").joinpath("chat_templates")
    for entry in shipped.iterdir():
        if entry.name.endswith(".jinja") and entry.read_text("utf-8") == text:
            return f"the chat template vital_hub/training/chat_templates/{entry.name}"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
    owner = f"the chat template {'passed to' if chat_template else 'of'} {type(processor).__name__}"
    return f"{owner} (sha256 {digest}...)"


def label_runs(labels: list[int]) -> list[list[int]]:
    """Maximal runs of labelled tokens."""
    runs, current = [], []
    for label in [*labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs


def reads_as(decoded: str, answer: str, end_token: str) -> bool:
    """The decoded run is the answer (up to surrounding white space) closed by its end-of-turn token, once."""
    decoded = decoded.rstrip()
    if not decoded.endswith(end_token):
        return False
    return decoded[: len(decoded) - len(end_token)].strip() == answer.strip()


def check_labels(tokenizer, labels: list[int], rendered: RenderedConversation, row, template) -> None:
    """Refuse labels that, decoded, are not the conversation's assistant answers each closed by its end token
    (`template`: the template's name, or a function giving it, called only for the error)."""
    decoded = [
        tokenizer.decode(run, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        for run in label_runs(labels)
    ]
    expected = [answer + end for answer, end in zip(rendered.answers, rendered.end_tokens, strict=True)]
    pairs = zip(decoded, rendered.answers, rendered.end_tokens, strict=False)
    wrong = next((i for i, (text, answer, end) in enumerate(pairs) if not reads_as(text, answer, end)), None)
    if wrong is None and len(decoded) == len(expected):
        return
    if wrong is None:
        detail = f"{len(decoded)} labelled spans for {len(expected)} assistant turns ({[short(t) for t in decoded]})"
    else:
        should, reads = expected[wrong], decoded[wrong].strip()
        at = next(
            (i for i, (a, b) in enumerate(zip(should, reads, strict=False)) if a != b), min(len(should), len(reads))
        )
        start = max(0, at - 40)
        detail = (
            f"answer {wrong + 1} should read {short(should[start:])} but the labels read {short(reads[start:])}"
            + (f" (from character {start})" if start else "")
        )
    template = template() if callable(template) else template
    raise MaskingError(
        f"row {row!r}: the labels under {template} are not the assistant answers: {detail}; pass a template that "
        "writes each answer's text as it is with --chat_template_path FILE.jinja"
    )


def short(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


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


def align_labels(plain_ids: list[int], plain_labels: list[int], ids: list[int], processor_name: str = "processor"):
    """Carry labels from the text as written to the processor's ids, whatever the processor put around images.

    Processors replace each image placeholder by a run of image tokens, and several add structure of their own
    (Gemma 3 `<start_of_image>`...`<end_of_image>` with blank lines, Idefics3/SmolVLM tile markers
    `<fake_token_around_image>`/`<row_i_col_j>`/`<global-img>`, InternVL `<img>`...`</img>`, Pixtral
    `[IMG_BREAK]`/`[IMG_END]`). The two sequences are matched (common prefix and suffix, then a diff of what is
    left, which is the image region); every processor token with no counterpart in the text gets -100. A target
    token of the text that finds no counterpart means the processor rewrote assistant text, which is an error
    rather than a silent mis-mask.
    """
    labels = [IGNORE_INDEX] * len(ids)
    head = 0
    limit = min(len(plain_ids), len(ids))
    while head < limit and plain_ids[head] == ids[head]:
        head += 1
    tail = 0
    while tail < limit - head and plain_ids[-1 - tail] == ids[-1 - tail]:
        tail += 1
    matched = [(i, i) for i in range(head)]
    matched += [(len(plain_ids) - 1 - k, len(ids) - 1 - k) for k in range(tail)]
    middle_plain, middle_ids = plain_ids[head : len(plain_ids) - tail], ids[head : len(ids) - tail]
    if middle_plain and middle_ids:
        matcher = difflib.SequenceMatcher(None, middle_plain, middle_ids, autojunk=False)
        for block in matcher.get_matching_blocks():
            matched += [(head + block.a + k, head + block.b + k) for k in range(block.size)]
    seen = set()
    for plain_index, index in matched:
        labels[index] = plain_labels[plain_index]
        seen.add(plain_index)
    lost = [i for i, label in enumerate(plain_labels) if label != IGNORE_INDEX and i not in seen]
    if lost:
        raise MaskingError(
            f"{processor_name} changed {len(lost)} assistant tokens of the text (first at text token {lost[0]}), not "
            "only the image placeholders; its output cannot be aligned with the chat template's text"
        )
    return labels


def image_token_id_of(processor) -> int | None:
    """The id of the token the model replaces with image features.

    Not always `processor.image_token_id`: Gemma 3's processor names `<start_of_image>` there (the placeholder its
    chat template writes) while the model's image token is the soft token it expands into, which the processor
    reports in `image_token_ids`."""
    ids = [token_id for token_id in getattr(processor, "image_token_ids", None) or () if token_id is not None]
    token_id = ids[0] if ids else getattr(processor, "image_token_id", None)
    if token_id is None and getattr(processor, "image_token", None):
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return token_id


def image_token_ids_of(processor) -> set[int]:
    """Every token of the image regions the processor writes (image tokens and, where it reports them, the markers
    around them): a cut through any of them is refused."""
    ids = {token_id for token_id in getattr(processor, "image_token_ids", None) or () if token_id is not None}
    ids |= {token_id for token_id in (image_token_id_of(processor), getattr(processor, "image_token_id", None))}
    return {token_id for token_id in ids if token_id is not None}


TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")  # nonzero where a token belongs to an image


def truncate(features: dict, max_length: int | None, image_token_id: int | None) -> dict:
    """Cut a long conversation at max_length, every token-aligned tensor with it, but never through its image
    tokens (the model would reject it)."""
    ids = features["input_ids"]
    if max_length is None or len(ids) <= max_length:
        return features
    beyond = ids[max_length:] == image_token_id if image_token_id is not None else ids[max_length:] != ids[max_length:]
    for key in TOKEN_TYPE_KEYS:
        if key in features:
            beyond = beyond | (features[key][max_length:] != 0)
    if bool(beyond.any()):
        raise MaskingError(
            f"max_length {max_length} cuts through the image tokens of a {len(ids)}-token conversation; "
            "raise max_length or lower the image resolution"
        )
    return {
        key: value[:max_length] if getattr(value, "dim", lambda: 0)() == 1 and len(value) == len(ids) else value
        for key, value in features.items()
    }
