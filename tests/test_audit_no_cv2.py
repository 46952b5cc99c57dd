"""`vital audit contamination --no-verify` runs where OpenCV is not installed: only verification needs it. Without
OpenCV, the verified audit stops before any work with one line naming the package and the way out."""

import json
import subprocess
import sys

from tests.audit_support import generated_figure, jpeg
from tests.test_audit import plant, qa50_questions

# `vital` with OpenCV unimportable: `import cv2` raises ImportError and importlib finds no spec for it.
WITHOUT_CV2 = "import sys; sys.modules['cv2'] = None; from vital_hub.cli import main; sys.exit(main(sys.argv[1:]))"


def vital_without_cv2(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_CV2, *args], capture_output=True, text=True)


def test_no_verify_audits_without_opencv_and_verify_says_what_is_missing(tmp_path):
    eval_figures = {f"1234{k:04d}_F1": jpeg(generated_figure(k)) for k in range(2)}
    expected = plant(tmp_path, eval_figures, [jpeg(generated_figure(1_000 + k)) for k in range(4)],
                     qa50_questions(list(eval_figures)))  # fmt: skip
    spec = f"qa50={tmp_path / 'eval' / 'questions.jsonl'},{tmp_path / 'eval' / 'images'}"
    common = ("audit", "contamination", "--train", str(tmp_path / "repo"), "--eval", spec, "--workers", "1")
    result = vital_without_cv2(*common, "--out", str(tmp_path / "unverified"), "--no-verify", "--no-uneven-crops")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "unverified" / "contamination.json").read_text())
    assert report["verified"] is False and report["uneven_crops"] is False
    copies = {r for r, (kind, _) in expected.items() if kind not in ("text", "pair_id")}
    assert copies <= set(report["flagged"]["planted"])  # every figure copy, as a hash candidate
    assert not any(r.startswith("clean-") for r in report["flagged"]["planted"])

    refused = vital_without_cv2(*common, "--out", str(tmp_path / "verified"))
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "opencv-python-headless" in lines[0] and "--no-verify" in lines[0], refused.stderr
    assert not (tmp_path / "verified").exists()  # stopped before any work
