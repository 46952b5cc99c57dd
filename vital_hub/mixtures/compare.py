"""Export a config back to LLaVA JSON, and compare a released file with a config record by record."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from vital_hub.io import atomic_path, iter_json_records
from vital_hub.mixtures.build import read_config_rows
from vital_hub.schema import row_to_llava, validate_llava

MAX_LISTED = 20


def export_llava(repo: Path, config: str, out: Path) -> int:
    """Write a config (or a component) as a LLaVA JSON array; returns the number of records."""
    count = 0
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write("[")
        for row in tqdm(read_config_rows(repo, config), desc=f"export {config}", unit=" rows"):
            handle.write(",\n" if count else "\n")
            handle.write(json.dumps(row_to_llava(row), ensure_ascii=False))
            count += 1
        handle.write("\n]\n")
    return count


def canonical_record(record: dict) -> dict:
    """A record with the key spelling normalised, so that `conversatons` and `conversations` compare equal."""
    if "conversatons" in record and "conversations" not in record:
        record = {("conversations" if k == "conversatons" else k): v for k, v in record.items()}
    return record


def record_hash(record: dict) -> str:
    text = json.dumps(canonical_record(record), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def differing_fields(a: dict, b: dict) -> list[str]:
    a, b = canonical_record(a), canonical_record(b)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def verify_released(repo: Path, config: str, released: Path, progress: bool = True) -> dict:
    """Compare a released LLaVA JSON file with a built config.

    Reports whether they are identical (same records in the same order), which released records differ from the
    config's record of the same id and in which fields, which are absent, which appear more often than in the config
    (records are compared as a multiset: a duplicated record is never "same records, different order"), and which
    component each released record matches, so that one can tell, say, which LLaVA-Med 60K file a released 150K
    file was made from.
    """
    ordered: list[str] = []
    by_hash: dict[str, str] = {}
    by_id: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for row in tqdm(read_config_rows(repo, config), desc=f"index {config}", unit=" rows", disable=not progress):
        record = row_to_llava(row)
        digest = record_hash(record)
        ordered.append(digest)
        by_hash.setdefault(digest, row["source"])
        by_id[str(record["id"])].append((row["source"], record))

    matched_by_component: Counter = Counter()
    in_place = moved = 0
    differing, absent, repeated = [], [], []
    config_counts, released_counts = Counter(ordered), Counter()
    released_count = 0
    for where, record in tqdm(iter_json_records(released), desc="compare", unit=" records", disable=not progress):
        validate_llava(record, where)  # a record that is not LLaVA JSON is bad input, not a difference
        released_count += 1
        digest = record_hash(record)
        released_counts[digest] += 1
        if released_counts[digest] > config_counts[digest] > 0:  # the same record more often than the config has it
            repeated.append({"index": where.index, "id": record.get("id")})
        if digest in by_hash:
            matched_by_component[by_hash[digest]] += 1
            if where.index < len(ordered) and ordered[where.index] == digest:
                in_place += 1
            else:
                moved += 1
            continue
        same_id = by_id.get(str(record.get("id")), [])
        if same_id:
            component, ours = same_id[0]
            differing.append(
                {
                    "index": where.index,
                    "id": record.get("id"),
                    "component": component,
                    "fields": differing_fields(record, ours),
                }
            )
        else:
            absent.append({"index": where.index, "id": record.get("id")})

    not_released = sum(1 for digest in ordered if digest not in released_counts)
    identical = in_place == released_count == len(ordered)
    if identical:
        verdict = "identical"
    elif not differing and not absent and not not_released and not repeated:
        verdict = "same records, different order"
    else:
        verdict = "differs"
    return {
        "config": config,
        "released_file": released.name,
        "verdict": verdict,
        "released_records": released_count,
        "config_rows": len(ordered),
        "identical_in_place": in_place,
        "identical_elsewhere": moved,
        "differing": len(differing),
        "differing_examples": differing[:MAX_LISTED],
        "absent_from_config": len(absent),
        "absent_examples": absent[:MAX_LISTED],
        "config_rows_not_in_released": not_released,
        "repeated_in_released": len(repeated),
        "repeated_examples": repeated[:MAX_LISTED],
        "released_records_matching_component": dict(sorted(matched_by_component.items())),
    }
