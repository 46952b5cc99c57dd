"""Recall and precision of `vital audit contamination` per transformation, on the project's generated planted set
(the set of tests/test_audit_planted.py, with more figures).

    python benchmarks/audit_planted.py [--seeds 20] [--first 0] [--max-distance 10] [--no-verify] [--no-uneven-crops]

Builds the planted instructions repo with `vital build instructions` in a temporary folder, audits it with the
CLI, and prints a Markdown table: per transformation, copies found (recall) and matches that point at the right
evaluation figure (precision); per hard negative, rows flagged.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_audit import run_vital  # noqa: E402
from tests.test_audit_planted import build_planted  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20, help="evaluation figures (one per seed)")
    parser.add_argument("--first", type=int, default=0, help="first seed (the test uses 0-4)")
    parser.add_argument("--max-distance", type=int, default=10)
    parser.add_argument("--no-verify", action="store_true")
    parser.add_argument("--no-uneven-crops", action="store_true")
    parser.add_argument("--keep", help="build and audit in this folder, and keep it (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(args.keep or folder)
        expected, rows = build_planted(root, args.seeds, args.first)
        extra = ["--no-verify"] * args.no_verify + ["--no-uneven-crops"] * args.no_uneven_crops
        result = run_vital("audit", "contamination", "--train", str(root / "repo"), "--out", str(root / "audit"),
                           "--eval", f"planted={root / 'eval' / 'questions.jsonl'},{root / 'eval' / 'images'}",
                           "--workers", "2", "--max-distance", str(args.max_distance), *extra)  # fmt: skip
        if result.returncode:
            sys.exit(result.stderr[-3000:])
        report = json.loads((root / "audit" / "contamination.json").read_text())
    by_row = defaultdict(list)
    for match in report["matches"]:
        by_row[match["row_id"]].append(match)
    table = defaultdict(lambda: [0, 0, 0, 0])  # found, planted, right matches, all matches
    for row_id in rows:
        kind, pair_id = expected.get(row_id, (row_id.rsplit("-", 1)[0], None))
        reason = "text" if kind.startswith("qa-") else "phash"
        entry = table[kind]
        entry[1] += 1
        entry[0] += any(m["eval_pair_id"] == pair_id and reason in m["reasons"] for m in by_row[row_id])
        entry[2] += sum(m["eval_pair_id"] == pair_id for m in by_row[row_id])
        entry[3] += len(by_row[row_id])
    verification = report["verification"]
    per_pair = verification["cpu_s"] / max(1, verification["candidate_pairs"])
    print(f"seeds {args.first}-{args.first + args.seeds - 1}, max distance {args.max_distance}, verified "
          f"{not args.no_verify}; candidate pairs {verification['candidate_pairs']}, rejected by verification "
          f"{verification['rejected']}; verification {verification['cpu_s']} CPU-s, {per_pair:.4f} s a pair")  # fmt: skip
    print("| planted | found | precision |\n|---|---:|---:|")
    for kind, (found, planted, right, total) in table.items():
        if kind in {k for k, _ in expected.values()}:
            precision = f"{right}/{total}" if total else "-"
            print(f"| {kind} | {found}/{planted} | {precision} |")
    print("\n| not planted | rows flagged |\n|---|---:|")
    for kind, (_, planted, _, _) in table.items():
        if kind not in {k for k, _ in expected.values()}:
            flagged = sum(bool(by_row[r]) for r in rows if r.rsplit("-", 1)[0] == kind)
            print(f"| {kind} | {flagged}/{planted} |")


if __name__ == "__main__":
    main()
