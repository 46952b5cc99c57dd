"""The tokenizer the original code ran, as a fast tokenizer that transformers loads as it is saved.

The original code tokenised a prompt in pieces: `tokenizer_image_token` (`llava/mm_utils.py` of
https://github.com/haotian-liu/LLaVA and https://github.com/microsoft/LLaVA-Med) cut it at `<image>`, tokenised each
piece on its own and dropped the beginning-of-sequence token of every piece but the first. Which tokenizer did it:

- LLaVA-1.5 and models tuned from it (Llama lineage, `llava/model/builder.py`, transformers 4.37):
  `AutoTokenizer.from_pretrained(path, use_fast=False)`, the slow SentencePiece `LlamaTokenizer` with the
  checkpoint's `legacy` setting (True when `tokenizer_config.json` does not say, as 4.37 defaulted).
  `legacy: true`: every piece between special tokens gets SentencePiece's `▁` prefix. `legacy: false` (LLaVA-1.5's
  training setting): the prompt gets one `▁` in front, and the text after a special token such as `</s>` none; as
  every `<image>` piece was tokenised on its own, the text after the image does get one.
- LLaVA-Med v1.5 (Mistral lineage, transformers 4.36): `AutoTokenizer.from_pretrained(path)`, the fast tokenizer of
  the checkpoint's `tokenizer.json`, used as it is.

A single string with `<image>` as a token gives these ids when the pipeline says so: legacy prompts normalise
each piece between added tokens with a `▁` prefix; non-legacy ones prefix the first piece (`Metaspace`, prepend
scheme `first`) and put a `▁` after the last `<image>` of a run, which is therefore a normalised added token. The
saved `tokenizer_config.json` names the generic fast class, so that transformers loads `tokenizer.json` as is
instead of rebuilding the pipeline from its own defaults (transformers 5's `LlamaTokenizer` does).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from vital_hub.convert.llava_original import ConversionError

SPIECE = "\u2581"
IMAGE_TOKEN = "<image>"
# `<image>` ending a run of image tokens and followed by text: the original tokenised that text on its own.
AFTER_IMAGE = r"<image>(?!<image>)(?=[\s\S])"
GENERIC_CLASS = "PreTrainedTokenizerFast"
SENTENCEPIECE_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def read_tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}: not JSON: {err}") from None


def original_tokenizer(folder: Path, family: str):
    """(tokenizer with `<image>` added, a line for the card saying how it reproduces the original's)."""
    config = read_tokenizer_config(folder)
    has_model, has_json = (folder / "tokenizer.model").is_file(), (folder / "tokenizer.json").is_file()
    if has_model and (family == "llama" or not has_json):
        legacy = config.get("legacy")
        legacy = True if legacy is None else bool(legacy)
        tokenizer = from_sentencepiece(folder, legacy)
        sequence_ends(tokenizer, config.get("add_bos_token", True), config.get("add_eos_token", False))
        source = "`tokenizer.model`" + (" (its `tokenizer.json` is not what the original read)" if has_json else "")
        how = f"the slow SentencePiece tokenizer's ids from {source}, `legacy: {str(legacy).lower()}`"
    elif has_json:
        tokenizer, legacy = verbatim(folder, config), None
        how = "`tokenizer.json` as the checkpoint ships it (the original's fast tokenizer)"
    else:
        raise ConversionError(f"{folder}: no tokenizer.model or tokenizer.json")
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        from tokenizers import AddedToken

        # normalised (seen by the normaliser) only where the normaliser must put a `▁` after it
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=legacy is False)])
    if tokenizer.pad_token is None:  # the original set the pad token to <unk> for these formats
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer, how


def from_sentencepiece(folder: Path, legacy: bool):
    """The fast tokenizer from `tokenizer.model` alone, its pipeline set to the slow tokenizer's behaviour."""
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:  # without tokenizer.json, which the slow original never read
        for name in SENTENCEPIECE_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, Path(tmp) / name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tmp, legacy=legacy)
        except (ImportError, ValueError, OSError) as err:
            raise ConversionError(f"{folder / 'tokenizer.model'}: cannot read it: {err}") from None
    backend = tokenizer.backend_tokenizer
    if legacy:  # SentencePiece's dummy prefix on every piece between added tokens, spaces as `▁`
        backend.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE), normalizers.Replace(" ", SPIECE)])
        backend.pre_tokenizer = None
    else:
        backend.normalizer = normalizers.Replace(Regex(AFTER_IMAGE), IMAGE_TOKEN + SPIECE)
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE, prepend_scheme="first", split=False)
    return tokenizer


def verbatim(folder: Path, config: dict):
    from transformers import PreTrainedTokenizerFast

    def token(name):
        value = config.get(name)
        return value.get("content") if isinstance(value, dict) else value

    specials = {name: token(name) for name in ("bos_token", "eos_token", "unk_token", "pad_token") if token(name)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **specials)
    if config.get("tokenizer_class", "").startswith("LlamaTokenizer"):  # transformers 4.36's LlamaTokenizerFast
        sequence_ends(tokenizer, config.get("add_bos_token", True), config.get("add_eos_token", False))
    if config.get("model_max_length"):
        tokenizer.model_max_length = config["model_max_length"]
    return tokenizer


def sequence_ends(tokenizer, bos: bool, eos: bool) -> None:
    """The begin/end-of-sequence tokens as the class set them, whatever the file's post-processor says."""
    from tokenizers import processors

    ends = [(token, tokenizer.convert_tokens_to_ids(token)) for token, on in
            ((tokenizer.bos_token, bos), (tokenizer.eos_token, eos)) if on and token]  # fmt: skip
    first = f"{tokenizer.bos_token} " if bos and tokenizer.bos_token else ""
    last = f" {tokenizer.eos_token}" if eos and tokenizer.eos_token else ""
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{first}$A{last}", pair=f"{first}$A{last} {first}$B{last}", special_tokens=ends
    )


def keep_pipeline(folder: Path) -> None:
    """Make the saved tokenizer load as saved: the generic fast class, not a model class that rebuilds it."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = GENERIC_CLASS
    for key in ("legacy", "add_prefix_space"):  # read only by the classes that rebuild the pipeline
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
