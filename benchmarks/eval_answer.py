"""Benchmark the two slow steps of an evaluation against their baselines, in the same run:

- answering: `vital eval answer`'s batched generation (left-padded batches of `--batch-size`) against the one
  question at a time loop of LLaVA-Med's model_vqa.py, same model, same questions, greedy;
- judging: the qa50 judge's concurrent requests (generation client, `--concurrency`) against sequential requests,
  on the fake OpenAI server with a fixed latency per request.

    python benchmarks/eval_answer.py                          # CPU: tiny random LLaVA
    python benchmarks/eval_answer.py --preset llava-7b --part answer   # GPU: LLaVA-1.5-7B shapes, bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRESETS = {
    "tiny": {"vision": {}, "text": {}},
    "llava-7b": {  # CLIP ViT-L/14-336 + Llama-2-7B shapes
        "vision": {
            "image_size": 336,
            "patch_size": 14,
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "projection_dim": 768,
        },
        "text": {
            "vocab_size": 32000,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
        },
    },
}
QUESTIONS = [
    "What is the organ shown in the image?",
    "Describe the findings in this figure in detail, including any abnormality you can see.",
    "Which imaging modality was used?",
    "Is there evidence of a mass or lesion, and where is it located relative to the surrounding structures?",
]


def synthetic_items(count: int, seed: int = 0):
    import numpy as np
    from PIL import Image

    from vital_hub.eval.answer import Pending
    from vital_hub.eval.records import EvalQuestion, ImageCheck

    rng = np.random.default_rng(seed)
    items = []
    for index in range(count):
        pixels = rng.integers(0, 255, size=(384, 512, 3), dtype=np.uint8)
        question = EvalQuestion(index, f"{index}.jpg", QUESTIONS[index % len(QUESTIONS)], None)
        items.append(Pending(question, ImageCheck(Image.fromarray(pixels), "ok")))
    return items


def time_answering(processor, model, items, batch_size: int, max_new_tokens: int) -> float:
    import torch

    from vital_hub.eval.answer import AnswerConfig, batches, generate_batch

    config = AnswerConfig("-", "-", "-", batch_size=batch_size, max_new_tokens=max_new_tokens)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    generate_batch(processor, model, config, items[:batch_size])  # warm-up (kernels, allocator)
    sync()
    start = time.perf_counter()
    for batch in batches(items, batch_size):
        generate_batch(processor, model, config, batch)
    sync()
    return time.perf_counter() - start


def bench_answer(args) -> list[tuple]:
    import torch

    from tests.fakes.tiny_llava import tiny_llava_parts

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    preset = PRESETS[args.preset]
    processor, model = tiny_llava_parts(preset["vision"], preset["text"], device=device, dtype=dtype)
    processor.tokenizer.padding_side = "left"
    items = synthetic_items(args.questions)
    baseline = time_answering(processor, model, items, 1, args.max_new_tokens)
    batched = time_answering(processor, model, items, args.batch_size, args.max_new_tokens)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    return [
        (f"answer {args.preset} on {name}: one question at a time (LLaVA-Med loop)", args.questions / baseline, 1.0),
        (
            f"answer {args.preset} on {name}: batches of {args.batch_size}",
            args.questions / batched,
            baseline / batched,
        ),
    ]


def bench_judge(args) -> list[tuple]:
    import json

    from tests.fakes.judge_replies import chat_judge_reply
    from tests.fakes.openai_server import FakeOpenAIServer
    from vital_hub.eval.chat import ChatJudgeConfig, run_chat_judge

    os.environ.setdefault("OPENAI_API_KEY", "benchmark")
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        FakeOpenAIServer(latency_s=args.latency, reply=chat_judge_reply) as server,
    ):
        questions, answers = Path(tmp) / "q.jsonl", Path(tmp) / "a.jsonl"
        questions.write_text(
            "".join(
                json.dumps(
                    {
                        "question_id": i,
                        "text": QUESTIONS[i % 4] + f" ({i})\n<image>",
                        "gpt4_answer": "x" * 80,
                        "type": "conversation",
                        "domain": {"mri": True},
                    }
                )
                + "\n"
                for i in range(args.judgements)
            )
        )
        answers.write_text(
            "".join(json.dumps({"question_id": i, "text": "short"}) + "\n" for i in range(args.judgements))
        )
        times = {}
        for concurrency in (1, args.concurrency):
            config = ChatJudgeConfig(
                str(questions),
                str(answers),
                f"{tmp}/out{concurrency}",
                base_url=server.url,
                concurrency=concurrency,
                bootstrap=0,
            )
            start = time.perf_counter()
            run_chat_judge(config)
            times[concurrency] = time.perf_counter() - start
    base = times[1]
    for concurrency, seconds in times.items():
        label = "sequential (LLaVA-Med loop)" if concurrency == 1 else f"concurrency {concurrency}"
        rows.append(
            (
                f"judge {args.judgements} qa50 requests, {args.latency}s latency: {label}",
                args.judgements / seconds,
                base / seconds,
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("answer", "judge", "all"), default="all")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--judgements", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    rows = []
    if args.part in ("answer", "all"):
        rows += bench_answer(args)
    if args.part in ("judge", "all"):
        rows += bench_judge(args)
    width = max(len(row[0]) for row in rows)
    print(f"{'case':<{width}}  {'items/s':>9}  {'ratio':>6}")
    for name, rate, ratio in rows:
        print(f"{name:<{width}}  {rate:>9.2f}  {ratio:>5.1f}x")


if __name__ == "__main__":
    main()
