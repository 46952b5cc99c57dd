"""The data reports of the cards: `vital build figures` (statuses, licences, retractions, domains, captions,
sizes) and, for a `vital select` component, the selector score distribution with its cut."""

import hashlib
import io
import json
import subprocess
import sys

from PIL import Image

from vital_hub.figures.index import write_index


def run_vital(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vital_hub.cli", *args], capture_output=True, text=True)


def _jpeg(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 90, 90)).save(buffer, "JPEG")
    return buffer.getvalue()


def _fetch_folder(root):
    """A finished fetch folder: 3 figures fetched (one of them later overwritten, so corrupt), one retracted,
    one missing at fetch, one not permitted; licences CC BY (x2), CC BY-NC, null."""
    root.mkdir()
    rows, captions = [], {"mri": [], "histology": []}
    specs = [
        # pair_id, status, licence, retracted, size, caption domain, caption
        ("100_F1", "ok", "CC BY", False, (1200, 800), "mri", "Axial T2 image of the brain."),
        ("100_F2", "ok", "CC BY", True, (300, 200), "histology", "H and E stain."),
        ("200_F1", "ok", "CC BY-NC", None, (640, 480), None, None),
        ("300_F1", "missing", None, None, None, "mri", "A figure whose file was not in the package at all."),
        ("400_F1", "not_permitted", "CC BY-ND", False, None, None, None),
    ]
    for pair_id, status, licence, retracted, size, domain, caption in specs:
        data = _jpeg(size) if size else None
        if data:
            (root / f"{pair_id}.jpg").write_bytes(data)
        rows.append(
            {
                "pair_id": pair_id,
                "pmcid": "PMC" + pair_id.split("_")[0],
                "pmid": pair_id.split("_")[0],
                "fig_id": pair_id.split("_")[1],
                "status": status,
                "licence": licence,
                "retracted": retracted,
                "sha256": hashlib.sha256(data).hexdigest() if data else None,
                "width": size[0] if size else None,
                "height": size[1] if size else None,
            }
        )
        if domain:
            captions[domain].append({"pair_id": pair_id, "fig_caption": caption, "domain": domain})
    (root / "200_F1.jpg").write_bytes(b"not the fetched bytes")  # corrupt: no longer matches the index sha256
    write_index(rows, root / "index" / "shard-00000-of-00001.parquet")
    (root / "index" / "shard-00000-of-00001.done").write_text("{}\n")
    (root / "captions.json").write_text(json.dumps(captions))
    return root


def test_figures_card_reports_statuses_licences_retractions_domains_and_sizes(tmp_path):
    fetch = _fetch_folder(tmp_path / "fetch")
    plots = []
    for name in ("a", "b"):
        repo = tmp_path / name
        result = run_vital(
            "build", "figures", "--index", str(fetch), "--out", str(repo), "--captions", str(fetch / "captions.json")
        )
        assert result.returncode == 0, result.stderr
        plots.append((repo / "report" / "figures.png").read_bytes())
    assert plots[0][:4] == b"\x89PNG" and plots[0] == plots[1]
    card = (tmp_path / "a" / "README.md").read_text()
    report = card.split("## Data report", 1)[1]
    assert "5 figures: 2 present (image embedded), 3 missing (corrupt 1, missing 1, not_permitted 1)" in report
    assert "1 from retracted articles, 2 whose retraction status is unknown" in report
    for line in ("| CC BY | 2 |", "| CC BY-NC | 1 |", "| CC BY-ND | 1 |", "| unknown | 1 |"):
        assert line in report
    # chest_xray, mri, ct_scan, histology, gross, multi-label, none true, missing
    assert "| 0 | 2 | 0 | 1 | 0 | 0 | 0 | 2 |" in report
    assert "Captions: 3 of 5 figures have one; median length 0-9 words" in report
    assert "median 256-511 px over 2 present figures" in report  # 1200 and 300 px: the lower of two bins
    assert "![data report of figures](report/figures.png)" in card
    # A rebuild replaces the section instead of adding a second one; another writer's text stays.
    readme = tmp_path / "a" / "README.md"
    readme.write_text(readme.read_text() + "\nNotes kept.\n")
    assert run_vital("build", "figures", "--index", str(fetch), "--out", str(tmp_path / "a")).returncode == 0
    card = readme.read_text()
    assert card.count("## Data report") == 1 and "Notes kept." in card
    assert "| 0 | 0 | 0 | 0 | 0 | 0 | 0 | 5 |" in card  # no captions file this time: no domains
