"""What the audit reads: training rows of an instructions repo (or a figures config) and evaluation figures.

A training source is a folder made by `vital build instructions` (manifest.json; every component is read once,
configs are mapped onto them by row id) or by `vital build figures` (data/figures/), or a Hub dataset repo of
either kind. An evaluation source is `NAME=QUESTIONS[,IMAGES]`: a qa50 question file or LLaVA-Med VQA records
(as `vital eval vqa-prepare` writes them) with the folder of their figures, or that command's output folder.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from vital_hub.audit.hashing import from_hex
from vital_hub.schema import mention_texts

FIGURES_DIR = Path("data") / "figures"
_PMID = re.compile(r"^(\d+)_")


def pmid_of(pair_id: str | None) -> str | None:
    match = _PMID.match(pair_id or "")
    return match.group(1) if match else None


@dataclass
class TrainRow:
    component: str
    row_id: str
    pair_id: str | None
    pmid: str | None
    pmcid: str | None
    image: bytes | None
    text: str
    stored: bool = False  # the repo carries the figure's hashes (phash column): no decoding needed
    phash: list[int] | None = None  # whole figure first, then its trimmed content and panels
    sha256: str | None = None


@dataclass
class TrainSource:
    """A training repo: its components (name -> parquet files) and configs (name -> components)."""

    root: Path
    kind: str  # "instructions" | "figures"
    components: dict[str, list[Path]]
    configs: dict[str, list[dict]]
    manifest: dict = field(default_factory=dict)

    def rows(self, component: str, with_images: bool = True, batch_size: int = 256) -> Iterator[TrainRow]:
        for path in self.components[component]:
            parquet = pq.ParquetFile(path)
            columns = _columns(self.kind, with_images, set(parquet.schema_arrow.names))
            for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
                for row in batch.to_pylist():
                    yield _train_row(self.kind, component, row)

    def images(self, wanted: set[tuple[str, str]]) -> Iterator[tuple[tuple[str, str], bytes]]:
        """((component, row id), figure bytes) of the given rows, streamed: one more read of the image column."""
        column, key = ("image", "pair_id") if self.kind == "figures" else ("images", "id")
        for component in sorted({c for c, _ in wanted}):
            ids = {r for c, r in wanted if c == component}
            for path in self.components[component]:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=64, columns=[key, column]):
                    for row_id, image in zip(
                        batch.column(key).to_pylist(), batch.column(column).to_pylist(), strict=True
                    ):
                        if row_id in ids:
                            image = (image or [None])[0] if column == "images" else image
                            if image and image.get("bytes"):
                                yield (component, row_id), image["bytes"]

    def config_ids(self, config: str) -> set[tuple[str, str]]:
        """(component, row id) of every row a config holds."""
        if self.kind == "figures":
            return {(c, r.row_id) for c in self.components for r in self.rows(c, with_images=False)}
        ids = set()
        for shard in self.manifest["configs"][config]["shards"]:
            table = pq.read_table(self.root / shard, columns=["source", "id"])
            ids.update(zip(table.column("source").to_pylist(), table.column("id").to_pylist(), strict=True))
        return ids


def _columns(kind: str, with_images: bool, available: set[str]) -> list[str]:
    """The columns the audit reads. Built with a `phash` column (figures: also `sha256`), a figures shard is read
    without its image bytes and an instructions shard's figures are not decoded again."""
    if kind == "figures":
        columns = ["pair_id", "pmid", "pmcid", "caption", "mentions"]
        if with_images and {"phash", "sha256"} <= available:
            return columns + ["phash", "sha256"]
        return columns + (["image"] if with_images else [])
    columns = ["id", "image_id", "source", "messages"] + (["images"] if with_images else [])
    return columns + (["image_phash"] if with_images and "image_phash" in available else [])


def _stored_hash(row: dict, column: str) -> dict:
    return {"stored": True, "phash": from_hex(row[column])} if column in row else {}


def _train_row(kind: str, component: str, row: dict) -> TrainRow:
    if kind == "figures":
        image = row.get("image") or {}
        text = " ".join([row.get("caption") or "", *mention_texts(row.get("mentions"))])
        pair_id = row["pair_id"]
        return TrainRow(
            component,
            pair_id,
            pair_id,
            row.get("pmid") or pmid_of(pair_id),
            row.get("pmcid"),
            image.get("bytes"),
            text,
            **_stored_hash(row, "phash"),
            sha256=row.get("sha256"),
        )
    images = [i for i in row.get("images") or [] if i and i.get("bytes")]
    texts = [part.get("text") or "" for message in row.get("messages") or [] for part in message.get("content") or []]
    pair_id = row.get("image_id")
    image = images[0]["bytes"] if images else None
    return TrainRow(
        component,
        row["id"],
        pair_id,
        pmid_of(pair_id),
        None,
        image,
        "\n".join(texts),
        **_stored_hash(row, "image_phash"),
    )


def open_training(path_or_repo: str, configs: list[str] | None) -> TrainSource:
    root = Path(path_or_repo)
    if not root.exists():
        from vital_hub.hub import download_repo

        root = download_repo(path_or_repo, allow_patterns=["README.md", "manifest.json", "data/**"])
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        known = list(manifest["configs"])
        chosen = configs or known
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise ValueError(f"{root}: unknown configs {unknown}; known: {known}")
        wanted = {c["name"] for name in chosen for c in manifest["configs"][name]["components"]}
        components = {
            name: [root / s["path"] for s in entry["shards"]]
            for name, entry in manifest["components"].items()
            if name in wanted
        }
        return TrainSource(
            root, "instructions", components, {n: manifest["configs"][n]["components"] for n in chosen}, manifest
        )
    shards = sorted((root / FIGURES_DIR).glob("*.parquet"))
    if shards:
        if configs and configs != ["figures"]:
            raise ValueError(f"{root}: a figures repo has one config, 'figures'; got {configs}")
        return TrainSource(root, "figures", {"figures": shards}, {"figures": [{"name": "figures", "fraction": 1.0}]})
    raise FileNotFoundError(
        f"{root}: neither an instructions repo (manifest.json) nor a figures repo ({FIGURES_DIR.as_posix()}/*.parquet)"
    )


@dataclass
class EvalFigure:
    image: str | None
    pair_id: str | None
    pmid: str | None
    pmcid: str | None
    question_ids: list[str]
    data: bytes | None = None
    problem: str | None = None  # missing | empty | unreadable, when data is None


@dataclass
class EvalText:
    question_id: str
    field: str  # question | answer | caption
    text: str


@dataclass
class EvalSet:
    name: str
    source: str
    figures: list[EvalFigure]
    texts: list[EvalText]
    questions: int


def parse_eval_spec(spec: str) -> tuple[str, Path, Path | None]:
    """NAME=QUESTIONS[,IMAGES] or NAME=FOLDER (a `vital eval vqa-prepare` output)."""
    name, sep, source = spec.partition("=")
    if not sep or not name or not source:
        raise ValueError(f"--eval {spec!r}: expected NAME=QUESTIONS_FILE[,IMAGES_FOLDER] or NAME=PREPARED_FOLDER")
    questions, _, images = source.partition(",")
    path = Path(questions)
    if path.is_dir():
        records = sorted(p for p in path.glob("*.json") if not p.name.endswith(".manifest.json"))
        if len(records) != 1:
            raise ValueError(
                f"--eval {spec!r}: {path} should hold one records file, found {[p.name for p in records]}"
            )
        return name, records[0], Path(images) if images else path / "images"
    if not path.is_file():
        raise FileNotFoundError(f"--eval {spec!r}: {path} does not exist")
    return name, path, Path(images) if images else None


def load_eval(spec: str) -> EvalSet:
    from vital_hub.eval.records import load_questions

    name, path, images = parse_eval_spec(spec)
    questions = load_questions(path)
    figures: dict[str, EvalFigure] = {}
    texts = []
    for question in questions:
        record = question.record
        key = question.image or f"question:{question.key}"
        pair_id = record.get("pair_id")
        figure = figures.get(key)
        if figure is None:
            figure = figures[key] = EvalFigure(
                question.image, pair_id, record.get("pmid") or pmid_of(pair_id), record.get("pmcid"), []
            )
        figure.question_ids.append(question.key)
        texts.append(EvalText(question.key, "question", question.prompt))
        if question.reference:
            texts.append(EvalText(question.key, "answer", question.reference))
        if record.get("fig_caption"):
            texts.append(EvalText(question.key, "caption", record["fig_caption"]))
    for figure in figures.values():
        _read_figure(figure, images)
    return EvalSet(name, str(path), list(figures.values()), texts, len(questions))


def _read_figure(figure: EvalFigure, images: Path | None) -> None:
    if figure.image is None or images is None:
        figure.problem = "missing"
        return
    file = images / Path(figure.image).name
    if not file.is_file():
        figure.problem = "missing"
    elif not (data := file.read_bytes()):
        figure.problem = "empty"
    else:
        figure.data = data
