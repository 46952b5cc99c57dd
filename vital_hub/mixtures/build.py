"""Build the instructions dataset repo: each component stored once as parquet, configs as lists of shards.

The build streams every source file (memory stays at one batch of rows), writes each component's shards to a
scratch folder and moves them into `data/<component>/` only when the component is complete, and records a
completion marker, so an interrupted build continues where it stopped and a finished one is never half-visible.
Parquet and manifest are byte-identical for identical inputs (no timestamps, no absolute paths).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from vital_hub import __version__
from vital_hub.audit.hashing import hash_version
from vital_hub.io import atomic_path, iter_json_records, read_json, write_json_atomic
from vital_hub.mixtures.images import ImageStats, figure_facts, images_fingerprint, load_image, retracted_figures
from vital_hub.mixtures.selection import selection_summary
from vital_hub.mixtures.shards import COMPRESSION, ShardWriter, file_entry, shard_entry
from vital_hub.mixtures.spec import Component, Mixture, MixturePlan, Part
from vital_hub.schema import (
    Location,
    RecordError,
    check_unique_ids,
    image_id_of,
    row_arrow_schema,
    validate_llava,
)
from vital_hub.workers import call_portably, die_with_parent, folder_lock

SCRATCH = ".vital-build"
MANIFEST = "manifest.json"
MISSING_IMAGES = "missing_images.jsonl"


@dataclass
class BuildOptions:
    sources: Path
    out: Path
    images: Path | None = None
    require_images: bool = False
    allow_unverified: bool = False
    rows_per_shard: int = 50_000
    max_shard_bytes: int = 500 << 20
    batch_rows: int = 2_000
    max_batch_bytes: int = 64 << 20
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    show_progress: bool = True
    include_retracted: bool = False
    repo_id: str | None = None  # where the folder will be pushed, for the card's load example
    images_fingerprint: str | None = field(init=False, default=None)
    retracted: frozenset[str] = field(init=False, default=frozenset())
    # the fetch index's licence and retraction per figure (see figure_facts), read once for the build and its card
    figure_facts: dict[str, tuple[str, str]] | None = field(init=False, default=None, repr=False)

    def __post_init__(self):
        self.sources, self.out = Path(self.sources), Path(self.out)
        self.images = Path(self.images) if self.images else None
        if self.images is not None and not self.images.is_dir():
            raise FileNotFoundError(f"--images {self.images} is not a folder")
        if self.rows_per_shard < 1 or self.batch_rows < 1:
            raise ValueError("rows_per_shard and batch_rows must be positive")
        self.images_fingerprint = images_fingerprint(self.images)
        self.figure_facts = figure_facts(self.images)
        self.retracted = retracted_figures(self.figure_facts)

    def __getstate__(self) -> dict:
        """What a component's worker process receives: not the per-figure facts, which only the card reads."""
        return {**self.__dict__, "figure_facts": None}


@dataclass
class ComponentResult:
    name: str
    rows: int
    rows_sha256: str
    source: dict
    shards: list[dict]
    images: dict | None
    inputs_key: str
    description: str = ""
    licence: str = ""
    missing_images: dict | None = None  # {path, num_bytes, sha256} of the list of figures not embedded
    selection: dict | None = None  # a `vital select` output's selector, counts, cut and score histogram

    def as_dict(self) -> dict:
        return {
            "description": self.description,
            "licence": self.licence,
            "rows": self.rows,
            "rows_sha256": self.rows_sha256,
            "source": self.source,
            "shards": self.shards,
            "images": self.images,
            "missing_images": self.missing_images,
            "inputs_key": self.inputs_key,
            "selection": self.selection,
        }


SourceChecker = Callable[[Path, bool], dict]


def default_source_checker(path: Path, allow_unverified: bool) -> dict:
    """Size and sha256 of a source file, checked against the sources registry and its lock file."""
    from vital_hub.sources import check_source_file

    return check_source_file(path, allow_unverified=allow_unverified)


def build_repo(plan: MixturePlan, options: BuildOptions, check_source: SourceChecker = default_source_checker) -> dict:
    """Build (or continue building) the repo folder; returns the manifest. One build at a time per folder."""
    plan.validate()
    with folder_lock(options.out, "vital build instructions"):
        return _build_repo(plan, options, check_source)


def _build_repo(plan: MixturePlan, options: BuildOptions, check_source: SourceChecker) -> dict:
    previous = _set_aside_previous_build(options.out)
    results = _build_components(plan, options, previous, check_source)
    configs = {}
    for mixture in plan.mixtures.values():
        configs[mixture.name] = _config_files(mixture, results, options)
    _remove_stale_data(options.out, results, configs)
    manifest = {
        "builder": "vital-hub",
        "builder_version": __version__,
        "components": {name: result.as_dict() for name, result in results.items()},
        "configs": configs,
    }
    if options.repo_id:
        manifest["repo_id"] = options.repo_id
    from vital_hub.mixtures.card import write_readme

    write_readme(options.out, manifest, options.figure_facts)
    write_json_atomic(options.out / MANIFEST, manifest)
    shutil.rmtree(options.out / SCRATCH, ignore_errors=True)
    return manifest


def _build_components(plan: MixturePlan, options: BuildOptions, previous: dict, check_source) -> dict:
    """Build the components side by side (one process each, up to `workers`); finished ones keep their marker
    even when another fails, so a re-run only redoes what failed."""
    names = plan.used_components()
    workers = min(options.workers, len(names))
    if workers <= 1:
        return {name: _build_or_reuse(plan.components[name], options, previous, check_source) for name in names}
    # Workers die with this process, so a killed build leaves nothing writing into the folder; their errors are
    # made picklable there, so they arrive here as the one-line error they are.
    with ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {
            name: pool.submit(
                call_portably, _build_or_reuse, plan.components[name], options, previous, check_source, position
            )
            for position, name in enumerate(names)
        }
        wait(futures.values())
    for future in futures.values():
        if future.exception() is not None:
            raise future.exception()
    return {name: future.result() for name, future in futures.items()}


def _set_aside_previous_build(out: Path) -> dict:
    """Move a finished build's manifest into the scratch folder and drop its README: until this build ends,
    the folder must not look complete. Components listed in the old manifest are still reused."""
    kept = out / SCRATCH / "previous-manifest.json"
    kept.parent.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        os.replace(out / MANIFEST, kept)
    (out / "README.md").unlink(missing_ok=True)
    return read_json(kept) if kept.exists() else {}


def _read_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.exists():
        return {}
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("configs"), dict):
        raise RecordError("not a manifest written by `vital build instructions` (no 'configs')", file=str(path))
    return manifest


def _inputs_key(component: Component, source: dict, options: BuildOptions) -> str:
    """What a component's bytes depend on; a stored component with the same key is reused as it is."""
    settings = {
        "builder_version": __version__,
        "row_schema": hashlib.sha256(str(row_arrow_schema()).encode()).hexdigest(),
        "component": [component.name, component.file_name],
        "source_sha256": source["sha256"],
        "images": options.images_fingerprint,
        "figure_hash": hash_version() if options.images else None,
        "require_images": options.require_images,
        "retracted": None if options.include_retracted else sorted(options.retracted),
        "rows_per_shard": options.rows_per_shard,
        "max_shard_bytes": options.max_shard_bytes,
        "batch_rows": options.batch_rows,
        "max_batch_bytes": options.max_batch_bytes,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _build_or_reuse(
    component: Component, options: BuildOptions, previous: dict, check_source, position: int = 0
) -> ComponentResult:
    path = options.sources / component.file_name
    if path.is_dir():
        raise IsADirectoryError(f"{path}: source file of component {component.name!r} is a folder, not a file")
    if not path.is_file():
        from vital_hub.mixtures.spec import builtin_components

        released = builtin_components().get(component.name)
        hint = (
            f"fetch it with `vital sources fetch --dir {options.sources}`"
            if released is not None and released.file_name == component.file_name
            else f"the `file` of component {component.name!r} in the --mixtures YAML, read from --sources"
        )
        raise FileNotFoundError(f"{path}: source file of component {component.name!r} is missing ({hint})")
    source = {"file": component.file_name, **check_source(path, options.allow_unverified)}
    key = _inputs_key(component, source, options)
    selection = selection_summary(path)  # read again on every build: a reused component records the same
    done = _completed(component.name, key, options.out, previous)
    if done is not None:
        done.selection = selection
        return done
    result = _build_component(component, path, source, key, options, position)
    result.selection = selection
    write_json_atomic(options.out / SCRATCH / "done" / f"{component.name}.json", result.as_dict())
    return result


def _completed(name: str, key: str, out: Path, previous: dict) -> ComponentResult | None:
    """A component already built with the same inputs, whose files are all on disk as the manifest lists them:
    every shard at its size, the missing-images list at its size and checksum, and no list it does not have."""
    candidates = [previous.get("components", {}).get(name)]
    marker = out / SCRATCH / "done" / f"{name}.json"
    if marker.exists():
        candidates.append(json.loads(marker.read_text(encoding="utf-8")))
    for entry in candidates:
        if entry and entry.get("inputs_key") == key and _files_intact(out, name, entry):
            fields = {k: entry[k] for k in ("rows", "rows_sha256", "source", "shards", "images", "inputs_key")}
            return ComponentResult(
                name=name,
                description=entry["description"],
                licence=entry["licence"],
                missing_images=entry.get("missing_images"),
                **fields,
            )
    return None


def _files_intact(out: Path, name: str, entry: dict) -> bool:
    from vital_hub.io import sha256_file

    def same_size(item: dict) -> bool:
        path = out / item["path"]
        return path.is_file() and path.stat().st_size == item["num_bytes"]

    if not all(same_size(shard) for shard in entry["shards"]):
        return False
    listed = entry.get("missing_images")
    if listed is None:
        return not (out / "data" / name / MISSING_IMAGES).exists()
    return same_size(listed) and sha256_file(out / listed["path"]) == listed["sha256"]


def _build_component(component: Component, path: Path, source: dict, key: str, options: BuildOptions, position: int):
    scratch = options.out / SCRATCH / "shards" / component.name
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    images = ImageStats() if options.images else None
    missing_log = scratch / MISSING_IMAGES
    writer = ShardWriter(scratch, options, component.name)
    with open(missing_log, "w", encoding="utf-8") as missing:
        records = _records(path, options, images, missing)
        for record, image, phash in tqdm(
            records, desc=component.name, unit=" rows", position=position, disable=not options.show_progress
        ):
            writer.add(record, image, phash)
    writer.close()
    target = options.out / "data" / component.name
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shards = writer.finish(target, options.out)
    listed = None
    if images is not None and (images.missing or images.empty or images.corrupt):
        os.replace(missing_log, target / MISSING_IMAGES)
        listed = file_entry(target / MISSING_IMAGES, options.out)
    shutil.rmtree(scratch, ignore_errors=True)
    return ComponentResult(
        name=component.name,
        description=component.description,
        licence=component.licence,
        rows=writer.total_rows,
        rows_sha256=writer.digest.hexdigest(),
        source=source,
        shards=shards,
        images=None if images is None else images.as_dict(),
        missing_images=listed,
        inputs_key=key,
    )


def _records(
    path: Path, options: BuildOptions, stats: ImageStats | None, missing
) -> Iterator[tuple[dict, dict | None, str | None]]:
    """Validated records of a source file, each with its figure and the figure's pHash when an images folder is
    given."""
    for where, record in check_unique_ids(_validated(iter_json_records(path))):
        if options.retracted and not options.include_retracted and image_id_of(record["image"]) in options.retracted:
            stats.retracted_left_out += 1
            continue
        image, phash = (
            (None, None)
            if options.images is None
            else load_image(record, where, options.images, options.require_images, stats, missing)
        )
        yield record, image, phash


def _validated(records: Iterator[tuple[Location, Any]]) -> Iterator[tuple[Location, dict]]:
    for where, record in records:
        validate_llava(record, where)
        yield where, record


def _config_files(mixture: Mixture, results: dict[str, ComponentResult], options: BuildOptions) -> dict:
    """The shards a config lists: whole components by reference, fractions and exclusions as their own shards."""
    shards, components = [], []
    for part in mixture.parts:
        result = results[part.component]
        if part.is_whole:
            shards.extend(result.shards)
            components.append({"name": part.component, "fraction": 1.0, "rows": result.rows})
        else:
            subset, excluded = _write_subset(mixture, part, result, options.out)
            shards.append(subset)
            entry = {"name": part.component, "fraction": part.fraction, "rows": subset["rows"]}
            if part.exclude_ids:
                entry["excluded"] = excluded
            components.append(entry)
    return {
        "description": mixture.description,
        "seed": mixture.seed,
        "components": components,
        "rows": sum(c["rows"] for c in components),
        "shards": [s["path"] for s in shards],
        "num_bytes": sum(s["num_bytes"] for s in shards),
        "uncompressed_bytes": sum(s["uncompressed_bytes"] for s in shards),
        "checksums": {s["path"]: {"num_bytes": s["num_bytes"], "checksum": s["sha256"]} for s in shards},
    }


def _write_subset(mixture: Mixture, part: Part, result: ComponentResult, out: Path) -> tuple[dict, int]:
    """The component's rows minus `exclude_ids`, then a seeded sample (in source order) of them, stored under
    data/<config>/ as one shard, one source shard in memory at a time; also returns how many rows were excluded."""
    eligible = range(result.rows)
    name = f"{part.component}-{part.fraction:g}"
    if part.exclude_ids:
        excluded = set(part.exclude_ids)
        ids = [i for s in result.shards for i in pq.read_table(out / s["path"], columns=["id"])["id"].to_pylist()]
        unmatched = sorted(excluded - set(ids))
        if unmatched:  # a mistyped or stale id would leave the row it meant in the config, unnoticed
            raise ValueError(
                f"mixture {mixture.name!r}, component {part.component!r}: {len(unmatched)} exclude_ids match no row "
                f"of the component (first: {unmatched[:5]}); remove them or fix the ids"
            )
        eligible = [i for i, row_id in enumerate(ids) if row_id not in excluded]
        name += "-x" + hashlib.sha256("\n".join(part.exclude_ids).encode()).hexdigest()[:12]
    keep = round(len(eligible) * part.fraction)
    chosen = sorted(random.Random(f"{mixture.seed}:{mixture.name}:{part.component}").sample(list(eligible), keep))
    final = out / "data" / mixture.name / f"{name}.parquet"
    with atomic_path(final) as tmp, pq.ParquetWriter(tmp, row_arrow_schema(), compression=COMPRESSION) as writer:
        first, at = 0, 0
        for shard in result.shards:  # a component has >= 1 shard
            end = bisect.bisect_left(chosen, first + shard["rows"], at)
            if end > at or shard is result.shards[-1]:
                table = pq.read_table(out / shard["path"])
                local = pa.array([i - first for i in chosen[at:end]], type=pa.int64())
                writer.write_table(table.take(local), row_group_size=2_000)
            first, at = first + shard["rows"], end
    return shard_entry(final, out, keep), result.rows - len(eligible)


def _remove_stale_data(out: Path, results: dict, configs: dict) -> None:
    """Delete parquet files under data/ that no config lists any more (for instance after a plan change)."""
    listed = {path for config in configs.values() for path in config["shards"]}
    listed |= {s["path"] for r in results.values() for s in r.shards}
    data = out / "data"
    for path in sorted(data.rglob("*.parquet")) if data.exists() else []:
        if path.relative_to(out).as_posix() not in listed:
            path.unlink()


def read_config_rows(repo: Path, config: str) -> Iterator[dict]:
    """Rows of a built config (or of a component when `config` names one), in order, straight from parquet."""
    manifest = _read_manifest(Path(repo))
    if not manifest:
        raise FileNotFoundError(f"{repo}: no {MANIFEST}; is this a folder made by `vital build instructions`?")
    if config in manifest["configs"]:
        paths = manifest["configs"][config]["shards"]
    elif config in manifest["components"]:
        paths = [s["path"] for s in manifest["components"][config]["shards"]]
    else:
        known = sorted(manifest["configs"]) + sorted(manifest["components"])
        raise KeyError(f"{repo}: no config or component {config!r}; known: {known}")
    for path in paths:
        parquet = pq.ParquetFile(Path(repo) / path)
        for batch in parquet.iter_batches(batch_size=1_000):
            yield from batch.to_pylist()


__all__ = ["BuildOptions", "RecordError", "build_repo", "read_config_rows"]
