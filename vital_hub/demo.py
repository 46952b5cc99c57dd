"""`vital demo`: the whole instructions build on a bundled synthetic sample, offline, in well under a minute.

The sample is written by this module, not copied from anywhere: records in the released files' exact shapes
(both `<image>` placements, multi-label and absent domains, integer and string ids, the `conversatons` spelling
some LLaVA-Med code reads), a captions file whose mentions are null, strings or entity dicts, and small generated
figures, a few of them missing, empty or cut off as real PMC downloads are.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import time
from pathlib import Path

from vital_hub.cli_args import DefaultsOnce
from vital_hub.schema import DOMAINS

CAPTIONS_FILE = "llava_med_instruct_fig_captions.json"
FINDINGS = {
    "chest_xray": [
        "bilateral patchy opacities",
        "a right-sided pleural effusion",
        "cardiomegaly",
        "a left apical pneumothorax",
    ],
    "mri": [
        "a T2-hyperintense lesion in the left frontal lobe",
        "restricted diffusion in the pons",
        "a ring-enhancing mass",
    ],
    "ct_scan": ["a hypodense hepatic lesion", "mesenteric lymphadenopathy", "a 2 cm pulmonary nodule", "free fluid"],
    "histology": ["nests of atypical epithelial cells", "granulomatous inflammation", "a high mitotic index"],
    "gross": [
        "a well-circumscribed tan mass",
        "a hemorrhagic cut surface",
        "a cystic lesion with papillary projections",
    ],
}
QUESTIONS = [
    "What imaging modality is shown in this figure?",
    "What is the main finding in the image?",
    "Where is the abnormality located?",
    "What could be the differential diagnosis based on this finding?",
    "What does the arrow indicate?",
]


def _domain_flags(rng: random.Random) -> dict | None:
    roll = rng.random()
    if roll < 0.08:
        return None  # some LLaVA-Med records carry no domain at all
    flags = {name: False for name in DOMAINS}
    flags[rng.choice(DOMAINS)] = True
    if roll > 0.9:  # multi-label figures (a CT and its histology in one panel)
        flags[rng.choice(DOMAINS)] = True
    return flags


def _conversation(rng: random.Random, domain: str, rounds: int, image_first: bool) -> list[dict]:
    finding = rng.choice(FINDINGS[domain])
    turns = []
    for number, question in enumerate(rng.sample(QUESTIONS, rounds)):
        if number == 0:
            question = f"<image>\n{question}" if image_first else f"{question}\n<image>"
        answer = (
            f"The figure shows {finding}. In the context of the caption, this is consistent with the reported "
            f"{domain.replace('_', ' ')} findings; correlation with the clinical history is advised."
        )
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


def _pair_ids(rng: random.Random, count: int) -> list[str]:
    styles = ["F{}", "fig{}", "Fig{}", "F000{}", "pone-00{}-g00{}"]
    ids = set()
    while len(ids) < count:
        style = rng.choice(styles)
        figure = (
            style.format(rng.randint(1, 9), rng.randint(1, 9))
            if style.count("{}") == 2
            else style.format(rng.randint(1, 9))
        )
        ids.add(f"{rng.randint(18_000_000, 35_000_000)}_{figure}")
    return sorted(ids)


def _records(rng: random.Random, pair_ids: list[str], misspelled_every: int = 0, int_ids: bool = False) -> list[dict]:
    records = []
    for number, pair_id in enumerate(pair_ids):
        domain = _domain_flags(rng)
        main = next((name for name in DOMAINS if domain and domain[name]), rng.choice(DOMAINS))
        conversation = _conversation(rng, main, rng.randint(1, 3), image_first=rng.random() < 0.3)
        record = {"id": number if int_ids else pair_id, "image": f"{pair_id}.jpg"}
        if domain is not None:
            record["domain"] = domain
        key = (
            "conversatons"
            if misspelled_every and number % misspelled_every == misspelled_every - 1
            else "conversations"
        )
        record[key] = conversation
        records.append(record)
    return records


def _mention(rng: random.Random, pair_id: str):
    kind = rng.randrange(3)
    if kind == 0:
        return None
    sentence = f"As shown in the figure ({pair_id.split('_', 1)[1]}), the lesion was visible on admission."
    if kind == 1:
        return [sentence]
    return [
        {"tokens": sentence, "entities": [{"type": "Finding", "entity_id": "C0221198", "start_tok": 6, "end_tok": 7}]}
    ]


def _figure(rng: random.Random, domain: str | None) -> bytes:
    from PIL import Image, ImageDraw, ImageFilter

    gray = domain in ("chest_xray", "mri", "ct_scan", None)
    size = (160, 128)
    image = Image.new("RGB", size, (0, 0, 0) if gray else (235, 215, 225))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r = rng.randint(8, 40)
        tone = rng.randint(60, 230)
        color = (tone, tone, tone) if gray else (rng.randint(120, 200), rng.randint(40, 110), rng.randint(120, 190))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
    buffer = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(2)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def write_sample_sources(folder: str | Path, seed: int = 0) -> dict:
    """Write the four source files, a captions file and figures; returns their paths and what was broken."""
    folder = Path(folder)
    sources, images = folder / "sources", folder / "images"
    sources.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool = _pair_ids(rng, 260)
    shares = {
        # The two BioMed-VITAL selections overlap, as selections from one candidate pool do.
        "BioMed-VITAL-instructions-60K.json": pool[:60],
        "BioMed-VITAL-instructions-80K.json": pool[30:110],
        "llava_med_instruct_10k.json": pool[110:130],
        "llava_med_instruct_60k.json": pool[130:190],
    }
    all_records = {}
    for name, pair_ids in shares.items():
        is_llava_med = name.startswith("llava_med")
        records = _records(rng, pair_ids, misspelled_every=7 if is_llava_med else 0)
        (sources / name).write_text(json.dumps(records, indent=1), encoding="utf-8")
        all_records[name] = records
    used = sorted({r["image"][:-4] for records in all_records.values() for r in records})
    captions: dict[str, list] = {name: [] for name in DOMAINS}
    broken = {"missing": used[::23], "empty": used[5::41], "truncated": used[7::53]}
    for pair_id in used:
        domain = rng.choice(DOMAINS)
        captions[domain].append(
            {
                "pair_id": pair_id,
                "pmid": pair_id.split("_")[0],
                "fig_id": pair_id.split("_", 1)[1],
                "fig_label": f"Figure {rng.randint(1, 6)}",
                "fig_caption": f"Representative {domain.replace('_', ' ')} image showing {rng.choice(FINDINGS[domain])}.",
                "in_text_mention": _mention(rng, pair_id),
                "domain": domain,
            }
        )
        if pair_id in broken["missing"]:
            continue
        data = _figure(rng, domain)
        if pair_id in broken["empty"]:
            data = b""
        elif pair_id in broken["truncated"]:
            data = data[: len(data) // 2]
        (images / f"{pair_id}.jpg").write_bytes(data)
    (sources / CAPTIONS_FILE).write_text(json.dumps(captions, indent=1), encoding="utf-8")
    return {
        "sources": sources,
        "images": images,
        "records": {k: len(v) for k, v in all_records.items()},
        "broken": broken,
    }


def write_sample_fetch_index(folder: Path, images: Path, seed: int = 0) -> Path:
    """A finished fetch index for the sample figures, as `vital fetch figures` leaves one: status by what is on
    disk (absent: missing; empty or cut off: corrupt), per-article licence codes (some unread), a few retracted
    articles; returns the fetch folder."""
    import hashlib

    from PIL import Image

    from vital_hub.figures.index import write_index

    rng = random.Random(seed + 1)
    pair_ids = sorted({p.stem for p in images.glob("*.jpg")} | _captioned(images))
    rows = []
    for number, pair_id in enumerate(pair_ids):
        file = images / f"{pair_id}.jpg"
        data = file.read_bytes() if file.is_file() else None
        status, size = ("missing", None) if data is None else ("corrupt", None) if not data else ("ok", None)
        if status == "ok":
            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.load()
                    size = image.size
            except OSError:
                status = "corrupt"
        pmid = pair_id.split("_")[0]
        rows.append(
            {
                "pair_id": pair_id,
                "pmcid": f"PMC{int(pmid) % 9_000_000 + 1_000_000}",
                "pmid": pmid,
                "fig_id": pair_id.split("_", 1)[1],
                "status": status,
                "licence": rng.choice(["CC BY", "CC BY", "CC BY-NC", "CC0", "CC BY-NC-ND", None]),
                "retracted": None if number % 11 == 3 else number % 37 == 5,
                "sha256": hashlib.sha256(data).hexdigest() if status == "ok" else None,
                "width": size[0] if size else None,
                "height": size[1] if size else None,
            }
        )
    write_index(rows, folder / "index" / "shard-00000-of-00001.parquet")
    (folder / "index" / "shard-00000-of-00001.done").write_text("{}\n", encoding="utf-8")
    return folder


def _captioned(images: Path) -> set[str]:
    """Pair ids of the sample's captions file (figures written or not)."""
    captions = json.loads((images.parent / "sources" / CAPTIONS_FILE).read_text(encoding="utf-8"))
    return {record["pair_id"] for records in captions.values() for record in records}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsOnce, prog="vital demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="working folder (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from datasets.utils.logging import disable_progress_bar
    from rich.console import Console
    from rich.table import Table

    from vital_hub.mixtures.build import BuildOptions, build_repo
    from vital_hub.mixtures.compare import verify_released
    from vital_hub.mixtures.spec import load_plan

    disable_progress_bar()  # the sample is tiny: the table below says what was loaded
    console = Console()
    started = time.perf_counter()
    sample = write_sample_sources(args.out, seed=args.seed)
    console.print(f"[bold]1.[/] wrote a synthetic sample of the four source files and figures to {args.out}")
    repo = args.out / "repo"
    options = BuildOptions(sources=sample["sources"], out=repo, images=sample["images"], show_progress=False)
    manifest = build_repo(load_plan(), options, check_source=sample_checksum)
    console.print(f"[bold]2.[/] built the instructions repo folder {repo} (README.md, manifest.json, data/)")

    table = Table(title="configs, loaded back with datasets.load_dataset")
    for column in ("config", "rows", "components", "images present"):
        table.add_column(column)
    for config in manifest["configs"]:
        rows, present = _load_and_count(repo, config, args.out / "hf_cache")
        components = ", ".join(c["name"] for c in manifest["configs"][config]["components"])
        table.add_row(config, str(rows), components, f"{present} of {rows}")
    console.print(table)

    report = verify_released(repo, "llava-med-10k", sample["sources"] / "llava_med_instruct_10k.json", progress=False)
    console.print(f"[bold]3.[/] round trip: the llava-med-10k component against its source file: {report['verdict']}")
    from vital_hub.figures.dataset import BuildOptions as FiguresOptions
    from vital_hub.figures.dataset import build_figures

    fetch = write_sample_fetch_index(args.out / "fetch", sample["images"], seed=args.seed)
    captions = str(sample["sources"] / CAPTIONS_FILE)
    figures = FiguresOptions(
        index=str(fetch), out=str(args.out / "figures_repo"), captions=captions, images=str(sample["images"])
    )
    console.print(f"[bold]4.[/] figures config from a synthetic fetch index: {build_figures(figures)}")
    console.print(f"done in {time.perf_counter() - started:.1f} s\n")
    print(
        "Next, on the real data:\n"
        "  vital sources fetch --dir sources                       # released files, checksummed\n"
        "  vital fetch figures --urls llava_med_image_urls.jsonl --out figures\n"
        "  vital build instructions --sources sources --images figures --out instructions\n"
        "  vital push instructions --to ORG/instructions    # needs HF_TOKEN"
    )
    return 0


def sample_checksum(path: Path, allow_unverified: bool) -> dict:
    """The sample's files carry the released names but not the released bytes, so they are recorded in the
    manifest as unverified instead of being checked against the registry's checksums."""
    from vital_hub.sources import sha256_and_size

    sha256, size = sha256_and_size(path)
    return {"size": size, "sha256": sha256, "verified": False}


def _load_and_count(repo: Path, config: str, cache: Path) -> tuple[int, int]:
    from datasets import Image, List, load_dataset

    dataset = load_dataset(str(repo), config, split="train", cache_dir=str(cache))
    raw = dataset.cast_column("images", List(Image(decode=False)))
    present = sum(1 for images in raw["images"] if images)
    return len(dataset), present
