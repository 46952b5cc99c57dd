"""Answer an eval set with a model, resumably: through transformers (batched, greedy by default, one shard per
process under `accelerate launch`) or through any OpenAI-compatible server (vLLM or SGLang serving the tuned
model, or a hosted API) via the project's generation client.

Each answer is appended to a JSONL file as soon as its batch is done; re-running the same command skips the
questions already answered. Questions whose image is absent, empty or cut off are answered without the image
(or skipped with `missing_image="skip"`), and every answer records its image status so that reports can count
them.

    accelerate launch -m vital_hub.cli eval answer --model ./ckpt --questions qa50.jsonl \
        --images qa50_images --out answers.jsonl
"""

from __future__ import annotations

import base64
import io
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from vital_hub.eval.records import (
    EvalQuestion,
    ImageCheck,
    JsonlAppender,
    load_image,
    load_questions,
    read_answer_log,
)
from vital_hub.generation.client import ServerOptions

MISSING_IMAGE_POLICIES = ("text-only", "skip")
DEFAULT_PROMPT_TEMPLATE = "USER: {image}{question} ASSISTANT:"


@dataclass
class AnswerConfig(ServerOptions):
    questions: str = field(metadata={"help": "eval questions: qa50 JSONL or LLaVA-Med VQA records (JSON/JSONL)"})
    out: str = field(metadata={"help": "answers JSONL, appended; re-running resumes"})
    model: str = field(metadata={"help": "model folder or Hub id (transformers) or served model name (openai)"})
    backend: str = field(default="transformers", metadata={"help": "transformers | openai"})
    image_folder: str | None = field(default=None, metadata={"help": "folder holding the questions' images"})
    model_id: str | None = field(default=None, metadata={"help": "label written in each answer (default: model)"})
    batch_size: int = field(default=8, metadata={"help": "questions per generate() call"})
    max_new_tokens: int = field(default=512, metadata={"help": "answer length limit"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy, deterministic"})
    seed: int = field(default=0, metadata={"help": "seed for sampling when temperature > 0"})
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16"})
    missing_image: str = field(default="text-only", metadata={"help": "text-only | skip, for unreadable images"})
    prompt_template: str | None = field(
        default=None, metadata={"help": "used when the processor has no chat template; {image} and {question}"}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "system message for chat templates"})
    cache_path: str | None = field(default=None, metadata={"help": "SQLite request cache (openai backend)"})
    image_detail: str = field(default="auto", metadata={"help": "image_url detail: low | high | auto"})
    limit: int | None = field(default=None, metadata={"help": "answer only the first N questions"})

    def __post_init__(self):
        get_backend(self.backend)
        if self.missing_image not in MISSING_IMAGE_POLICIES:
            raise ValueError(f"missing_image must be one of {MISSING_IMAGE_POLICIES}, got {self.missing_image!r}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    @property
    def label(self) -> str:
        return self.model_id or self.model


@dataclass
class Pending:
    question: EvalQuestion
    image: ImageCheck


def answer_row(config: AnswerConfig, item: Pending, text: str | None, **extra) -> dict:
    return {
        "question_id": item.question.question_id,
        "prompt": item.question.prompt,
        "text": text,
        "model_id": config.label,
        "backend": config.backend,
        "image": item.question.image,
        "image_status": item.image.status,
        **({"image_detail": item.image.detail} if item.image.detail else {}),
        **extra,
    }


def pending_questions(config: AnswerConfig, done: set[str]) -> tuple[list[Pending], list[Pending]]:
    """Questions still to answer, and those to record as skipped because their image cannot be used."""
    questions = load_questions(config.questions)[: config.limit]
    todo, skipped = [], []
    for question in questions:
        if question.key in done:
            continue
        item = Pending(question, load_image(config.image_folder, question.image))
        if item.image.status not in ("ok", "no_image") and config.missing_image == "skip":
            skipped.append(item)
        else:
            todo.append(item)
    return todo, skipped


def batches(items: list[Pending], size: int) -> Iterator[list[Pending]]:
    """Batches that never mix questions with and without a picture (a processor call takes one kind)."""
    for has_image in (True, False):
        group = [item for item in items if (item.image.image is not None) == has_image]
        for start in range(0, len(group), size):
            yield group[start : start + size]


# ---------------------------------------------------------------- transformers


def load_model(config: AnswerConfig, device):
    import torch
    from transformers import AutoModelForImageTextToText

    from vital_hub.training.processors import load_processor_from

    dtypes = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if config.dtype not in dtypes:
        raise ValueError(f"dtype must be one of {list(dtypes)}, got {config.dtype!r}")
    processor = load_processor_from(config.model)
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtypes[config.dtype]).to(device).eval()
    return processor, model


def stop_token_ids(processor, model) -> list[int]:
    """Where an answer ends: the model's generation eos, plus the token the chat template closes an assistant
    turn with (`<|im_end|>`, `<end_of_turn>`, `<end_of_utterance>`, ...), so that a Hub checkpoint whose
    generation config names only the tokenizer's eos still stops at the end of its turn."""
    from vital_hub.training.card import end_of_turn_ids
    from vital_hub.training.masking import MaskingError, render_with_targets

    configured = model.generation_config.eos_token_id
    ids = [] if configured is None else list(configured) if isinstance(configured, list) else [configured]
    if getattr(processor, "chat_template", None):
        turn = [{"role": "user", "content": [{"type": "text", "text": "Q"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A"}]}]  # fmt: skip
        try:
            ids += end_of_turn_ids(processor, set(render_with_targets(processor, turn).end_tokens))
        except MaskingError:  # a template that cannot be read turn by turn: keep the configured eos
            pass
    return list(dict.fromkeys(ids))


def render_prompt(processor, config: AnswerConfig, item: Pending) -> str:
    has_image = item.image.image is not None
    if getattr(processor, "chat_template", None) and config.prompt_template is None:
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": item.question.prompt}]
        messages = [{"role": "user", "content": content}]
        if config.system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": config.system_prompt}]})
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image_token = getattr(processor, "image_token", "<image>")
    template = config.prompt_template or DEFAULT_PROMPT_TEMPLATE
    return template.format(image=f"{image_token}\n" if has_image else "", question=item.question.prompt)


def generate_batch(processor, model, config: AnswerConfig, batch: list[Pending], stop_ids=None) -> list[str]:
    """One generate() call for a batch; images nested one list per row, as every family's processor takes them,
    rows padded on the left so that generation continues from each row's end."""
    import torch

    prompts = [render_prompt(processor, config, item) for item in batch]
    images = [[item.image.image] for item in batch if item.image.image is not None]
    inputs = processor(text=prompts, images=images or None, padding=True, padding_side="left", return_tensors="pt").to(
        model.device
    )
    sampling = (
        {"do_sample": True, "temperature": config.temperature} if config.temperature > 0 else {"do_sample": False}
    )
    stop = {"eos_token_id": stop_ids} if stop_ids else {}
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=config.max_new_tokens, **sampling, **stop)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def as_original_lineage(config: AnswerConfig, model, todo: list[Pending]) -> list[Pending]:
    """A converted LLaVA-1.5 / LLaVA-Med model (`vital convert llava-original`): its pictures prepared and its tower
    run as the original evaluation code did (vital_hub.convert.lineage); other models as they are."""
    from PIL import Image

    from vital_hub.convert.lineage import draw_offsets, lineage_of, prepare_image, run_tower_as_original

    settings = lineage_of(model)
    if settings is None:
        return todo
    warning = run_tower_as_original(model, config.model if Path(config.model).is_dir() else None, settings)
    if warning:
        print(f"vital eval answer: {warning}", file=sys.stderr)
    offsets = {}
    if settings.get("random_offset"):  # one draw per non-square picture, in question order, done ones included
        questions = load_questions(config.questions)[: config.limit]
        sizes = [picture_size(load_image(config.image_folder, question.image)) for question in questions]
        offsets = dict(zip((q.key for q in questions), draw_offsets(sizes, config.seed, settings), strict=True))
    for item in todo:
        if item.image.image is None:
            continue
        if settings.get("image_mode") == "rgb":  # the original's Image.open(...).convert('RGB'), as loaded
            prepared = prepare_image(item.image.image, settings)
        else:
            with Image.open(Path(config.image_folder) / item.question.image) as opened:  # in the file's own mode
                opened.load()
                prepared = prepare_image(opened, settings, offsets.get(item.question.key))
        item.image = replace(item.image, image=prepared)
    return todo


def picture_size(check: ImageCheck) -> tuple[int, int] | None:
    return None if check.image is None else check.image.size


def shard_path(out: Path, rank: int, world: int) -> Path:
    return out if world == 1 else out.with_name(f"{out.name}.rank{rank}-of-{world}")


def answer_with_transformers(config: AnswerConfig) -> dict:
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    # Without cpu=True accelerate ignores a torchrun/accelerate world on a machine with no GPU and every process
    # would answer every question.
    state = PartialState(cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != state.num_processes:
        raise RuntimeError(
            f"launched {launched} processes but accelerate sees {state.num_processes}; answers would repeat"
        )
    out = Path(config.out)
    done = set(read_answer_log(out))
    for rank in range(state.num_processes):
        done |= set(read_answer_log(shard_path(out, rank, state.num_processes)))
    todo, skipped = pending_questions(config, done)
    # Every process must split the same list: none may write before all have read what is already done.
    state.wait_for_everyone()
    set_seed(config.seed)
    processor, model = load_model(config, state.device)
    todo = as_original_lineage(config, model, todo)
    stop_ids = stop_token_ids(processor, model)
    written = 0
    with state.split_between_processes(todo) as mine:
        with JsonlAppender(shard_path(out, state.process_index, state.num_processes)) as writer:
            if state.is_main_process:
                writer.write_many(answer_row(config, item, None, status="skipped") for item in skipped)
            bar = tqdm(total=len(mine), desc=f"answer [{state.process_index}]", disable=not mine)
            for batch in batches(mine, config.batch_size):
                for item, text in zip(batch, generate_batch(processor, model, config, batch, stop_ids), strict=True):
                    writer.write(answer_row(config, item, text, status="ok"))
                written += len(batch)
                bar.update(len(batch))
            bar.close()
    state.wait_for_everyone()
    if state.num_processes > 1:
        if state.is_main_process:
            merge_shards(out, state.num_processes)
        state.destroy_process_group()
    return {"answered": written, "skipped": len(skipped), "already_done": len(done), "failed": 0}


def merge_shards(out: Path, world: int) -> None:
    """Fold the per-process files into the answers file, then remove them."""
    existing = read_answer_log(out)
    with JsonlAppender(out) as writer:
        for rank in range(world):
            part = shard_path(out, rank, world)
            for key, row in read_answer_log(part).items():
                if key not in existing:
                    writer.write(row)
                    existing[key] = row
    for rank in range(world):
        shard_path(out, rank, world).unlink(missing_ok=True)


# ---------------------------------------------------------------- OpenAI-compatible server


def image_data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def server_request(config: AnswerConfig, item: Pending) -> dict:
    content: list[dict] = [{"type": "text", "text": item.question.prompt}]
    if item.image.image is not None:
        url = {"url": image_data_url(item.image.image), "detail": config.image_detail}
        content.insert(0, {"type": "image_url", "image_url": url})
    messages = [{"role": "user", "content": content}]
    if config.system_prompt:
        messages.insert(0, {"role": "system", "content": config.system_prompt})
    request = {"messages": messages, "max_tokens": config.max_new_tokens, "temperature": config.temperature}
    if config.temperature > 0:
        request["seed"] = config.seed
    return request


def answer_with_server(config: AnswerConfig) -> dict:
    from vital_hub.generation.client import ChatClient

    out = Path(config.out)
    done = set(read_answer_log(out))
    todo, skipped = pending_questions(config, done)
    client = ChatClient(config.client_config(config.model, config.cache_path))
    answered, failures = 0, []
    chunk = max(config.concurrency * 4, config.batch_size)  # checkpoint every few rounds of requests
    try:
        with JsonlAppender(out) as writer:
            writer.write_many(answer_row(config, item, None, status="skipped") for item in skipped)
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                results = client.chat_many([server_request(config, item) for item in part], desc="answer")
                for item, result in zip(part, results, strict=True):
                    if result.ok:
                        writer.write(
                            answer_row(config, item, result.text, status="ok", finish_reason=result.finish_reason)
                        )
                        answered += 1
                    else:
                        failures.append({"question_id": item.question.question_id, "error": result.error})
    finally:
        client.close()
    counts = {"answered": answered, "skipped": len(skipped), "already_done": len(done), "failed": len(failures)}
    return {**counts, "failures": failures[:20]}


BACKENDS: dict[str, Callable[[AnswerConfig], dict]] = {
    "transformers": answer_with_transformers,
    "openai": answer_with_server,
}


def get_backend(name: str) -> Callable[[AnswerConfig], dict]:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[name]


def answer(config: AnswerConfig) -> dict:
    """Answer every question not yet in `config.out`; returns counts (answered, skipped, failed, already done)."""
    return get_backend(config.backend)(config)
