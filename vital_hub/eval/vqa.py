"""Medical VQA test sets (VQA-RAD, SLAKE, PathVQA) in the LLaVA-Med record shape, and their scoring.

LLaVA-Med's own preprocessed test files were never released. The loaders read public Hub copies (registry
below), record the sha256 of every file they read in a manifest beside the output, and write LLaVA-Med VQA
records: one human/gpt round, `answer_type` OPEN|CLOSED, and for closed questions the suffix
" Please choose from the following two options: [yes, no]". Pictures are decoded once to prove they are images
and stored under `images/` by content hash (one file per distinct picture).

Known differences from the paper's counts: the VQA-RAD and PathVQA copies have no answer type, so a question is
CLOSED when its answer is yes or no (LLaVA-Med counted 272 closed VQA-RAD questions, some of them not yes/no);
the PathVQA copy has 6,719 test questions after de-duplication (LLaVA-Med: 6,761). SLAKE keeps its own
answer_type and only English questions (1,061, as LLaVA-Med).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from vital_hub.eval.metrics.med_vqa.vqa_scoring import COMPATS, score_all
from vital_hub.eval.records import load_questions, read_answers
from vital_hub.io import read_json, sha256_file, write_json_atomic
from vital_hub.schema import RecordError

CLOSED_SUFFIX = " Please choose from the following two options: [yes, no]"
MAX_IMAGE_BYTES = 64 << 20  # larger members of an archive are refused, not read


@dataclass(frozen=True)
class VqaSource:
    name: str
    repo_id: str
    layout: str  # "parquet": data/<split>-*.parquet with image/question/answer; "slake": <split>.json + imgs.zip
    answer_type_rule: str
    paper_counts: tuple[int, int, int]  # LLaVA-Med test QAs / open / closed


SOURCES = {
    "vqa-rad": VqaSource(
        "vqa-rad", "flaviagiammarino/vqa-rad", "parquet", "closed when the answer is yes/no", (451, 179, 272)
    ),
    "slake": VqaSource(
        "slake", "BoKelvin/SLAKE", "slake", "the dataset's answer_type; English only", (1061, 645, 416)
    ),
    "pathvqa": VqaSource(
        "pathvqa", "flaviagiammarino/path-vqa", "parquet", "closed when the answer is yes/no", (6761, 3370, 3391)
    ),
}


def get_source(name: str) -> VqaSource:
    if name not in SOURCES:
        raise KeyError(f"unknown VQA set {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name]


@dataclass(frozen=True)
class RawItem:
    question: str
    answer: str
    answer_type: str | None
    image_bytes: bytes | None
    origin: str  # where the item came from, for error messages


def _source_files(source: VqaSource, split: str) -> list[str]:
    if source.layout == "parquet":
        return [f"data/{split}-*.parquet"]
    return [f"{split}.json", "imgs.zip"]


def locate(source: VqaSource, split: str, path_or_repo: str | None, revision: str | None) -> Path:
    """A local folder in the public layout, or a snapshot of the Hub repo (through vital_hub.hub)."""
    if path_or_repo and Path(path_or_repo).is_dir():
        return Path(path_or_repo)
    from vital_hub.hub import download_repo

    return download_repo(
        path_or_repo or source.repo_id, "dataset", revision, allow_patterns=_source_files(source, split)
    )


def _parquet_items(folder: Path, split: str) -> tuple[list[Path], Iterator[RawItem]]:
    import pyarrow.parquet as pq

    files = sorted((folder / "data").glob(f"{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no data/{split}-*.parquet files (expected the public parquet layout)")

    def items() -> Iterator[RawItem]:
        for file in files:
            parquet = pq.ParquetFile(file)
            missing = {"image", "question", "answer"} - set(parquet.schema_arrow.names)
            if missing:
                raise RecordError(f"missing columns {sorted(missing)}", file=str(file))
            row_number = 0
            for batch in parquet.iter_batches(batch_size=256, columns=["image", "question", "answer"]):
                for row in batch.to_pylist():
                    image = row["image"] or {}
                    yield RawItem(
                        row["question"], row["answer"], None, image.get("bytes"), f"{file.name} row {row_number}"
                    )
                    row_number += 1

    return files, items()


def _safe_member(name: str) -> str:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not name:
        raise ValueError(f"unsafe image path {name!r}")
    return str(path)


def _slake_items(folder: Path, split: str) -> tuple[list[Path], Iterator[RawItem]]:
    questions_file, archive_file = folder / f"{split}.json", folder / "imgs.zip"
    for needed in (questions_file, archive_file):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing (expected SLAKE's {split}.json and imgs.zip)")

    def items() -> Iterator[RawItem]:
        records = read_json(questions_file)
        with zipfile.ZipFile(archive_file) as archive:
            members = {info.filename: info for info in archive.infolist()}
            for index, record in enumerate(records):
                if record.get("q_lang", "en") != "en":
                    continue
                origin = f"{questions_file.name} record {index} (qid {record.get('qid')!r})"
                try:
                    member = members.get("imgs/" + _safe_member(str(record.get("img_name", ""))))
                except ValueError:
                    member = None  # a path escaping the archive: refused like a missing picture
                data = None
                if member is not None and member.file_size <= MAX_IMAGE_BYTES:
                    data = archive.read(member)
                yield RawItem(record["question"], str(record["answer"]), record.get("answer_type"), data, origin)

    return [questions_file, archive_file], items()


LAYOUTS = {"parquet": _parquet_items, "slake": _slake_items}


def answer_type_of(item: RawItem) -> str:
    if item.answer_type:
        kind = str(item.answer_type).upper()
        if kind not in ("OPEN", "CLOSED"):
            raise RecordError(f"{item.origin}: answer_type {item.answer_type!r} is neither OPEN nor CLOSED")
        return kind
    return "CLOSED" if item.answer.strip().lower().rstrip(".") in ("yes", "no") else "OPEN"


def store_image(data: bytes | None, images_dir: Path) -> tuple[str | None, str | None]:
    """Save a decodable picture under its content hash; (file name, None) or (None, why it was refused)."""
    from PIL import Image

    if not data:
        return None, "no image bytes"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            extension = {"JPEG": "jpg", "PNG": "png"}.get(image.format or "", "png")
            converted = None if image.format in ("JPEG", "PNG") else image.convert("RGB")
    except Exception as err:  # PIL raises many types on hostile or broken input
        return None, f"undecodable image ({type(err).__name__})"
    name = f"{hashlib.sha256(data).hexdigest()[:20]}.{extension}"
    target = images_dir / name
    if not target.exists():
        if converted is None:
            target.write_bytes(data)
        else:
            converted.save(target, format="PNG")
    return name, None


def prepare_vqa(
    name: str,
    out_dir: str | Path,
    source: str | None = None,
    split: str = "test",
    revision: str | None = None,
    limit: int | None = None,
) -> dict:
    """Write `<name>_<split>.json` (LLaVA-Med VQA records), `images/` and a manifest with file checksums."""
    spec = get_source(name)
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    folder = locate(spec, split, source, revision)
    files, items = LAYOUTS[spec.layout](folder, split)
    checksums = {
        str(file.relative_to(folder)): {"sha256": sha256_file(file), "bytes": file.stat().st_size} for file in files
    }
    records, refused = [], []
    for index, item in enumerate(tqdm(items, desc=f"prepare {name}")):
        if limit is not None and len(records) >= limit:
            break
        record_id = f"{name}-{split}-{index:05d}"
        image, problem = store_image(item.image_bytes, images_dir)
        if image is None:
            refused.append({"id": record_id, "origin": item.origin, "reason": problem})
            continue
        kind = answer_type_of(item)
        question = item.question.strip() + (CLOSED_SUFFIX if kind == "CLOSED" else "")
        records.append(
            {
                "id": record_id,
                "image": image,
                "answer_type": kind,
                "conversations": [
                    {"from": "human", "value": f"{question}\n<image>"},
                    {"from": "gpt", "value": item.answer},
                ],
                "source": {"dataset": spec.repo_id, "origin": item.origin},
            }
        )
    records_path = out_dir / f"{name}_{split}.json"
    write_json_atomic(records_path, records)
    counts = Counter(record["answer_type"] for record in records)
    manifest = {
        "dataset": name,
        "repo_id": source if source and not Path(source).is_dir() else spec.repo_id,
        "local_source": str(folder) if source and Path(source).is_dir() else None,
        "revision": revision,
        "split": split,
        "files": checksums,
        "records": records_path.name,
        "records_sha256": sha256_file(records_path),
        "counts": {
            "total": len(records),
            "open": counts["OPEN"],
            "closed": counts["CLOSED"],
            "refused_images": len(refused),
        },
        "paper_counts": dict(zip(("total", "open", "closed"), spec.paper_counts, strict=True)),
        "answer_type_rule": spec.answer_type_rule,
        "closed_suffix": CLOSED_SUFFIX,
        "refused": refused[:100],
    }
    write_json_atomic(out_dir / f"{name}_{split}.manifest.json", manifest)
    return manifest


def score_vqa_files(
    questions: str | Path,
    answers: str | Path,
    compat: str = "llava-med",
    closed_rule: str = "substring",
    allow_missing: bool = False,
) -> tuple[dict, list[dict]]:
    """Score an answers file against VQA records under every compatibility mode; `compat` picks the headline.

    Questions without an answer stop the run (the original asserted identical id lists) unless `allow_missing`,
    which scores them as empty answers and counts them. An answer whose text is the empty string is an answer
    (the model said nothing): it scores 0 and is not missing.
    """
    if compat not in COMPATS:
        raise ValueError(f"unknown compat {compat!r}; known: {list(COMPATS)}")
    items = load_questions(questions)
    untyped = [q.question_id for q in items if q.answer_type is None]
    if untyped:
        raise RecordError(f"{len(untyped)} records have no answer_type (first: {untyped[0]!r})", file=str(questions))
    answers_by_id = read_answers(answers)
    missing = [q.question_id for q in items if not isinstance((answers_by_id.get(q.key) or {}).get("text"), str)]
    if missing and not allow_missing:
        raise RecordError(
            f"{len(missing)} questions have no answer (first ids: {missing[:5]}); pass --allow-missing to score "
            "them as empty answers",
            file=str(answers),
        )
    predictions = [(answers_by_id.get(q.key) or {}).get("text") or "" for q in items]
    references = [q.reference for q in items]
    types = [q.answer_type for q in items]
    variants = {mode: score_all(predictions, references, types, mode, closed_rule) for mode in COMPATS}
    details = [
        {
            "question_id": q.question_id,
            "answer_type": q.answer_type,
            "question": q.prompt,
            "reference": q.reference,
            "answer": prediction,
            **{f"score_{mode}": variants[mode]["scores"][i] for mode in COMPATS},
        }
        for i, (q, prediction) in enumerate(zip(items, predictions, strict=True))
    ]
    head = variants[compat]
    result = {
        "task": "medical_vqa",
        "compat": compat,
        "closed_rule": closed_rule,
        "open_recall": head["open_recall"],
        "closed_accuracy": head["closed_accuracy"],
        "counts": {
            "questions": len(items),
            "open": head["open_count"],
            "closed": head["closed_count"],
            "missing_answers": len(missing),
        },
        "variants": {mode: {k: v for k, v in variants[mode].items() if k != "scores"} for mode in COMPATS},
        "questions_file": str(questions),
        "answers_file": str(answers),
        "questions_sha256": sha256_file(questions),
        "answers_sha256": sha256_file(answers),
    }
    return result, details
