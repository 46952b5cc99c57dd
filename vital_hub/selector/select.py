"""`vital select`: score every candidate with a trained selector and keep the global top k.

    vital select --selector PATH_OR_REPO --candidates DIR_OR_FILES --images DIR (--top K | --top-percent P) --out DIR
    accelerate launch --num_processes 8 -m vital_hub.cli select ...      # one process per GPU

The command's options and its steps live in `vital_hub.select_cli` (outside this package, whose import loads torch
to register the selector with transformers' Auto classes), so `vital select --help` and bad options answer at once.

Candidates (status "ok" only) are sorted by candidate_id and cut into fixed shards, so the work units, their
batches and hence the scores do not depend on how many GPUs run. Rank r scores shards r, r + world, ...; each
finished shard is written under a temporary name, renamed, then marked done in `scores/completions/`, so
re-running the same command resumes where it stopped. Images are decoded (JPEG draft mode, each figure once per
chunk) and texts tokenised in DataLoader worker processes (`vital_hub.selector.chunks`), pixels travel as pinned
uint8 and are normalised on the GPU, the backbone runs in bf16 and the head in fp32 (so that scores rarely tie).

The first process then merges the shards, sorts by (score descending, candidate_id ascending), keeps the top k
(globally, as the paper does, or by per-domain quotas) and writes the selected component:

    <out>/selected.json      LLaVA JSON array of the kept candidates, in rank order (a mixture component)
    <out>/selected.parquet   candidate_id, score, rank, selector, selector_revision
    <out>/selection.json     what was run: selector, revision, counts, k, quotas, unreadable images
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from vital_hub.io import atomic_path, sha256_file, write_json_atomic
from vital_hub.workers import torch_worker_init

NEEDED_COLUMNS = ("candidate_id", "pair_id", "image", "caption", "mentions", "domain", "conversations", "status")
SCORE_SCHEMA_VERSION = 1


def _score_schema():
    import pyarrow as pa

    return pa.schema([("candidate_id", pa.string()), ("score", pa.float64()), ("error", pa.string())])


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class SelectorRef:
    path: Path
    name: str
    revision: str


def resolve_selector(selector: str, revision: str | None = None) -> SelectorRef:
    """A local folder (revision = sha256 of its weights) or a Hub repo (revision = the snapshot's commit)."""
    path = Path(selector)
    if path.is_dir():
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not weights:
            raise FileNotFoundError(f"{path}: no *.safetensors weights in the selector folder")
        digest = hashlib.sha256("".join(sha256_file(w) for w in weights).encode()).hexdigest()
        return SelectorRef(path, path.resolve().name, f"sha256:{digest[:16]}")
    from huggingface_hub import snapshot_download

    local = Path(snapshot_download(selector, revision=revision, repo_type="model"))
    return SelectorRef(local, selector, local.name)


def candidate_files(sources: list[str]) -> list[Path]:
    """Parquet shards from files or folders (a candidates repo folder: `data/candidates/*.parquet`)."""
    files: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted((path / "data" / "candidates").glob("*.parquet")) or sorted(path.rglob("*.parquet"))
            if not found:
                raise FileNotFoundError(f"{path}: no parquet shards (expected data/candidates/*.parquet)")
            files += found
        else:
            raise FileNotFoundError(f"{source}: no such file or folder")
    return files


def load_candidates(sources: list[str]) -> tuple[list[dict], dict[str, int]]:
    """The scoreable candidates sorted by candidate_id, and counts of what was skipped (by status).

    Shards are read a row group's batch at a time and only in the columns scoring needs, so memory holds the
    kept rows, not every column of every shard decoded at once.
    """
    rows, skipped, seen = [], {}, {}
    for file in candidate_files(sources):
        parquet = _open_shard(file)
        names = parquet.schema_arrow.names
        missing = [c for c in NEEDED_COLUMNS if c not in names and c != "status"]
        if missing:
            raise ValueError(f"{file}: candidates shard lacks columns {missing}")
        columns = [c for c in NEEDED_COLUMNS if c in names]
        index = -1
        for batch in parquet.iter_batches(batch_size=1_024, columns=columns):
            for row in batch.to_pylist():
                index += 1
                status = row.get("status") or "ok"
                if status != "ok":
                    skipped[status] = skipped.get(status, 0) + 1
                    continue
                cid = row["candidate_id"]
                if not isinstance(cid, str) or not cid:
                    raise ValueError(f"{file}, record {index}: 'candidate_id' must be non-empty text, got {cid!r}")
                if cid in seen:
                    raise ValueError(
                        f"{file}, record {index}, id {cid!r}: duplicate candidate_id (also in {seen[cid]})"
                    )
                _check_text(row, f"{file}, record {index}, id {cid!r}")
                seen[cid] = str(file)
                rows.append(row)
    rows.sort(key=lambda r: r["candidate_id"])
    return rows, skipped


def _check_text(row: dict, where: str) -> None:
    """A candidate whose selector text cannot be made (null or one-turn conversations, non-text values) is an
    error here, before a model is loaded, not in a decoding worker halfway through the run."""
    from vital_hub.selector.text import candidate_text

    try:
        text = candidate_text(row)
    except (TypeError, KeyError, AttributeError, ValueError) as err:
        reason = str(err) if isinstance(err, ValueError) else "'conversations' must be a list of {from, value} turns"
        raise ValueError(f"{where}: {reason}, got {row.get('conversations')!r:.200}") from None
    if not isinstance(text, str):
        raise ValueError(f"{where}: the question and answer must be text")


def _open_shard(file: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(file)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{file}: not a readable parquet file ({err})") from None


def candidates_fingerprint(rows: list[dict]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row["candidate_id"].encode() + b"\n")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- scoring


def load_selector(ref: SelectorRef, device, dtype_name: str = "auto"):
    """The model (backbone in bf16 on GPU, head in fp32) and its tokenizer."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import vital_hub.selector.modeling  # noqa: F401  (registers the Auto classes)

    model = AutoModel.from_pretrained(ref.path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    use_bf16 = dtype_name == "bf16" or (dtype_name == "auto" and device.type == "cuda")
    model.to(device).eval()
    if use_bf16:
        model.backbone.to(torch.bfloat16)
    return model, tokenizer


def score_shards(
    model,
    tokenizer,
    rows,
    shards,
    images,
    out_scores: Path,
    batch_size: int,
    num_workers: int,
    chunk_size: int = 64,
    progress: bool = True,
) -> int:
    """Score the given shards and write each as `<out_scores>/shard-NNNNN.parquet` plus its completion marker.
    Returns the number of candidates scored. The input pipeline is `vital_hub.selector.chunks`'s."""
    import torch
    from tqdm import tqdm

    from vital_hub.selector.chunks import assemble, chunk_loader, model_inputs

    device = next(model.parameters()).device
    loader, dataset = chunk_loader(
        rows,
        shards,
        images,
        tokenizer,
        model.config,
        batch_size,
        chunk_size,
        num_workers,
        torch_worker_init(os.getpid()),  # no decoder outlives a kill
    )
    chunks = dataset.chunks
    pin = device.type == "cuda"
    scored = 0
    parts, positions, unreadable, scores = [], [], [], []
    bar = tqdm(total=sum(len(c.positions) for c in chunks), desc="scoring", unit="cand", disable=not progress)
    with torch.inference_mode():
        for part in loader:
            chunk = chunks[part.index]
            parts.append(part)
            positions += chunk.positions
            unreadable += part.missing.tolist()
            if chunk.ends_batch:
                # Scores stay on the device until the shard ends: no synchronisation per batch.
                batch = model_inputs(assemble(parts, dataset.encoder, pin), device)
                scores.append(model(**batch).logits.squeeze(-1))
                parts = []
            bar.update(len(chunk.positions))
            if chunk.ends_shard:
                values = torch.cat(scores).float().cpu().tolist()
                write_scores(out_scores, chunk.shard, [rows[p]["candidate_id"] for p in positions], values, unreadable)
                scored += len(positions)
                positions, unreadable, scores = [], [], []
    bar.close()
    return scored


def write_scores(out_scores: Path, shard: int, ids: list[str], values: list[float], unreadable: list[bool]) -> None:
    """One shard's scores (None where the figure was unreadable) as parquet, then its completion marker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "candidate_id": ids,
            "score": [None if bad else v for v, bad in zip(values, unreadable, strict=True)],
            "error": ["image missing or unreadable" if bad else None for bad in unreadable],
        },
        schema=_score_schema(),
    )
    write_shard(out_scores, shard, table, pq)


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}"


def write_shard(out_scores: Path, shard: int, table, pq) -> None:
    with atomic_path(out_scores / f"{shard_name(shard)}.parquet", suffix=".parquet") as tmp:
        pq.write_table(table, tmp)
    write_json_atomic(out_scores / "completions" / shard_name(shard), {"rows": table.num_rows, "time": time.time()})


def shard_done(out_scores: Path, shard: int) -> bool:
    return (out_scores / "completions" / shard_name(shard)).exists()


def check_run(out_scores: Path, run: dict) -> None:
    """Refuse to mix scores from another selector, candidate set or sharding into the same folder."""
    path = out_scores / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != run:
            changed = sorted(k for k in run if previous.get(k) != run[k])
            raise SystemExit(
                f"{out_scores} holds scores of another run (different {', '.join(changed)}); use a new --out"
            )
    else:
        write_json_atomic(path, run)


# ---------------------------------------------------------------- selection


def rank_order(scored: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Score descending; ties broken by candidate_id ascending, so the order never depends on the input order."""
    return sorted(scored, key=lambda item: (-item[1], item[0]))


def allocate_quotas(k: int, shares: dict[str, float]) -> dict[str, int]:
    """Split k across groups in proportion to `shares` (largest remainder, ties by name)."""
    total = sum(shares.values())
    exact = {g: k * s / total for g, s in shares.items()}
    quotas = {g: math.floor(v) for g, v in exact.items()}
    leftover = k - sum(quotas.values())
    for group in sorted(exact, key=lambda g: (-(exact[g] - quotas[g]), g))[:leftover]:
        quotas[group] += 1
    return quotas


def select_top(ordered: list[tuple[str, float]], k: int, domain_of: dict[str, str], quotas=None) -> list:
    """The top k of an ordered list, globally or with per-domain quotas (kept in the global order)."""
    if quotas is None:
        return ordered[:k]
    counts: dict[str, int] = {}
    for cid, _ in ordered:
        counts[domain_of[cid]] = counts.get(domain_of[cid], 0) + 1
    shares = counts if quotas == "proportional" else {d: quotas.get(d, 0.0) for d in counts}
    if not any(shares.values()):
        raise ValueError(f"no quota matches the candidates' domains {sorted(counts)}")
    allowed = allocate_quotas(k, shares)
    kept, taken = [], dict.fromkeys(allowed, 0)
    for cid, score in ordered:
        domain = domain_of[cid]
        if taken[domain] < allowed[domain]:
            kept.append((cid, score))
            taken[domain] += 1
    return kept


def domain_name(domain: dict | None) -> str:
    from vital_hub.schema import first_domain

    return first_domain(domain) or "none"


def llava_record(row: dict) -> dict:
    record = {"id": row["candidate_id"], "image": row.get("image") or f"{row['pair_id']}.jpg"}
    if row.get("domain") is not None:
        record["domain"] = row["domain"]
    record["conversations"] = [{"from": t["from"], "value": t["value"]} for t in row["conversations"]]
    return record


def write_selection(
    out: Path, rows: list[dict], scores_dir: Path, n_shards: int, k: int, quotas, ref: SelectorRef, extra: dict
) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([pq.read_table(scores_dir / f"{shard_name(s)}.parquet") for s in range(n_shards)])
    scored = [
        (c, s)
        for c, s in zip(table["candidate_id"].to_pylist(), table["score"].to_pylist(), strict=True)
        if s is not None
    ]
    unreadable = table.num_rows - len(scored)
    by_id = {row["candidate_id"]: row for row in rows}
    domain_of = {cid: domain_name(by_id[cid].get("domain")) for cid, _ in scored}
    kept = select_top(rank_order(scored), k, domain_of, quotas)
    with atomic_path(out / "selected.json", suffix=".json") as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump([llava_record(by_id[cid]) for cid, _ in kept], handle, ensure_ascii=False)
    selected = pa.table(
        {
            "candidate_id": [cid for cid, _ in kept],
            "score": pa.array([s for _, s in kept], pa.float32()),
            "rank": list(range(1, len(kept) + 1)),
            "selector": [ref.name] * len(kept),
            "selector_revision": [ref.revision] * len(kept),
        }
    )
    with atomic_path(out / "selected.parquet", suffix=".parquet") as tmp:
        pq.write_table(selected, tmp)
    kept_domains: dict[str, int] = {}
    for cid, _ in kept:
        kept_domains[domain_of[cid]] = kept_domains.get(domain_of[cid], 0) + 1
    summary = {
        "selector": ref.name,
        "selector_revision": ref.revision,
        "scored": len(scored),
        "unreadable_images": unreadable,
        "kept": len(kept),
        "k": k,
        "quotas": quotas,
        "kept_by_domain": dict(sorted(kept_domains.items())),
        "score_of_last_kept": kept[-1][1] if kept else None,
        **extra,
    }
    write_json_atomic(out / "selection.json", summary)
    return summary
