"""The selector's model card (README.md): what it was trained on, how, how it scored, its licence and how to use
it without vital-hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def _training_length(info: dict) -> str:
    """What training ran, not only what was configured: max_steps stops a run before its epochs are done."""
    trained = info.get("epochs_trained")
    if trained is None:
        return f"{info.get('epochs')} epochs (configured)"
    steps = info.get("steps_trained")
    planned = f"max_steps {info['max_steps']}" if (info.get("max_steps") or -1) > 0 else f"{info.get('epochs')} epochs"
    return f"{trained:.2f} epochs, {steps} steps ({planned} configured)"


def write_model_card(folder: Path, info: dict) -> Path:
    """README.md of a selector folder: what it was trained on (config, revision), how (weights, loss) and how it
    scored. Never holds tokens or local secrets: only the fields given in `info`."""
    import yaml

    from vital_hub.hub import REPO_ID

    header = {
        "license": info.get("license") or "mit",
        "library_name": "transformers",
        "tags": ["vital-hub", "biomed-vital", "reward-model", "data-selection"],
        "pipeline_tag": "other",
    }
    base = info.get("base_model")
    if isinstance(base, str) and REPO_ID.match(base) and not Path(base).exists():
        header["base_model"] = base  # a Hub id, as the Hub requires; a local folder is not named
    dataset = info.get("dataset")
    if dataset and not Path(dataset).exists():
        header["datasets"] = [dataset]
    metrics = info.get("metrics") or {}
    metric_lines = "\n".join(f"| {k} | {_cell(v)} |" for k, v in sorted(metrics.items())) or "| (none) | |"
    size_text, size_image = info.get("text_max_length") or 256, info.get("image_size") or 224
    body = f"""# BioMed-VITAL selector ({info.get("backbone")})

A data-selection model in the BioMed-VITAL style: a {info.get("backbone")} dual encoder reads the figure and the
text "caption + mention + Question: q + Answer: a", and an MLP head scores the instruction candidate. Higher is
better; `vital select` keeps the top-scoring candidates.

## Training

| field | value |
|---|---|
| preferences dataset | {dataset} |
| config | {info.get("dataset_config")} |
| dataset revision | {info.get("dataset_revision") or "local / unpinned"} |
| training pairs | {info.get("train_pairs")} |
| held-out pairs | {info.get("eval_pairs")} |
| pairs dropped (unreadable figure) | {info.get("dropped_pairs")} |
| clinician pair weight | {info.get("clinician_weight") or "as stored in the dataset"} |
| loss | {info.get("loss_type")} (margin {info.get("margin")}) |
| center_rewards_coefficient | {info.get("center_rewards_coefficient")} |
| learning rate / batch | {info.get("learning_rate")} / {info.get("batch_size")} |
| training length | {_training_length(info)} |
| base weights | {info.get("base_model") or "built from a config (random initialisation)"} |

## Held-out metrics

| metric | value |
|---|---|
{metric_lines}

## Use

The modeling code ships with the weights, so the model loads without vital-hub:

```python
from transformers import AutoModel, AutoTokenizer

model = AutoModel.from_pretrained("PATH_OR_REPO", trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")
text = caption + mention + "Question:" + question + "Answer:" + answer
tokens = tokenizer([text], padding=True, truncation=True, max_length={size_text}, return_tensors="pt")
# pixels: uint8 tensor (N, 3, {size_image}, {size_image}), prepared as below
score = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
              token_type_ids=tokens.get("token_type_ids"), pixel_values=pixels).logits
```

- **Text**: the figure's caption, its in-text mentions (joined with newlines), then `Question:` and the first
  question with `<image>` removed, then `Answer:` and the first answer, joined with no separator; at most
  {size_text} tokens (truncated on the {info.get("truncation_side") or "right"}).
- **`attention_mask` is required** with padded batches: without it the text tower attends to padding and the
  text features change (by up to 1.15 in a field test), so scores would depend on the batch.
- **Image**: RGB; JPEG decoded in Pillow draft mode (`image.draft("RGB", (s, s))` with s = ceil(0.8 x {size_image})),
  the shorter side resized to {size_image} (bicubic), centre-cropped to {size_image} x {size_image}, given as a uint8
  tensor (N, 3, {size_image}, {size_image}); the model normalises uint8 pixels with its config's `image_mean` and
  `image_std` (float pixels are taken as already normalised).
- The score is a sigmoid output in (0, 1) when `output_sigmoid` is set in the config; higher is better.

or score and select: `vital select --selector PATH_OR_REPO --candidates ... --images ... --top K --out ...`.
"""
    path = folder / "README.md"
    path.write_text("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n\n" + body)
    (folder / "selector_training.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return path
