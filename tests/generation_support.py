"""Data made in the test for the generation tests: small figures, a captions file and a demonstration pool."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from vital_hub.schema import DOMAINS


def make_figures(root: Path, count: int, missing: tuple[int, ...] = ()) -> tuple[Path, Path, list[str]]:
    """`count` figures as `<pair_id>.jpg` + a LLaVA-Med captions file; indices in `missing` are empty files."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(count):
        pair_id = f"{30000000 + index}_F{index % 3 + 1}"
        if index in missing:
            (images / f"{pair_id}.jpg").write_bytes(b"")  # a failed download, as in the public qa50 copy
        else:
            Image.new("RGB", (40 + index, 30), (index * 9 % 255, 60, 90)).save(images / f"{pair_id}.jpg", quality=85)
        modality = DOMAINS[index % len(DOMAINS)]
        mentions = [{"tokens": f"As shown in Fig. {index} , the finding persists .", "entities": []}]
        records.append(
            {
                "pair_id": pair_id,
                "pmid": str(30000000 + index),
                "fig_id": f"F{index % 3 + 1}",
                "fig_label": f"Figure {index % 3 + 1}",
                "fig_caption": f"Synthetic caption number {index}.",
                "in_text_mention": mentions if index % 2 else None,
                "domain": {name: name == modality for name in DOMAINS},
            }
        )
    captions = root / "captions.json"
    captions.write_text(json.dumps({"synthetic": records}), encoding="utf-8")
    return images, captions, [r["pair_id"] for r in records]


def make_demonstrations(path: Path, per_modality: int = 2) -> Path:
    """A pool in the format of clinician_demonstrations.json with `per_modality` records per modality."""
    records = []
    for modality in DOMAINS:
        for number in range(per_modality):
            pair_id = f"demo_{modality}_{number}"
            records.append(
                {
                    "id": len(records) + 1,
                    "imgs": f"{pair_id}.jpg",
                    "pair_id": pair_id,
                    "fig_label": "Fig. 1",
                    "fig_caption": f"A {modality} example {number}.",
                    "in_text_mention": [f"The {modality} shows finding {number}."],
                    "domain": {name: name == modality for name in DOMAINS},
                    "conversations": [
                        {"from": "human", "value": "What modality is this?\n<image>"},
                        {"from": "gpt", "value": f"It is {modality}."},
                        {"from": "human", "value": f"What is seen in example {number}?"},
                        {"from": "gpt", "value": f"Finding {number}."},
                    ],
                }
            )
    path.write_text(json.dumps(records), encoding="utf-8")
    return path
