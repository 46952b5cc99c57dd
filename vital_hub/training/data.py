"""Training data: one config of an instructions repo, or a weighted mixture of configs, as rows ready to collate.

A source is a Hub dataset id or a local repo folder (README `configs:` + parquet, as `vital build instructions`
writes it) plus a config name. A mixture is a list of sources with weights (the fraction of each source's rows
to keep) and a seed, written inline in the recipe or in a YAML file of its own:

    dataset_mixture:
      datasets:
        - {id: biomed-vital/instructions, config: 80k, weight: 1.0}
        - {id: ./my-instructions, config: selected, weight: 0.5, revision: null}
      seed: 42
      test_split_size: 0.01

Images stay as encoded bytes until the collator decodes them (capped in size), so loading 80K rows reads no
pixels. Rows whose image is null (a figure that could not be fetched) are dropped or kept as text-only
conversations, by choice; the count is reported either way.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from vital_hub.io import read_text

logger = logging.getLogger(__name__)

KEPT_COLUMNS = ("id", "source", "images", "messages")
LENGTH_COLUMN = "length"
MISSING_IMAGE_POLICIES = ("skip", "text", "error")


@dataclass
class DatasetSource:
    """One config of an instructions repo."""

    id: str
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    weight: float = 1.0

    def __post_init__(self):
        if not 0 < self.weight <= 1:
            raise ValueError(f"dataset {self.id!r}: weight {self.weight} must be in (0, 1] (a fraction of its rows)")

    @property
    def is_local(self) -> bool:
        return Path(self.id).is_dir()


@dataclass
class DatasetMixture:
    """Sources mixed into one training set; `test_split_size` holds out a fraction (or a row count) for eval."""

    datasets: list[DatasetSource]
    seed: int = 0
    test_split_size: float | None = None

    def __post_init__(self):
        self.datasets = [d if isinstance(d, DatasetSource) else DatasetSource(**d) for d in self.datasets]
        if not self.datasets:
            raise ValueError("a dataset mixture needs at least one dataset")


def strict_kwargs(cls, values: dict, where: str) -> dict:
    """Reject keys the dataclass does not know, naming them, instead of ignoring a typo."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return values


def parse_mixture(value: dict | str | Path) -> DatasetMixture:
    """A mixture from a dict (inline in a recipe) or from the path of a YAML file holding one."""
    where = "dataset_mixture"
    if isinstance(value, str | Path):
        where = f"dataset_mixture {value}"
        if not Path(value).is_file():
            raise FileNotFoundError(f"{where}: no such file")
        try:
            value = yaml.safe_load(read_text(value))
        except yaml.YAMLError as err:
            raise ValueError(f"{where}: not valid YAML ({str(err).splitlines()[0]})") from err
        value = value.get("dataset_mixture", value) if isinstance(value, dict) else value
    if not isinstance(value, dict):
        raise ValueError(f"{where}: a mixture must be a mapping with a 'datasets' list")
    datasets = [
        DatasetSource(**strict_kwargs(DatasetSource, d, f"{where} dataset")) for d in value.get("datasets", [])
    ]
    return DatasetMixture(**{**strict_kwargs(DatasetMixture, value, where), "datasets": datasets})


def mixture_of(
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    dataset_split: str = "train",
    dataset_revision: str | None = None,
    dataset_mixture: dict | str | None = None,
    seed: int = 0,
) -> DatasetMixture:
    """The recipe's data, given either one source (`dataset_name` + `dataset_config`) or a mixture."""
    dataset_name, dataset_mixture = dataset_name or None, dataset_mixture or None
    if (dataset_name is None) == (dataset_mixture is None):
        given = "both" if dataset_name else "neither"
        raise ValueError(f"give exactly one of dataset_name (with dataset_config) or dataset_mixture, not {given}")
    if dataset_mixture is not None:
        return parse_mixture(dataset_mixture)
    source = DatasetSource(dataset_name, dataset_config, dataset_split, dataset_revision)
    return DatasetMixture([source], seed=seed)


def missing_image_indices(dataset) -> list[int]:
    """Rows without a usable image: `images` empty (a text-only row), null, or an entry with neither bytes nor
    path; read from Arrow without decoding."""
    import pyarrow.compute as pc

    images = dataset.with_format("arrow")[:].column("images").combine_chunks()
    entries = pc.list_flatten(images)
    usable = pc.invert(pc.or_kleene(pc.is_null(entries), pc.and_(pc.is_null(pc.struct_field(entries, "bytes")),
                                                                 pc.is_null(pc.struct_field(entries, "path")))))  # fmt: skip
    with_image = set(pc.filter(pc.list_parent_indices(images), pc.fill_null(usable, False)).to_pylist())
    return [i for i in range(len(images)) if i not in with_image]


def handle_missing_images(dataset, policy: str, name: str):
    """Apply the missing-image policy to one source; the collator turns kept rows into text-only conversations."""
    if policy not in MISSING_IMAGE_POLICIES:
        raise ValueError(f"missing_images must be one of {MISSING_IMAGE_POLICIES}, got {policy!r}")
    missing = missing_image_indices(dataset)
    if not missing:
        return dataset
    if policy == "error":
        first = dataset[missing[0]]["id"]
        raise ValueError(f"{name}: {len(missing)} rows have no image (first: row {missing[0]}, id {first!r})")
    if policy == "text":
        logger.warning("%s: %d rows have no image; they train as text-only conversations", name, len(missing))
        return dataset
    logger.warning("%s: skipping %d of %d rows whose image is missing", name, len(missing), len(dataset))
    drop = set(missing)
    return dataset.select([i for i in range(len(dataset)) if i not in drop])


def training_columns(dataset):
    """Instruction rows cut to the columns training reads, with images left undecoded (the collator decodes
    them in DataLoader workers)."""
    from datasets import Image, List

    dataset = dataset.select_columns([c for c in KEPT_COLUMNS if c in dataset.column_names])
    return dataset.cast_column("images", List(Image(decode=False)))


def looks_like_path(name: str) -> bool:
    """A name written as a local path (absolute, ./, ../, ~, or with more than one /), never a Hub id."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1


def load_source(source: DatasetSource, seed: int, missing_images: str, cache_dir: str | None = None):
    """One source's rows: the columns training reads, images undecoded, the weight applied."""
    from datasets import load_dataset

    where = f"dataset {source.id}" + (f" (config {source.config})" if source.config else "")
    if looks_like_path(source.id) and not Path(source.id).expanduser().is_dir():
        raise FileNotFoundError(f"{where}: no such folder")
    try:
        dataset = load_dataset(
            source.id, source.config, split=source.split, revision=source.revision, cache_dir=cache_dir
        )
    except (ValueError, OSError) as err:  # unknown config or split, unreadable repo, missing data files
        raise (OSError if isinstance(err, OSError) else ValueError)(f"{where}, split {source.split}: {err}") from err
    absent = [c for c in ("images", "messages") if c not in dataset.column_names]
    if absent:
        raise ValueError(f"{source.id} ({source.config}): no column {absent}; expected instruction rows")
    dataset = training_columns(dataset)
    dataset = handle_missing_images(dataset, missing_images, f"{source.id} ({source.config})")
    if source.weight < 1:
        keep = round(len(dataset) * source.weight)
        dataset = dataset.shuffle(seed=seed).select(range(keep))
    return dataset


def load_mixture(
    mixture: DatasetMixture, missing_images: str = "skip", cache_dir: str | None = None
) -> tuple[dict, list[int]]:
    """({"train": rows[, "test": rows]}, rows kept per source) from every source of the mixture, concatenated."""
    from datasets import concatenate_datasets

    parts = [load_source(source, mixture.seed, missing_images, cache_dir) for source in mixture.datasets]
    columns = set.intersection(*(set(part.column_names) for part in parts))
    parts = [part.select_columns([c for c in KEPT_COLUMNS if c in columns]) for part in parts]
    dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    for source, part in zip(mixture.datasets, parts, strict=True):
        logger.info("%s (%s, %s): %d rows", source.id, source.config, source.split, len(part))
    counts = [len(part) for part in parts]
    dataset = with_length_column(dataset)
    if not mixture.test_split_size:
        return {"train": dataset}, counts
    split = dataset.train_test_split(test_size=mixture.test_split_size, seed=mixture.seed)
    return {"train": split["train"], "test": split["test"]}, counts


def with_length_column(dataset):
    """Add `length` (characters of text, a proxy for tokens) for `train_sampling_strategy: group_by_length`.

    Batches of similar length waste little on padding; every row holds one image, so its tokens add the same to
    every row and are left out. Only the messages column is read, and the new column is appended without
    rewriting the images.
    """
    lengths = [
        sum(len(part["text"] or "") for message in messages for part in message["content"])
        for messages in dataset["messages"]
    ]
    return dataset.add_column(LENGTH_COLUMN, lengths)


def resolved_revision(source: DatasetSource) -> str | None:
    """What the model card records: the Hub commit of a repo id, or a content hash of a local folder's README.

    The README of a repo built by `vital build instructions` carries every shard's checksum, so its hash names
    the data exactly. Offline (HF_HUB_OFFLINE) a Hub id keeps the revision it was given.
    """
    if source.is_local:
        readme = Path(source.id) / "README.md"
        if not readme.exists():
            return None
        return "sha256:" + hashlib.sha256(readme.read_bytes()).hexdigest()[:16]
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return source.revision
    from huggingface_hub import HfApi

    return HfApi().dataset_info(source.id, revision=source.revision).sha


def model_messages(messages: list[dict], has_image: bool) -> list[dict]:
    """A row's conversation as the model sees it, the way LLaVA's own preprocessing shaped it.

    With an image: the image part comes first in the turn that holds it, followed by that turn's text stripped
    (`q\\n<image>` and `<image>\\nq` train alike); a conversation with no image part gets one in its first user
    turn. Without an image (text-only policy) every image part is dropped.
    """
    holder = next((i for i, m in enumerate(messages) if any(p["type"] == "image" for p in m["content"])), None)
    if has_image and holder is None:
        holder = next(i for i, m in enumerate(messages) if m["role"] == "user")
    shaped = []
    for index, message in enumerate(messages):
        text = "".join(part["text"] or "" for part in message["content"] if part["type"] == "text")
        content = [{"type": "text", "text": text.strip() if index == holder else text}]
        if has_image and index == holder:
            content.insert(0, {"type": "image"})
        shaped.append({"role": message["role"], "content": content})
    return shaped
