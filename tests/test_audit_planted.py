"""The audit against the project's own planted set (vital_hub.audit.planted), run as a user runs it: an
instructions repo built with `vital build instructions` holding every transformation of every evaluation figure,
copied and paraphrased questions, hard negatives (template charts with other data, sibling panels, same-modality
figures, answers sharing only model boilerplate) and clean rows; then `vital audit contamination`.

Required: every mild transformation found, >= 95% of each hard group, every copied question or answer found, and
no hard negative or clean row flagged. The per-transformation table of docs/audit.md comes from `summary` (printed)."""

import json
import random
from collections import defaultdict

import pytest
import yaml

from tests.test_audit import run_vital
from vital_hub.audit.planted import KINDS, figure, hard_negatives, jpeg, transformations

BOILERPLATE = (
    "However, a healthcare professional should be consulted for a thorough evaluation and an accurate diagnosis "
    "of the findings shown in this image."
)
SHORT = [
    ("What organ is shown?", "The conjunctiva."),
    ("Which stain was used?", "Hematoxylin and eosin."),
    ("Where is the fracture?", "The distal radius."),
    ("What does the arrow mark?", "A cystic lesion."),
    ("Which side is enlarged?", "The left ventricle."),
    ("What modality is this?", "Magnetic resonance imaging."),
    ("Which vessel is occluded?", "The left anterior descending artery."),
    ("What is the scale bar?", "Fifty micrometres."),
    ("Which lobe is affected?", "The right upper lobe."),
    ("What fills the cyst?", "Clear serous fluid."),
]
HARD_GROUPS = {
    "crops up to 30%": ("crop-15%-one-side", "crop-15%-two-sides", "crop-15%-four-sides", "crop-30%-one-side",
                        "crop-30%-two-sides", "crop-uneven"),
    "borders, captions, screenshots": ("border-white-15%", "border-black-15%", "caption-strip", "screenshot"),
    "flips and rotations": ("flip-horizontal", "flip-vertical", "rotate-90", "rotate-180", "rotate-270"),
    "panels": ("panel-of-2x2", "panel-of-1x3", "in-superfigure", "sub-panel-cut-out"),
}  # fmt: skip


def conversation(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def long_answer(k: int, rng: random.Random) -> str:
    words = "lesion mass signal margin nodule tissue cortex vessel stain region lobe duct cyst wall".split()
    body = " ".join(rng.choice(words) for _ in range(28))
    return f"The figure {k} shows a {body} consistent with finding {k}. {BOILERPLATE}"


def paraphrase(text: str) -> str:
    """A light paraphrase: two words swapped for synonyms, a clause moved."""
    swapped = text.replace("shows", "depicts").replace("consistent with", "in keeping with")
    first, _, rest = swapped.partition(". ")
    return f"{rest} In short, {first[0].lower()}{first[1:]}."


def build_planted(tmp_path, seeds: int = 5, first: int = 0):
    """The planted repo and evaluation set of evaluation figures `first` .. `first + seeds - 1` (kinds in turn)."""
    rng = random.Random(7 + first)
    eval_dir, images, sources = tmp_path / "eval" / "images", tmp_path / "images", tmp_path / "sources"
    for folder in (eval_dir, images, sources):
        folder.mkdir(parents=True)
    questions, records, expected = [], [], {}

    def add_eval(pair_id, image, question, answer):
        (eval_dir / f"{pair_id}.jpg").write_bytes(jpeg(image))
        questions.append({"question_id": len(questions), "image": f"{pair_id}.jpg", "pair_id": pair_id,
                          "text": f"{question}\n<image>", "gpt4_answer": answer, "type": "conversation"})  # fmt: skip

    def add_row(row_id, image, question, answer, kind=None, pair_id=None):
        file = f"{80_000_000 + len(records)}_F1.jpg"
        if image is not None:
            (images / file).write_bytes(jpeg(image))
        records.append({"id": row_id, "image": file, "conversations": conversation(question, answer)})
        if kind:
            expected[row_id] = (kind, pair_id)

    clean_answer = " ".join(["A plain description of an unrelated figure."] * 2)
    for k in range(first, first + seeds):
        kind = KINDS[k % len(KINDS)]
        original = figure(kind, 1_000 + k)
        pair_id = f"1000{k:04d}_F1"
        long_question = f"What does figure {k} show about the patient's condition and the likely cause of it?"
        answer = long_answer(k, rng)
        add_eval(pair_id, original, long_question, answer)
        short_q, short_a = SHORT[k % len(SHORT)]
        questions.append({**questions[-1], "question_id": len(questions), "text": f"{short_q}\n<image>",
                          "gpt4_answer": short_a})  # fmt: skip
        base = 2_000 if k < 100 else 2_000_000  # from seed 100 on, 2_000 + 10 * k would reach the seeds 3_000 + k
        others = [figure(KINDS[(k + j) % len(KINDS)], base + 10 * k + j) for j in range(1, 4)]
        for name, (_, transform) in transformations().items():
            source = original
            if name == "sub-panel-cut-out":
                source = figure("compound", 3_000 + k)  # the evaluation figure is compound: one panel is copied
                add_eval(f"3000{k:04d}_F2", source, "Describe the panels.", "Four panels of findings.")
            copy = transform(source, rng, others)
            target = f"3000{k:04d}_F2" if name == "sub-panel-cut-out" else pair_id
            add_row(f"copy-{name}-{k}", copy, "Describe the image.", clean_answer, name, target)
        neutral = figure("photo", 4_000 + k)
        add_row(f"qa-long-{k}", neutral, long_question, answer, "qa-long", pair_id)
        add_row(f"qa-short-{k}", figure("chart", 4_100 + k), short_q, short_a, "qa-short", pair_id)
        add_row(f"qa-answer-{k}", figure("photo", 4_200 + k), "Describe the findings.", answer, "qa-answer", pair_id)
        add_row(f"qa-paraphrase-{k}", figure("photo", 4_300 + k), "Describe it.", paraphrase(answer))
        add_row(
            f"boilerplate-{k}", figure("microscopy", 4_400 + k), "What is this?", f"A stained section. {BOILERPLATE}"
        )
        for n, (name, evaluated, negative) in enumerate(hard_negatives(5_000 + k)):
            negative_id = f"5000{k:04d}_F{n}"
            add_eval(negative_id, evaluated, f"What is shown in {name} figure {k}?", f"Finding {name} {k}.")
            add_row(f"negative-{name}-{k}", negative, "Describe the image.", clean_answer)
    for k in range(20):
        add_row(
            f"clean-{k}", figure(KINDS[k % len(KINDS)], 6_000 + k), f"Describe {k}.", f"{clean_answer} {BOILERPLATE}"
        )
    (tmp_path / "eval" / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (sources / "planted.json").write_text(json.dumps(records))
    mix = tmp_path / "mix.yaml"
    mix.write_text(yaml.safe_dump({"components": {"planted": {"file": "planted.json"}},
                                   "mixtures": [{"name": "mix", "components": [{"name": "planted"}]}],
                                   "only": ["mix"]}))  # fmt: skip
    built = run_vital("build", "instructions", "--sources", str(sources), "--out", str(tmp_path / "repo"),
                      "--images", str(images), "--mixtures", str(mix), "--allow-unverified", "--workers", "2")  # fmt: skip
    assert built.returncode == 0, built.stderr
    return expected, [r["id"] for r in records]


def summary(report, expected, rows):
    by_row = defaultdict(list)
    for match in report["matches"]:
        by_row[match["row_id"]].append(match)
    found = defaultdict(lambda: [0, 0])
    for row_id, (kind, pair_id) in expected.items():
        reason = "text" if kind.startswith("qa-") else "phash"
        hit = any(m["eval_pair_id"] == pair_id and reason in m["reasons"] for m in by_row[row_id])
        found[kind][0] += hit
        found[kind][1] += 1
    paraphrases = [r for r in rows if r.startswith("qa-paraphrase")]
    found["qa-paraphrase (measured)"] = [sum(bool(by_row[r]) for r in paraphrases), len(paraphrases)]
    false = sorted(r for r in rows if r not in expected and r in by_row and not r.startswith("qa-paraphrase"))
    wrong = sorted(r for r, (_, pair_id) in expected.items() for m in by_row[r] if m["eval_pair_id"] != pair_id)
    return found, false, wrong


@pytest.mark.slow
def test_planted_set_recall_per_transformation_and_no_false_alarms(tmp_path):
    expected, rows = build_planted(tmp_path)
    result = run_vital("audit", "contamination", "--train", str(tmp_path / "repo"), "--out", str(tmp_path / "audit"),
                       "--eval", f"planted={tmp_path / 'eval' / 'questions.jsonl'},{tmp_path / 'eval' / 'images'}",
                       "--workers", "2")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "audit" / "contamination.json").read_text())
    found, false, wrong = summary(report, expected, rows)
    print(json.dumps({k: f"{a}/{b}" for k, (a, b) in sorted(found.items())}))
    assert not false, f"flagged but not planted: {false}"
    assert not wrong, f"matched to the wrong evaluation figure: {wrong}"
    groups = {name for names in HARD_GROUPS.values() for name in names}
    for name, (group, _) in transformations().items():
        if group == "mild":
            assert found[name][0] == found[name][1], (name, found[name])
    for group, names in HARD_GROUPS.items():
        hits, total = (sum(found[n][i] for n in names) for i in (0, 1))
        assert hits >= 0.95 * total, (group, {n: found[n] for n in names})
    for kind in ("qa-long", "qa-short", "qa-answer"):
        assert found[kind][0] == found[kind][1], (kind, found[kind])
    assert groups | {n for n, (g, _) in transformations().items() if g == "mild"} == set(transformations())
    verification = report["verification"]  # what verifying cost, for the per-candidate figure of docs/audit.md
    assert verification["candidate_pairs"] > verification["rejected"] > 0 and verification["cpu_s"] > 0
    confirmed = [m for m in report["matches"] if "phash" in m["reasons"]]
    assert all(m["figure_match"]["signal"] in ("orb+pixels", "hash-box+pixels") for m in confirmed)
    assert all(m["figure_match"]["region"] and 0 < m["figure_match"]["confidence"] <= 1 for m in confirmed)
    assert (tmp_path / "audit" / "contamination.png").stat().st_size > 10_000
