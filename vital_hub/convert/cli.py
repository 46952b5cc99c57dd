"""`vital convert llava-original`: an original-LLaVA checkpoint (local folder or Hub id) as a transformers folder.

    vital convert llava-original --model mao1207/BioMed-VITAL-models --out models/biomed-vital-13b
    vital convert llava-original --model microsoft/llava-med-v1.5-mistral-7b --out models/llava-med-v1.5 \\
        --push-to my-org/llava-med-v1.5-mistral-7b-hf

The folder is written as `OUT.partial` and renamed when complete, so an interrupted run leaves no half model
under OUT and re-running starts that conversion again; once OUT is complete, re-running with `--push-to` only
pushes (the upload resumes). Shards are converted one at a time (see
`vital_hub.convert.tensors`). What reaches the model is the original's: its tokenizer
(`vital_hub.convert.tokenizer`), its tower and the tower's precision, its image handling
(`vital_hub.convert.lineage`) and its generation settings.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from vital_hub.cli_args import DefaultsOnce, positive_float
from vital_hub.convert.formats import CHAT_FORMATS
from vital_hub.convert.llava_original import ConversionError

HUB_COMMIT = re.compile(r"^[0-9a-f]{40}$")
MODEL_PATTERNS = (["*.json", "*.model", "*.txt", "*.safetensors"], ["*.json", "*.model", "*.txt", "*.bin"])
CLIP_PATTERNS = (["config.json", "*.safetensors"], ["config.json", "*.bin"])
DTYPES = ("auto", "float16", "bfloat16", "float32")
TOWER_PREFIX = "model.vision_tower."
# generation settings of the source that describe the model, not this converter's token ids
GENERATION_FIELDS = ("max_length", "max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "num_beams",
                     "repetition_penalty", "no_repeat_ngram_size", "length_penalty")  # fmt: skip


@dataclass(frozen=True)
class Source:
    folder: Path
    name: str  # the Hub id or the folder as given
    revision: str | None  # the commit converted, when it came from the Hub
    subfolder: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} ({self.subfolder})" if self.subfolder else self.name


def resolve(model: str, revision: str | None, patterns: tuple[list[str], list[str]], subfolder: str = "") -> Source:
    """A local folder as is, or a Hub snapshot (safetensors preferred, `.bin` files otherwise); `subfolder` picks
    one model of a repo that holds several."""
    from vital_hub.convert.tensors import find_weights
    from vital_hub.hub import REPO_ID, download_repo

    prefix = subfolder.strip("/") + "/" if subfolder else ""
    if Path(model).is_dir():
        return Source(Path(model) / prefix, model, revision, prefix.rstrip("/"))
    if not REPO_ID.match(model):
        raise ConversionError(f"{model}: no such folder, and not a Hub model id of the form ORG/NAME")
    for allow in patterns:
        snapshot = download_repo(
            model, repo_type="model", revision=revision, allow_patterns=[prefix + p for p in allow]
        )
        try:
            find_weights(snapshot / prefix)
        except ValueError:
            continue
        commit = snapshot.name if HUB_COMMIT.match(snapshot.name) else revision
        return Source(snapshot / prefix, model, commit, prefix.rstrip("/"))
    raise ConversionError(
        f"{model}: the Hub repo has no model.safetensors* or pytorch_model*.bin weights{' in ' + prefix if prefix else ''}"
    )


def convert(args: argparse.Namespace) -> dict:
    from huggingface_hub.errors import StrictDataclassError

    from vital_hub.convert import llava_original as lo
    from vital_hub.convert.formats import build_processor, generation_config
    from vital_hub.convert.lineage import CONFIG_KEY, lineage_settings
    from vital_hub.convert.tensors import find_weights
    from vital_hub.convert.tokenizer import keep_pipeline, original_tokenizer

    out = Path(args.out)
    if (out / "config.json").exists():
        if args.push_to and converted_from(out, args.model):  # the conversion is done: re-running resumes the push
            return {"out": str(out), "pushed": push(out, args.push_to, args.model)}
        raise ConversionError(f"{out}: already holds a model; remove it or choose another --out")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out}: exists and is not an empty folder; choose another --out")
    source = resolve(args.model, args.revision, MODEL_PATTERNS, args.subfolder or "")
    raw = lo.read_config(source.folder)
    settings = lo.original_settings(raw, source.folder, args.chat_format)
    weights = find_weights(source.folder)
    stored_tower = any(key.startswith(TOWER_PREFIX) for key in weights.all_keys)
    if args.tower_from_checkpoint and not stored_tower:
        raise ConversionError(
            f"{source.folder}: --tower-from-checkpoint, but the checkpoint has no vision tower weights"
        )
    use_stored = args.tower_from_checkpoint
    tower = args.vision_tower or settings.vision_tower
    clip = None  # where the tower's config (and, unless the stored copy is used, its weights) come from
    if not use_stored:  # the original loaded mm_vision_tower and dropped any copy in the checkpoint
        clip = resolve(tower, None, CLIP_PATTERNS)
    elif Path(tower).is_dir():
        clip = Source(Path(tower), tower, None)
    clip_weights = None
    if clip is not None and not use_stored:
        try:
            clip_weights = find_weights(clip.folder)
        except ValueError as err:
            hint = " (or --tower-from-checkpoint for the copy the checkpoint holds)" if stored_tower else ""
            raise ConversionError(
                f"vision tower: {err}; pass --vision-tower with a CLIP folder or Hub id{hint}"
            ) from None

    tokenizer, tokenizer_note = original_tokenizer(source.folder, settings.family)
    dtype = (raw.get("torch_dtype") or raw.get("dtype") or "float16") if args.dtype == "auto" else args.dtype
    lineage = lineage_settings(settings.family, settings.pad_to_square)
    # the tower at the precision the original ran it (LLaVA-1.5's builder kept CLIP in float32, LLaVA-Med's cast it
    # to the language model's dtype)
    lineage["vision_dtype"] = "float32" if args.dtype == "float32" or lineage["vision_dtype"] == "float32" else dtype
    try:  # transformers checks each field's type: `hidden_size: "big"` is an error naming the field
        vision = lo.vision_config(settings, clip.folder if clip else None)
        config = lo.llava_config(raw, settings, tokenizer, vision, dtype)
    except (TypeError, KeyError, StrictDataclassError) as err:
        reason = " ".join(str(err).split())  # the validation message spans lines
        raise ConversionError(f"{source.folder / 'config.json'} (or the vision tower's): {reason}") from None
    setattr(config, CONFIG_KEY, lineage)
    targets = lo.target_shapes(config)
    mapping = lo.plan_keys(weights, targets, clip_weights, source.folder, drop_tower=not use_stored)

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        files = write_weights(partial, weights, clip_weights, mapping, targets, dtype, lineage["vision_dtype"], args)
        config.save_pretrained(partial)
        from_source = source_generation(source.folder, raw)
        carried = generation_config(tokenizer, from_source)
        # written as the source had them: sampling values beside a greedy default were valid there (ignored while
        # do_sample is false), which save_pretrained refuses
        carried.to_json_file(partial / "generation_config.json", use_diff=True)
        processor = build_processor(
            tokenizer, vision.image_size, vision.patch_size, settings.pad_to_square, settings.chat_format,
            settings.select_strategy,
        )  # fmt: skip
        processor.save_pretrained(partial)
        keep_pipeline(partial)
        notes = {"tokenizer": tokenizer_note, "stored_tower": use_stored, "lineage": lineage,
                 "generation": from_source}  # fmt: skip
        (partial / "README.md").write_text(
            card(source, clip if clip_weights is not None else None, settings, weights, notes)
        )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a half-written folder is of no use; the source is untouched
        raise
    if out.exists():
        out.rmdir()  # checked empty above
    partial.rename(out)
    result = {"out": str(out), "files": [f.name for f in files], "tensors": len(mapping), "source": source.label}
    result |= {
        "revision": source.revision,
        "chat_format": settings.chat_format,
        "pad_to_square": settings.pad_to_square,
        "lineage": lineage["lineage"],
        "vision_tower": "checkpoint" if use_stored else (clip.name if clip else tower),
    }
    if args.push_to:
        result["pushed"] = push(out, args.push_to, source.label)
    return result


def push(out: Path, repo_id: str, label: str) -> str:
    from vital_hub.hub import push_folder

    return push_folder(out, repo_id, repo_type="model", commit_message=f"Convert {label}")


def converted_from(out: Path, model: str) -> bool:
    """Whether `out` is this converter's folder for `model` (its card names the source)."""
    card_path = out / "README.md"
    return card_path.is_file() and f"original-LLaVA checkpoint `{model}" in card_path.read_text(encoding="utf-8")


def write_weights(
    folder: Path, weights, clip_weights, mapping: dict, targets: dict, dtype: str, vision_dtype: str, args
) -> list[Path]:
    """Every source shard in turn, renamed and written before the next is read; then the tower's weights. Tower
    tensors are written at `vision_dtype`, the rest at the checkpoint's dtype (or `--dtype`)."""
    import torch
    from tqdm import tqdm

    from vital_hub.convert import llava_original as lo
    from vital_hub.convert.tensors import ShardWriter, iter_tensors

    writer = ShardWriter(folder, int(args.max_shard_gb * 1024**3))
    cast = getattr(torch, dtype) if args.dtype != "auto" else None
    progress = tqdm(total=len(weights.all_keys), unit="tensor", desc="convert", mininterval=1.0, disable=None)
    tower_cast = getattr(torch, vision_dtype)
    keep_tower = any(name.startswith(TOWER_PREFIX) for name in mapping)
    for path in weights.files:
        for key, tensor in iter_tensors(path):
            progress.update()
            if lo.rename(key, targets) is None:
                continue
            if key not in mapping:
                if key.startswith(TOWER_PREFIX) and not keep_tower:
                    continue  # the stored tower copy, dropped as the original dropped it
                raise ConversionError(f"{path}: key {key!r} is in the shard but not in its index")
            target = mapping[key]
            tensor_cast = tower_cast if key.startswith(TOWER_PREFIX) else cast
            writer.add(target, fit(path, key, target, tensor, targets, tensor_cast))
        writer.end_shard()
    if clip_weights is not None:  # the tower named by mm_vision_tower (or --vision-tower), as the original loaded it
        for path in clip_weights.files:
            for key, tensor in iter_tensors(path):
                target = mapping.get(f"clip:{key}")
                if target is not None:
                    writer.add(target, fit(path, key, target, tensor, targets, tower_cast))
            writer.end_shard()
    progress.close()
    return writer.finish()


def source_generation(folder: Path, raw: dict) -> dict:
    """The source's generation settings: its generation_config.json, else the same fields of its config.json (where
    transformers 4.3x also read them)."""
    path = folder / "generation_config.json"
    values = raw
    if path.is_file():
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConversionError(f"{path}: not JSON: {err}") from None
    return {key: values[key] for key in GENERATION_FIELDS if values.get(key) is not None}


def fit(path: Path, key: str, target: str, tensor, targets: dict, cast):
    """The tensor in the shape and dtype the transformers model expects; the vocabulary matrices gain the rows of
    the added tokens, initialised with the mean row."""
    import torch

    expected = targets[target]
    if cast is not None and tensor.is_floating_point() and tensor.dtype != cast:
        tensor = tensor.to(cast)
    if tuple(tensor.shape) == expected:
        return tensor
    if target in ("model.language_model.embed_tokens.weight", "lm_head.weight") and tensor.dim() == 2:
        extra = expected[0] - tensor.shape[0]
        if extra > 0 and tensor.shape[1] == expected[1]:
            return torch.cat([tensor, mean_row(tensor).expand(extra, -1)])
    raise ConversionError(f"{path}: {key!r} has shape {list(tensor.shape)}, the model expects {list(expected)}")


def mean_row(matrix, block: int = 4096):
    """The mean of a matrix's rows, summed in float32 a block at a time (a float32 copy of a 13B model's output
    matrix would add 650 MB to the peak)."""
    import torch

    total = torch.zeros(matrix.shape[1], dtype=torch.float32)
    for start in range(0, matrix.shape[0], block):
        total += matrix[start : start + block].sum(dim=0, dtype=torch.float32)
    return (total / matrix.shape[0]).to(matrix.dtype)[None]


def source_licence(source: Source) -> dict:
    """The converted model keeps its source's licence (`vital_hub.io.inherited_licence`)."""
    from vital_hub.io import inherited_licence

    on_hub = not Path(source.name).exists()
    return inherited_licence(source.folder / "README.md", source.name if on_hub else None, source.revision)


def card(source: Source, clip: Source | None, settings, weights, notes: dict) -> str:
    revision = source.revision or "not recorded (converted from a local folder)"
    tower = f"`{clip.name}`" + (f" at revision `{clip.revision}`" if clip.revision else "") if clip else None
    if tower and clip.name != settings.vision_tower:
        tower += f" (in place of `mm_vision_tower` `{settings.vision_tower}`)"
    elif tower:
        tower += " (the config's `mm_vision_tower`, as the original loaded it)"
    if notes["stored_tower"]:
        tower = "the copy stored in the checkpoint (`--tower-from-checkpoint`; the original code ignored it and loaded"
        tower += f" `{settings.vision_tower}`)"
    lineage = notes["lineage"]
    images = {
        "llava-1.5": "converted to RGB, then padded to a square with the CLIP mean colour (122, 116, 104), centred",
        "llava-med": "kept in the file's mode and padded to a square with gray 114 (grayscale) or the CLIP mean "
        "colour, at a random one-pixel offset (Python `random`, seeded 0, one draw per non-square picture)",
    }[lineage["lineage"]]
    generation = ", ".join(f"`{key}: {json.dumps(value)}`" for key, value in sorted(notes["generation"].items()))
    front = {"library_name": "transformers", "pipeline_tag": "image-text-to-text", "tags": ["llava", "biomedical"]}
    front.update(source_licence(source))
    if not Path(source.name).exists():
        front["base_model"] = source.name
    lines = ["---", *(f"{key}: {json.dumps(value)}" for key, value in front.items()), "---", ""]
    lines += [
        f"# {Path(source.name).name} (transformers format)",
        "",
        f"Converted from the original-LLaVA checkpoint `{source.label}`, revision `{revision}`, with "
        f"`vital convert llava-original` (vital-hub). Weights are unchanged apart from the `<image>` token's rows",
        "added to the embedding and output matrices (mean-initialised; the image features replace that embedding).",
        "",
        f"- Source files: {', '.join(f'`{path.name}`' for path in weights.files)}",
        f"- Vision tower: {tower}, hidden layer "
        f"{settings.select_layer}, strategy `{settings.select_strategy}`, stored in {lineage['vision_dtype']} as the "
        f"original ran it",
        f"- Image preprocessing: {'pad to a square with the mean colour, then ' if settings.pad_to_square else ''}"
        "CLIP resize and centre crop (`do_pad` of the processor)"
        + (
            f"; `vital eval answer` does as the original `{lineage['lineage']}` code: {images}"
            if settings.pad_to_square
            else ""
        ),
        f"- Tokenizer: {notes['tokenizer']}",
        f"- Chat template: the original `{settings.chat_format}` conversation format; stops at `</s>`",
        f"- Generation settings of the source: {generation or 'none'}",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "",
        'model = AutoModelForImageTextToText.from_pretrained("THIS_FOLDER_OR_REPO")',
        'processor = AutoProcessor.from_pretrained("THIS_FOLDER_OR_REPO")',
        "```",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsOnce,
        prog="vital convert llava-original",
        description="Convert an original-LLaVA checkpoint (LlavaLlama/LlavaMistral) to LlavaForConditionalGeneration.",
    )
    parser.add_argument("--model", required=True, help="checkpoint folder or Hub model id")
    parser.add_argument("--out", required=True, help="output folder (must not hold a model yet)")
    parser.add_argument("--revision", help="Hub revision of --model to convert (default: main)")
    parser.add_argument("--subfolder", help="the model's folder inside --model, for repos that hold several")
    parser.add_argument(
        "--vision-tower", help="CLIP folder or Hub id for the tower (default: the config's mm_vision_tower)"
    )
    parser.add_argument(
        "--tower-from-checkpoint",
        action="store_true",
        help="use the tower weights stored in the checkpoint (the original code ignored them and loaded "
        "mm_vision_tower)",
    )
    parser.add_argument("--chat-format", choices=sorted(CHAT_FORMATS), help="default: by language model family")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto keeps the checkpoint's dtype")
    parser.add_argument("--max-shard-gb", type=positive_float, default=5.0, help="largest output shard, in GiB")
    parser.add_argument("--push-to", help="upload the folder to this Hub model repo (ORG/NAME)")
    return parser


def llava_original_main(argv: list[str]) -> int:
    result = convert(build_parser().parse_args(argv))
    print(json.dumps(result, indent=2))
    return 0
