"""What an admin account sees at /admin: each clinician's progress and how far clinicians agree.

Read from the judgement logs on disk (the same files `vital preferences build` reads), so the view shows what
was durably saved, never a server's private state. Comments and verdicts stay out of it: progress and
agreement are enough to run a study.
"""

from __future__ import annotations

import html
from pathlib import Path

from vital_hub.preferences.page import logout_form
from vital_hub.preferences.pairs import annotator_statistics
from vital_hub.preferences.store import read_judgements


def progress_report(annotation, accounts) -> dict:
    """Per annotator: items judged (of this server's items), judged without a figure, could not judge, last save."""
    out = Path(annotation.out_dir)
    records = read_judgements(out) if any(out.glob("*.jsonl")) else []
    ids = set(annotation.ids)
    names = sorted(set(accounts.names("annotator") if accounts else []) | {r["annotator"] for r in records})
    latest: dict[str, dict[str, dict]] = {name: {} for name in names}
    for record in records:
        if record["item_id"] in ids:
            latest[record["annotator"]][record["item_id"]] = record
    annotators = {}
    for name in names:
        mine = latest[name].values()
        annotators[name] = {
            "judged": len(latest[name]),
            "total": len(ids),
            "cannot_judge": sum(bool(r.get("cannot_judge")) for r in mine),
            "without_figure": sum(r.get("figure_status") == "unavailable" and not r.get("cannot_judge") for r in mine),
            "last_saved": max((r.get("time") or "" for r in mine), default=None),
        }
    judged = [r for r in records if r["item_id"] in ids and not r.get("cannot_judge")]
    stats = annotator_statistics(judged) if judged else {}
    return {
        "annotators": annotators,
        "items": len(ids),
        "items_with_several_annotators": stats.get("items_with_several_annotators", 0),
        "mean_item_agreement": stats.get("mean_item_agreement"),
        "annotator_pairs": stats.get("annotator_pairs", []),
    }


def _number(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def admin_page(report: dict, csrf_token: str | None = None) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{a['judged']} / {a['total']}</td><td>{a['cannot_judge']}</td>"
        f"<td>{a['without_figure']}</td><td>{html.escape(a['last_saved'] or '–')}</td></tr>"
        for name, a in report["annotators"].items()
    )
    pairs = "".join(
        f"<tr><td>{html.escape(' & '.join(p['annotators']))}</td><td>{p['overlap']}</td>"
        f"<td>{_number(p['verdict_agreement'])}</td><td>{_number(p['verdict_kappa'])}</td></tr>"
        for p in report["annotator_pairs"]
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Study progress: clinician review</title><link rel="stylesheet" href="/static/app.css"></head>
<body class="admin"><header><h1>Study progress</h1><span class="spacer"></span>
{logout_form(csrf_token)}</header>
<main class="single"><section>
<h2>Clinicians</h2>
<table id="progress-table"><thead><tr><th>Name</th><th>Judged</th><th>Cannot judge</th><th>Without figure</th>
<th>Last saved (UTC)</th></tr></thead><tbody>{rows}</tbody></table>
<h2>Agreement</h2>
<p>Items judged by several clinicians: {report["items_with_several_annotators"]}; mean agreement on the verdict:
<span id="mean-agreement">{_number(report["mean_item_agreement"])}</span></p>
<table id="agreement-table"><thead><tr><th>Clinicians</th><th>Shared items</th><th>Verdict agreement</th>
<th>Cohen's kappa</th></tr></thead><tbody>{pairs}</tbody></table>
<p>The same numbers as JSON: <a href="/api/admin">/api/admin</a>.</p>
</section></main></body></html>
"""
