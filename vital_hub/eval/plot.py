"""The evaluation report's figure: per-domain and per-type relative scores with 95% intervals, and VQA scores."""

from __future__ import annotations

from pathlib import Path

from vital_hub.io import atomic_path


def plot_scores(summary: dict, path: Path) -> Path:
    """Per-domain (and per-type) relative scores with 95% intervals, and VQA scores when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    chat = summary.get("open_visual_chat")
    if chat:
        panels += [
            ("qa50 relative score by domain", chat["by_domain"]),
            ("qa50 relative score by type", chat["by_type"]),
        ]
    vqa = summary.get("medical_vqa", {})
    fig, axes = plt.subplots(1, len(panels) + bool(vqa), figsize=(5.5 * (len(panels) + bool(vqa)), 4), squeeze=False)
    for axis, (title, groups) in zip(axes[0], panels, strict=False):
        names = list(groups)
        values = [groups[n]["relative_score"] or 0.0 for n in names]
        errors = [
            [max(v - (groups[n]["ci95"] or [v, v])[0], 0) for n, v in zip(names, values, strict=True)],
            [max((groups[n]["ci95"] or [v, v])[1] - v, 0) for n, v in zip(names, values, strict=True)],
        ]
        bars = axis.bar(names, values, yerr=errors, capsize=4, color="#4C72B0")
        for bar, name in zip(bars, names, strict=True):
            axis.annotate(
                f"n={groups[name]['n_scored']}",
                (bar.get_x() + bar.get_width() / 2, 0),
                ha="center",
                va="bottom",
                fontsize=8,
                color="white",
            )
        axis.axhline(100, color="grey", linestyle="--", linewidth=1)
        axis.set_title(title)
        axis.set_ylabel("model / reference x 100")
        axis.tick_params(axis="x", rotation=30)
    if vqa:
        axis = axes[0][-1]
        labels, width = list(vqa), 0.2
        for offset, (mode, metric) in enumerate(
            [(m, k) for m in ("llava-med", "strict") for k in ("open_recall", "closed_accuracy")]
        ):
            values = [vqa[name]["variants"][mode][metric] or 0.0 for name in labels]
            positions = [i + (offset - 1.5) * width for i in range(len(labels))]
            axis.bar(positions, values, width, label=f"{metric.replace('_', ' ')} ({mode})")
        axis.set_xticks(range(len(labels)), labels)
        axis.set_ylim(0, 100)
        axis.set_title("medical VQA (x100)")
        axis.legend(fontsize=7)
    fig.suptitle(summary["model_id"])
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path
