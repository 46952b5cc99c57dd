"""What a converted LLaVA needs besides its weights: the original conversation format as a chat template, the
original image preprocessing as the processor's settings, and the stop token.

The conversation formats follow `llava/conversation.py` of the original repositories
(https://github.com/haotian-liu/LLaVA and https://github.com/microsoft/LLaVA-Med):

- `llava_v1` (LLaVA-1.5 and models tuned from it, BioMed-VITAL among them): the system prompt, a space, then
  `USER: <message> ` and `ASSISTANT: <answer></s>` turns; a prompt ends with `ASSISTANT:`.
- `mistral_instruct` (LLaVA-Med v1.5): `[INST] <message> [/INST]` and ` <answer> </s>`, no system prompt by default
  (a system message, when given, is wrapped in `<<SYS>>` as the repository's LLAMA_2 style does).

In both, the image goes first in the user's message, followed by a newline (the original evaluation scripts strip
`<image>` from the question and put `<image>\\n` in front). The beginning-of-sequence token is not in the
templates: the tokenizer adds it, as the original `tokenizer_image_token` did.
"""

from __future__ import annotations

LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

# Renders a message's content: images first (each as "<image>" and a newline), then its text.
_CONTENT_MACRO = (
    "{%- macro content_of(message) -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)
_SYSTEM_FROM_MESSAGES = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.system = content_of(messages[0]) -%}{%- set ns.start = 1 -%}"
    "{%- endif -%}"
)

LLAVA_V1_TEMPLATE = (
    _CONTENT_MACRO
    + "{%- set ns = namespace(system='"
    + LLAVA_V1_SYSTEM.replace("'", "\\'")
    + "', start=0) -%}"
    + _SYSTEM_FROM_MESSAGES
    + "{{- ns.system + ' ' -}}"
    "{%- for message in messages[ns.start:] -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' + content_of(message) + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'ASSISTANT: ' + content_of(message) + '</s>' -}}"
    "{%- else -%}{{- raise_exception('llava_v1 has user and assistant turns after an optional system message') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

MISTRAL_INSTRUCT_TEMPLATE = (
    _CONTENT_MACRO
    + "{%- set ns = namespace(system='', start=0) -%}"
    + _SYSTEM_FROM_MESSAGES
    + "{%- for message in messages[ns.start:] -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- set prefix = ('<<SYS>>\\n' + ns.system + '\\n<</SYS>>\\n\\n') if (loop.first and ns.system) else '' -%}"
    "{{- '[INST] ' + prefix + content_of(message) + ' [/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- ' ' + content_of(message) + ' </s>' -}}"
    "{%- else -%}"
    "{{- raise_exception('mistral_instruct has user and assistant turns after an optional system message') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

CHAT_FORMATS = {"llava_v1": LLAVA_V1_TEMPLATE, "mistral_instruct": MISTRAL_INSTRUCT_TEMPLATE}
# The format each language-model family of the original checkpoints was trained and evaluated with.
DEFAULT_CHAT_FORMAT = {"llama": "llava_v1", "mistral": "mistral_instruct"}
# CLIP's normalisation (openai/clip-vit-*), which the original loaded with the vision tower's image processor.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def get_chat_template(name: str) -> str:
    if name not in CHAT_FORMATS:
        raise ValueError(f"unknown chat format {name!r}; known: {sorted(CHAT_FORMATS)}")
    return CHAT_FORMATS[name]


def image_processor(image_size: int, pad_to_square: bool):
    """CLIP preprocessing (shortest edge to `image_size`, bicubic, centre crop, CLIP mean/std) with LLaVA's
    `image_aspect_ratio: pad` as `do_pad`: pad to a square with the mean colour before resizing, which is what the
    original `expand2square(image, mean * 255)` did."""
    try:  # the Pillow backend needs no torchvision; transformers without it has only this one
        from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil as Processor
    except ImportError:
        from transformers import LlavaImageProcessor as Processor
    return Processor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_pad=pad_to_square,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        resample=3,  # PIL bicubic, as CLIPImageProcessor
    )


def build_processor(tokenizer, image_size: int, patch_size: int, pad_to_square: bool, chat_format: str, strategy: str):
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=image_processor(image_size, pad_to_square),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1,  # CLIP's CLS token, counted before the strategy drops it
        chat_template=get_chat_template(chat_format),
        image_token="<image>",
    )


def generation_config(tokenizer, source: dict | None = None):
    """The source's generation settings (`max_length`, sampling defaults, ...), greedy where it names none, stopping
    at `</s>`: both formats close an answer with it (the original scripts stopped on the keyword `</s>`, the
    tokenizer's end-of-sequence token)."""
    from transformers import GenerationConfig

    settings = {"do_sample": False, **(source or {})}
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **settings,
    )
