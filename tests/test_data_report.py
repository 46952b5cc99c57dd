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
    assert "Captions: 3 of 5 figures have one; median length 6 words" in report
    assert "median 300 px over 2 present figures" in report  # 1200 and 300 px: the lower of the two
    assert "![data report of figures](report/figures.png)" in card
    # A rebuild replaces the section instead of adding a second one; another writer's text stays.
    readme = tmp_path / "a" / "README.md"
    readme.write_text(readme.read_text() + "\nNotes kept.\n")
    assert run_vital("build", "figures", "--index", str(fetch), "--out", str(tmp_path / "a")).returncode == 0
    card = readme.read_text()
    assert card.count("## Data report") == 1 and "Notes kept." in card
    assert "| 0 | 0 | 0 | 0 | 0 | 0 | 0 | 5 |" in card  # no captions file this time: no domains


def _selection_folder(folder):
    """What `vital select --top 3` writes, through its own writers: 6 candidates scored, one figure unreadable."""
    from vital_hub.selector.select import SelectorRef, write_scores, write_selection

    rows = [
        {
            "candidate_id": f"c{i}",
            "pair_id": f"{500 + i}_F1",
            "domain": {
                "chest_xray": i % 2 == 0,
                "mri": i % 2 == 1,
                "ct_scan": False,
                "histology": False,
                "gross": False,
            },
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": "A lung."},
            ],
        }
        for i in range(6)
    ]
    scores = [0.9, 0.1, 0.7, 0.3, 0.5, 0.0]
    write_scores(folder / "scores", 0, [r["candidate_id"] for r in rows], scores, [False] * 5 + [True])
    ref = SelectorRef(folder, "tiny-selector", "sha256:0123456789abcdef")
    summary = write_selection(folder, rows, folder / "scores", 1, 3, None, ref, {})
    assert summary["score_of_last_kept"] == 0.5 and summary["kept"] == 3
    return rows


def test_instructions_card_shows_selector_scores_licences_and_retractions(tmp_path):
    sources, images = tmp_path / "sources", tmp_path / "images"
    rows = _selection_folder(sources / "mine")
    (sources / "plain.json").write_text(
        json.dumps([{"id": "p1", "image": "900_F1.jpg", "conversations": rows[0]["conversations"]}])
    )
    images.mkdir()
    index = []
    for row, licence, retracted in zip(
        rows, ["CC BY", None, "CC BY", None, "CC0", None], [False, None, True, None, None, None], strict=True
    ):
        (images / f"{row['pair_id']}.jpg").write_bytes(_jpeg((64, 48)))
        index.append({"pair_id": row["pair_id"], "status": "ok", "licence": licence, "retracted": retracted})
    write_index(index, images / "index" / "shard-00000-of-00001.parquet")
    spec = tmp_path / "mix.yaml"
    spec.write_text(
        "components:\n  mine: {file: mine/selected.json}\n  plain: {file: plain.json}\n"
        "mixtures:\n  - {name: mine, components: [{name: mine}]}\n  - {name: both, components: [{name: mine}, {name: plain}]}\n"
        "only: [mine, both]\n"
    )
    outputs = []
    for name in ("a", "b"):
        args = ["--sources", str(sources), "--images", str(images), "--mixtures", str(spec), "--allow-unverified"]
        result = run_vital("build", "instructions", *args, "--out", str(tmp_path / name))
        assert result.returncode == 0, result.stderr
        outputs.append((tmp_path / name / "report" / "selection-mine.png").read_bytes())
    assert outputs[0][:4] == b"\x89PNG" and outputs[0] == outputs[1]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    selection = manifest["components"]["mine"]["selection"]
    assert (selection["scored"], selection["kept"], selection["unreadable"], selection["cut"]) == (5, 3, 1, 0.5)
    assert sum(selection["histogram"]["counts"]) == 5 and selection["histogram_covers"] == "all candidates"
    card = (tmp_path / "a" / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("| `mine` | tiny-selector |"))
    assert line == "| `mine` | tiny-selector | `sha256:0123456789abcdef` | 5 | 3 | 1 | 0.5000 | all candidates |"
    assert "![selector scores of mine](report/selection-mine.png)" in card
    assert "`plain`: no `vital select` output beside `plain.json`" in card and "unavailable" in card
    # Kept: c0 (CC BY), c2 (CC BY, retracted: left out), c4 (CC0); plain's figure was never fetched.
    assert "| config | CC BY | CC0 | not in fetch index | figure retracted (kept) |" in card
    assert "| `mine` | 1 | 1 | 0 | 0 | 1 | 1 |" in card  # c4's retraction is unknown
    assert "| `both` | 1 | 1 | 1 | 0 | 2 | 1 |" in card
    # A resumed build (the README and manifest gone, components reused) records the same selection.
    (tmp_path / "a" / "README.md").unlink()
    assert run_vital("build", "instructions", *args, "--out", str(tmp_path / "a")).returncode == 0
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == manifest


def test_an_unreadable_selection_summary_is_one_error_line_naming_it(tmp_path):
    sources = tmp_path / "sources"
    _selection_folder(sources / "mine")
    (sources / "mine" / "selection.json").write_text("{cut off")
    spec = tmp_path / "mix.yaml"
    spec.write_text(
        "components:\n  mine: {file: mine/selected.json}\nmixtures:\n  - {name: m, components: [{name: mine}]}\n"
        "only: [m]\n"
    )
    args = ["--sources", str(sources), "--out", str(tmp_path / "repo"), "--mixtures", str(spec), "--allow-unverified"]
    result = run_vital("build", "instructions", *args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"vital build instructions: error: {sources / 'mine' / 'selection.json'}: not a selection summary")
    )
