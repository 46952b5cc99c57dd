"""`vital audit contamination`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vital_hub.config import help_field, parse_config


@dataclass
class ContaminationConfig:
    train: str = help_field("instructions or figures repo: a folder or a Hub dataset repo id")
    eval: list[str] = help_field("one or more NAME=QUESTIONS[,IMAGES] or NAME=PREPARED_FOLDER")
    out: str = help_field("folder for contamination.json, contamination.png and the hash cache")
    configs: list[str] | None = help_field("audit only these configs (default: all)", default=None)
    max_distance: int = help_field("largest pHash Hamming distance counted as a near duplicate", default=10)
    workers: int = help_field("processes that hash figures", default=2)
    hash_cache: str | None = help_field(
        "JSON-lines cache of hashes by sha256 (default: OUT/figure_hashes.jsonl)", default=None
    )
    verify: bool = help_field(
        "confirm each hash candidate by aligning the figures and comparing their pixels (--no-verify: report every "
        "hash match, as before)",
        default=True,
    )
    uneven_crops: bool = help_field(
        "look for each evaluation figure also cropped by its own amount on every side, up to 30 percent (~880 more "
        "hashes a figure; --no-uneven-crops: ~4 times fewer, a faster search, uneven crops found only near the one- "
        "and two-sided crops)",
        default=True,
    )
    sheet_top: int = help_field("matches shown on the PNG sheet", default=24)
    write_mixture: str | None = help_field("write a mixture YAML excluding every flagged row", default=None)


def contamination_main(argv: list[str]) -> int:
    config = parse_config(
        ContaminationConfig,
        argv,
        "vital audit contamination",
        "Find evaluation figures, questions and answers inside a training mixture.",
    )
    if config.verify:  # only verification aligns figures (OpenCV); --no-verify runs without it
        from vital_hub.cli_args import require

        require(("cv2",), "audit", "to verify candidates; --no-verify reports hash candidates without it")
    from vital_hub.audit.audit import AuditOptions, load_eval, run_audit
    from vital_hub.audit.data import open_training
    from vital_hub.audit.report import print_table, write_mixture, write_sheet
    from vital_hub.io import write_json_atomic

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = [c for item in config.configs or [] for c in item.split(",") if c] or None
    options = AuditOptions(
        config.train,
        config.eval,
        out,
        configs,
        config.max_distance,
        config.workers,
        Path(config.hash_cache) if config.hash_cache else None,
        verify=config.verify,
        uneven_crops=config.uneven_crops,
    )
    report = run_audit(options)
    write_json_atomic(out / "contamination.json", report)
    print_table(report)
    shown = write_sheet(report, [load_eval(spec) for spec in config.eval], out / "contamination.png", config.sheet_top)
    print(
        f"wrote {out / 'contamination.json'} ({len(report['matches']):,} matches)"
        + (f" and {out / 'contamination.png'} ({shown} pairs)" if shown else "")
    )
    if config.write_mixture:
        spec = write_mixture(report, open_training(config.train, configs), Path(config.write_mixture))
        print(
            f"wrote {config.write_mixture}: build it with "
            f"vital build instructions --sources SOURCES --out OUT --mixtures {config.write_mixture} "
            f"({', '.join(spec['only'])})"
        )
    return 0
