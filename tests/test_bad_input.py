"""Bad input to every command that reads a user's file: one line `vital <command>: error: <file>...: <reason>`,
exit 1, no traceback, nothing written as if it had worked.

Each case starts from a file the command accepts and breaks it one way: empty, cut in half, an object where
records are expected, null conversations, a number where a string is expected, a non-UTF-8 byte (0xe9, Latin-1
"é"), a folder in the file's place, a duplicated record. The table runs in one process through `vital`'s entry
point (the same code path as the command line, `python -m vital_hub.cli`); a few cases run again as real
subprocesses.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.generation_support import make_demonstrations, make_figures
from tests.test_preferences_pairs import judgement
from vital_hub.cli import main as vital

DEAD_SERVER = "http://127.0.0.1:9/v1"  # nothing listens: a command that got past its input would fail differently


def llava(n: int) -> dict:
    return {
        "id": f"rec{n}",
        "image": f"{n}_F1.jpg",
        "conversations": [{"from": "human", "value": f"<image>\nQuestion {n}?"}, {"from": "gpt", "value": "A."}],
    }


def qa50_row(n: int) -> dict:
    return {"question_id": n, "image": f"{n}.jpg", "text": f"What is {n}?\n<image>", "gpt4_answer": f"ref {n}",
            "type": "conversation", "fig_caption": "c"}  # fmt: skip


def vqa_row(n: int) -> dict:
    return {**llava(n), "id": n, "answer_type": "OPEN"}


def url_row(n: int) -> dict:
    return {"pair_id": f"{n}_F1", "pmcid": f"PMC{n + 1}", "file": f"f{n}.jpg"}


def answer_row(n: int) -> dict:
    return {"question_id": n, "text": f"answer {n}"}


@dataclass
class Input:
    """One file a command reads: how to write it from records, and which field to break how."""

    name: str
    records: Callable[[int], dict]
    jsonl: bool = False
    string_field: str | None = None  # set to a number: "number where a string is expected"
    conversations: bool = False  # the records have conversations: "null conversations" applies
    unique: bool = True  # the command must refuse a duplicated record

    def write(self, path: Path, rows: list) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.jsonl:
            path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        else:
            path.write_text(json.dumps(rows, indent=1), encoding="utf-8")


@dataclass
class Case:
    command: str
    file: Input
    argv: Callable[[Path, Path], list[str]]  # (tmp, path of the file under test) -> argv
    path: Callable[[Path], Path]  # where the file under test lives
    prepare: Callable[[Path], None] = lambda tmp: None
    # documented, correct acceptances: breakage -> (exit code, text the command must print about it)
    accepted: dict[str, tuple[int, str]] = field(default_factory=dict)


def sources_spec(tmp: Path) -> Path:
    spec = tmp / "mix.yaml"
    spec.write_text("only: [ten]\nmixtures:\n  - {name: ten, components: [{name: llava-med-10k}]}\n")
    return spec


CASES = [
    Case(
        "build instructions",
        Input("source", llava, string_field="image", conversations=True),
        lambda tmp, p: ["build", "instructions", "--sources", str(p.parent), "--out", str(tmp / "repo"),
                        "--mixtures", str(sources_spec(tmp)), "--allow-unverified", "--workers", "1"],
        lambda tmp: tmp / "sources" / "llava_med_instruct_10k.json",
    ),
    Case(
        "verify",
        Input("released", llava, string_field="image", conversations=True),
        lambda tmp, p: ["verify", "--repo", str(tmp / "built"), "--config", "ten", "--released", str(p)],
        lambda tmp: tmp / "released.json",
        prepare=lambda tmp: _built_repo(tmp),
        accepted={"duplicate": (1, '"repeated_in_released": 1')},  # verify reports it: the verdict is "differs"
    ),
    Case(
        "export llava",
        Input("manifest", llava, unique=False),
        lambda tmp, p: ["export", "llava", "--repo", str(p.parent), "--config", "ten", "--out", str(tmp / "x.json")],
        lambda tmp: tmp / "built" / "manifest.json",
        prepare=lambda tmp: _built_repo(tmp),
    ),
    Case(
        "generate candidates",
        Input("captions", lambda n: _caption(n), string_field="fig_caption"),
        lambda tmp, p: ["generate", "candidates", "--figures", str(tmp / "figs" / "images"), "--captions", str(p),
                        "--out", str(tmp / "gen"), "--model", "m", "--base-url", DEAD_SERVER, "--demos",
                        str(make_demonstrations(tmp / "demos.json")), "--max-retries", "0"],
        lambda tmp: tmp / "captions.json",
        prepare=lambda tmp: make_figures(tmp / "figs", 2),
        accepted={"duplicate": (0, "")},  # the same figure under two domains: one figure, by design
    ),
    Case(
        "fetch figures",
        Input("urls", url_row, jsonl=True, string_field="pair_id"),
        lambda tmp, p: ["fetch", "figures", "--urls", str(p), "--out", str(tmp / "figs"), "--base-url",
                        "http://127.0.0.1:9", "--max-retries", "0", "--no-progress"],
        lambda tmp: tmp / "urls.jsonl",
        accepted={"duplicate": (0, "1 records repeat an earlier pair_id and were skipped (first: ['1_F1'])")},
    ),
    Case(
        "generate candidates",
        Input("demos", lambda n: _demo(n), string_field="fig_caption", conversations=True),
        lambda tmp, p: ["generate", "candidates", "--figures", str(tmp / "figs" / "images"), "--captions",
                        str(tmp / "figs" / "captions.json"), "--out", str(tmp / "gen"), "--model", "m",
                        "--base-url", DEAD_SERVER, "--demos", str(p), "--max-retries", "0"],
        lambda tmp: tmp / "demos.json",
        prepare=lambda tmp: make_figures(tmp / "figs", 2),
    ),
    Case(
        "generate reference-answers",
        Input("questions", qa50_row, jsonl=True, string_field="text"),
        lambda tmp, p: ["generate", "reference-answers", "--questions", str(p), "--out", str(tmp / "ref.jsonl"),
                        "--model", "m", "--base-url", DEAD_SERVER, "--max-retries", "0"],
        lambda tmp: tmp / "qa50.jsonl",
    ),
    Case(
        "judge rubric",
        Input("items", lambda n: _item(n), jsonl=True, string_field="question"),
        lambda tmp, p: ["judge", "rubric", "--candidates", str(p), "--out", str(tmp / "judge"), "--model", "m",
                        "--base-url", DEAD_SERVER, "--no-send-images", "--max-retries", "0"],
        lambda tmp: tmp / "items.jsonl",
    ),
    Case(
        "eval answer",
        Input("questions", qa50_row, jsonl=True, string_field="text"),
        lambda tmp, p: ["eval", "answer", "--backend", "openai", "--questions", str(p), "--out",
                        str(tmp / "answers.jsonl"), "--model", "m", "--base-url", DEAD_SERVER, "--max-retries", "0"],
        lambda tmp: tmp / "qa50.jsonl",
    ),
    Case(
        "eval chat",
        Input("answers", answer_row, jsonl=True, string_field="text"),
        lambda tmp, p: ["eval", "chat", "--questions", str(_qa50(tmp)), "--answers", str(p), "--out-dir",
                        str(tmp / "chat"), "--judge-model", "m", "--base-url", DEAD_SERVER, "--max-retries", "0"],
        lambda tmp: tmp / "answers.jsonl",
    ),
    Case(
        "eval chat",
        Input("questions", qa50_row, jsonl=True, string_field="text"),
        lambda tmp, p: ["eval", "chat", "--questions", str(p), "--answers", str(_answers(tmp)), "--out-dir",
                        str(tmp / "chat"), "--judge-model", "m", "--base-url", DEAD_SERVER, "--max-retries", "0"],
        lambda tmp: tmp / "qa50.jsonl",
    ),
    Case(
        "eval winrate",
        Input("answers", answer_row, jsonl=True, string_field="text"),
        lambda tmp, p: ["eval", "winrate", "--questions", str(_qa50(tmp)), "--answers-a", str(p), "--answers-b",
                        str(_answers(tmp)), "--out-dir", str(tmp / "win"), "--judge-model", "m", "--base-url",
                        DEAD_SERVER, "--max-retries", "0"],
        lambda tmp: tmp / "a.jsonl",
    ),
    Case(
        "eval vqa-score",
        Input("answers", answer_row, jsonl=True, string_field="text"),
        lambda tmp, p: ["eval", "vqa-score", "--questions", str(_vqa(tmp)), "--answers", str(p), "--out",
                        str(tmp / "score.json")],
        lambda tmp: tmp / "a.jsonl",
    ),
    Case(
        "eval vqa-score",
        Input("questions", vqa_row, string_field="answer_type", conversations=True),
        lambda tmp, p: ["eval", "vqa-score", "--questions", str(p), "--answers", str(_answers(tmp)), "--out",
                        str(tmp / "score.json")],
        lambda tmp: tmp / "vqa.json",
    ),
    Case(
        "preferences pairs",
        Input("scores", lambda n: _score(n), jsonl=True, string_field="answer", unique=False),
        lambda tmp, p: ["preferences", "pairs", "--scores", str(p), "--out", str(tmp / "prefs"), "--n", "2"],
        lambda tmp: tmp / "judge" / "scores.jsonl",
        # the judge's own log: a cut-off last line is a crash's leftover, and the last line of a unit wins
        accepted={"truncated": (0, "ignoring an unfinished last line")},
    ),
    Case(
        "preferences build",
        Input("annotations", lambda n: _annotation(n), jsonl=True, string_field="question", unique=False),
        lambda tmp, p: ["preferences", "build", "--annotations", str(p.parent), "--out", str(tmp / "prefs")],
        lambda tmp: tmp / "annotations" / "dr_a.jsonl",
        # the app's own append-only log: a cut-off last line is what a crash leaves, dropped with a warning
        accepted={"truncated": (0, "ignoring an unfinished last line")},
    ),
    Case(
        "build figures",
        Input("captions", lambda n: _caption(n), string_field="fig_caption", unique=False),
        lambda tmp, p: ["build", "figures", "--index", str(_fetched_once()), "--out", str(tmp / "repo"),
                        "--captions", str(p), "--workers", "1"],
        lambda tmp: tmp / "captions.json",
    ),
    Case(
        "preferences sample",
        Input("items", lambda n: _item(n), jsonl=True, string_field="question"),
        lambda tmp, p: ["preferences", "sample", "--candidates", str(p), "--out", str(tmp / "s.jsonl"), "--k", "2",
                        "--encoder", "hashing"],
        lambda tmp: tmp / "items.jsonl",
    ),
    Case(
        "audit contamination",
        Input("questions", qa50_row, jsonl=True, string_field="text"),
        lambda tmp, p: ["audit", "contamination", "--train", str(tmp / "built"), "--eval", f"qa50={p}", "--out",
                        str(tmp / "audit"), "--workers", "1"],
        lambda tmp: tmp / "qa50.jsonl",
        prepare=lambda tmp: _built_repo(tmp),
    ),
]  # fmt: skip


@functools.cache
def _fetched_once() -> Path:
    """A finished `vital fetch figures` folder (two figures from a local stand-in for PMC), made once per session."""
    import tempfile

    from tests.fakes.pmc_server import FakePmc, populate
    from vital_hub.figures.pipeline import FetchConfig, run_fetch

    root = Path(tempfile.mkdtemp(prefix="vital-bad-input-"))
    with FakePmc() as pmc:
        scenario = populate(pmc, articles=1, figures_per_article=2)
        urls = root / "urls.jsonl"
        urls.write_text("".join(json.dumps(r) + "\n" for r in scenario.records))
        run_fetch(FetchConfig(urls=str(urls), out=str(root / "out"), base_url=pmc.url, legacy_base_url=pmc.url,
                              progress=False))  # fmt: skip
    return root / "out"


def _demo(n: int) -> dict:
    return _DEMOS[n]


def _demo_records() -> list[dict]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return json.loads(make_demonstrations(Path(folder) / "d.json").read_text())


_DEMOS = _demo_records()


def _caption(n: int) -> dict:
    return {"pair_id": f"{30000000 + n}_F1", "pmid": str(30000000 + n), "fig_id": "F1", "fig_label": "Figure 1",
            "fig_caption": f"Caption {n}.", "in_text_mention": None,
            "domain": {"chest_xray": True, "mri": False, "ct_scan": False, "histology": False, "gross": False}}  # fmt: skip


def _score(n: int) -> dict:
    return {"score_id": f"3000{n}_F1#q0#a", "pair_id": f"3000{n}_F1", "question": "Q?", "answer": f"answer {n}",
            "caption": "c", "status": "ok", "score": 2.0 + 3 * n}  # fmt: skip


def _item(n: int) -> dict:
    return {"item_id": f"3000{n}_F1#q0", "pair_id": f"3000{n}_F1", "caption": "c", "mentions": [],
            "question": f"Question {n}?", "answer_a": "a", "answer_b": "b"}  # fmt: skip


def _annotation(n: int) -> dict:
    row = judgement(f"3000{n}_F1#q0", True, False)
    row.pop("annotator")
    return row


def _qa50(tmp: Path) -> Path:
    path = tmp / "questions-ok.jsonl"
    path.write_text("".join(json.dumps(qa50_row(n)) + "\n" for n in range(3)))
    return path


def _vqa(tmp: Path) -> Path:
    path = tmp / "vqa-ok.json"
    path.write_text(json.dumps([vqa_row(n) for n in range(3)]))
    return path


def _answers(tmp: Path) -> Path:
    path = tmp / "answers-ok.jsonl"
    path.write_text("".join(json.dumps(answer_row(n)) + "\n" for n in range(3)))
    return path


def _built_repo(tmp: Path) -> None:
    sources = tmp / "built-sources"
    Input("source", llava).write(sources / "llava_med_instruct_10k.json", [llava(n) for n in range(3)])
    argv = ["build", "instructions", "--sources", str(sources), "--out", str(tmp / "built"), "--mixtures",
            str(sources_spec(tmp)), "--allow-unverified", "--workers", "1"]  # fmt: skip
    assert vital(argv) == 0


def symlink_loop(path: Path) -> None:
    """The file is a link to itself: opening it fails with ELOOP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    path.unlink(missing_ok=True)
    path.symlink_to(path.name)


def breakages(case: Case) -> dict[str, Callable[[Path], None]]:
    """How to break the case's file, by name: each writes the broken file (or folder) at the path."""
    file = case.file
    rows = [file.records(n) for n in range(3)]

    def write_bytes(data: bytes) -> Callable[[Path], None]:
        return lambda path: (path.parent.mkdir(parents=True, exist_ok=True), path.write_bytes(data))

    def write_rows(changed: list) -> Callable[[Path], None]:
        return lambda path: file.write(path, changed)

    def valid_bytes() -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / "f"
            file.write(target, rows)
            return target.read_bytes()

    good = valid_bytes()
    found = {
        "empty": write_bytes(b""),
        "truncated": write_bytes(good[: len(good) // 2]),
        "object": write_bytes(b'{"not": "records"}\n' if file.jsonl else b'{"not": "records"}'),
        "non-utf8": write_bytes(good.replace(b"1", b"caf\xe9", 1)),
        "folder": lambda path: (path.unlink(missing_ok=True), path.mkdir(parents=True, exist_ok=True)),
        "deep nesting": write_bytes(b"[" * 200_000 + b"\n"),
        "symlink loop": symlink_loop,
    }
    if file.string_field:
        found["number"] = write_rows([{**rows[0], file.string_field: 12345}, *rows[1:]])
        found["NaN"] = write_rows([{**rows[0], file.string_field: float("nan")}, *rows[1:]])
    if file.conversations:
        found["null conversations"] = write_rows([{**rows[0], "conversations": None}, *rows[1:]])
    if file.unique:
        found["duplicate"] = write_rows([*rows, rows[1]])
    return found


TABLE = [
    pytest.param(case, kind, id=f"{case.command}:{case.file.name}:{kind}")
    for case in CASES
    for kind in breakages(case)
]


@pytest.mark.parametrize(("case", "kind"), TABLE)
def test_bad_input_is_one_line_naming_the_file(case, kind, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.delenv("VITAL_DEBUG", raising=False)
    case.prepare(tmp_path)
    path = case.path(tmp_path)
    breakages(case)[kind](path)
    argv = case.argv(tmp_path, path)
    capsys.readouterr()
    code = vital(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.replace("\r", "\n").splitlines() if ": error: " in line]
    if kind in case.accepted:
        expected_code, said = case.accepted[kind]
        assert code == expected_code and said in out + err + caplog.text, f"exit {code}: {err[-1500:]}"
        return
    assert code == 1, f"exit {code}, stderr: {err[-1500:]}"
    assert "Traceback" not in err
    assert len(lines) == 1, err[-1500:]
    assert lines[0].startswith(f"vital {case.command}: error: "), lines[0]
    assert str(path) in lines[0] or str(path.parent) in lines[0], lines[0]


@pytest.mark.parametrize("kind", ["non-utf8", "empty", "folder"])
def test_a_few_cases_as_real_subprocesses(kind, tmp_path):
    case = next(c for c in CASES if c.command == "eval chat" and c.file.name == "answers")
    path = case.path(tmp_path)
    breakages(case)[kind](path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENAI_API_KEY": "test-key"}
    env.pop("VITAL_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "vital_hub.cli", *case.argv(tmp_path, path)], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ": error: " in ln]
    assert line.startswith(f"vital eval chat: error: {path}")


def test_a_second_different_caption_of_a_figure_is_reported_and_the_first_kept(caplog):
    from vital_hub.figures.captions import collect_captions

    same, other = _caption(0), {**_caption(0), "fig_caption": "Another caption."}
    records = [("chest_xray", 0, same), ("mri", 0, same), ("ct_scan", 0, other), ("gross", 0, _caption(1))]
    captions = collect_captions(records, source="captions.json")
    assert captions[same["pair_id"]]["fig_caption"] == "Caption 0." and len(captions) == 2
    assert (
        "captions.json: 1 figures have a second, different caption; the first one is kept (first: ['30000000_F1'])"
        in caplog.text
    )


def test_an_oversized_value_is_not_sent_and_its_unit_fails_with_the_reason(tmp_path):
    """A 50 MB answer went out as one 13M-token request; here a small limit stands in for the default 128k."""
    from tests.fakes.openai_server import FakeOpenAIServer
    from tests.test_annotate_app import write_items

    items = write_items(tmp_path / "items", count=2)
    rows = [json.loads(line) for line in items.read_text().splitlines()]
    rows[0]["answer_a"] = "very long answer " * 2_000  # about 8,500 tokens
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OPENAI_API_KEY": "test-key"}
    with FakeOpenAIServer() as server:
        done = subprocess.run(
            [sys.executable, "-m", "vital_hub.cli", "judge", "rubric", "--candidates", str(items), "--out",
             str(tmp_path / "judge"), "--model", "m", "--base-url", server.url, "--no-send-images",
             "--max-prompt-tokens", "4000"], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        sent = server.chat_log()
    assert done.returncode == 0, done.stderr[-2000:]
    scores = {
        r["score_id"]: r for r in map(json.loads, (tmp_path / "judge" / "scores.jsonl").read_text().splitlines())
    }
    failed = scores[f"{rows[0]['item_id']}#a"]
    assert failed["status"] == "error" and "over the limit of 4,000 (max_prompt_tokens): not sent" in failed["error"]
    assert len(sent) == len(scores) - 1  # every other unit was judged; the oversized one never left


def _candidates(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _candidate(cid) -> dict:
    return {"candidate_id": cid, "pair_id": "1_F1", "image": "1_F1.jpg", "caption": "c", "mentions": ["m"],
            "domain": {"ct_scan": True}, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "status": "ok"}  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("not parquet", "not a readable parquet file"),
        ("empty", "not a readable parquet file"),
        ("null id", "'candidate_id' must be non-empty text, got None"),
        ("number id", "'candidate_id' must be non-empty text, got 12345"),
        ("duplicate", "duplicate candidate_id"),
        ("no columns", "candidates shard lacks columns"),
        ("null conversations", "'conversations' must be a list of {from, value} turns, got None"),
        ("one turn", "a conversation needs a question and an answer, got 1 turn(s)"),
    ],
)
def test_select_refuses_bad_candidates_before_loading_a_model(tmp_path, capsys, kind, reason):
    path = tmp_path / "candidates.parquet"
    if kind == "not parquet":
        path.write_bytes(b"caf\xe9 not a parquet file\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no columns":
        _candidates(path, [{"x": 1}])
    elif kind in ("null conversations", "one turn"):
        broken = {"null conversations": None, "one turn": [{"from": "human", "value": "q"}]}[kind]
        _candidates(path, [_candidate("a#0"), {**_candidate("a#1"), "conversations": broken}])
    else:
        ids = {"null id": [None, "a#0"], "number id": [12345, 12346], "duplicate": ["a#0", "a#0"]}[kind]
        _candidates(path, [_candidate(cid) for cid in ids])
    argv = [
        "select",
        "--selector",
        str(tmp_path / "no-selector"),
        "--candidates",
        str(path),
        "--out",
        str(tmp_path / "o"),
        "--top",
        "1",
    ]
    assert vital(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"vital select: error: {path}") and reason in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "chat", "--config"],
        ["generate", "candidates", "--config"],
        ["build", "instructions", "--mixtures"],
    ],
)
def test_a_non_utf8_yaml_file_is_named(tmp_path, capsys, argv):
    """--config is an option file: argparse reports it (usage, then the error line, exit 2); --mixtures is input."""
    path = tmp_path / "settings.yaml"
    path.write_bytes(b"judge_model: caf\xe9\n")
    extra = ["--sources", str(tmp_path), "--out", str(tmp_path / "o")] if argv[0] == "build" else []
    try:
        code = vital([*argv, str(path), *extra])
    except SystemExit as stop:
        code = stop.code
    assert code == (2 if argv[-1] == "--config" else 1)
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ": error: " in ln]
    assert line.startswith(
        f"vital {argv[0]} {argv[1]}: error: {path}: not UTF-8 text: byte 0xe9 at offset 16 (line 1)"
    )


@pytest.mark.parametrize(
    ("yaml_text", "reason"),
    [
        ("mixtures:\n  - {name: 80k, components: [{name: llava-med-10k}]}\n",
         "mixture 0 is named '80k', a released config; give yours another name"),
        ("mixtures:\n  - {name: ten, components: [{name: llava-med-10k}]}\n"
         "  - {name: ten, components: [{name: llava-med-10k, fraction: 0.5}]}\n",
         "mixture 1: a mixture named 'ten' is already defined above"),
        ("components:\n  llava-med-10k: {file: mine.json}\n",
         "component 'llava-med-10k' is a built-in component; give yours another name"),
        ("mixtures:\n  - {name: ten, components: [{name: llava-med-10k, fraction: .nan}]}\n",
         "fraction of 'llava-med-10k' must be in (0, 1], got nan"),
        ("mixtures:\n  - {name: ten, components: [{name: llava-med-10k, fraction: half}]}\n",
         "fraction of 'llava-med-10k' in mixture 'ten' must be a number, got 'half'"),
        ("mixtures:\n  - {name: ten, seed: two, components: [{name: llava-med-10k}]}\n",
         "seed of mixture 'ten' must be a whole number >= 0, got 'two'"),
        ("mixtures:\n  - ten\n", "mixture 0 needs a name and components; got 'ten'"),
        ("mixtures: {ten: 1}\n", "'mixtures' must be a list"),
        ("components: [a, b]\n", "'components' must map names to"),
        ("- just\n- a list\n", "expected a mapping with components, mixtures, only; got list"),
        ("only: ten\n", "'only' must be a list of config names"),
        ("[" * 200_000 + "\n", "nested too deeply"),
    ],
)  # fmt: skip
def test_a_mixture_yaml_that_would_change_a_released_name_or_cannot_be_read_is_one_line(
    yaml_text, reason, tmp_path, capsys
):
    spec = tmp_path / "mix.yaml"
    spec.write_text(yaml_text)
    sources = tmp_path / "sources"
    Input("source", llava).write(sources / "llava_med_instruct_10k.json", [llava(n) for n in range(3)])
    code = vital(["build", "instructions", "--sources", str(sources), "--out", str(tmp_path / "repo"), "--mixtures",
                  str(spec), "--allow-unverified", "--workers", "1"])  # fmt: skip
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 1 and "Traceback" not in err
    assert line.startswith(f"vital build instructions: error: {spec}: ") and reason in line, line
    assert not (tmp_path / "repo" / "README.md").exists()


@pytest.mark.parametrize("score", ["-3", "42", "Infinity", "NaN", "1e999"])
def test_a_score_the_judge_cannot_give_is_refused_naming_the_file_and_record(score, tmp_path, capsys):
    scores = tmp_path / "judge" / "scores.jsonl"
    rows = [json.dumps(_score(n)) for n in range(3)]
    rows[1] = rows[1].replace('"score": 5.0', f'"score": {score}')
    scores.parent.mkdir()
    scores.write_text("\n".join(rows) + "\n")
    code = vital(["preferences", "pairs", "--scores", str(scores.parent), "--out", str(tmp_path / "prefs")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().startswith(f"vital preferences pairs: error: {scores}, id '30001_F1#q0#a': score ")
    assert "outside the judge's 0-10" in err and not (tmp_path / "prefs").exists()


def test_an_empty_figures_folder_is_an_error_before_any_request(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    (tmp_path / "figs").mkdir()
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps([_caption(0)]))
    code = vital(["generate", "candidates", "--figures", str(tmp_path / "figs"), "--captions", str(captions),
                  "--out", str(tmp_path / "gen"), "--model", "m", "--base-url", DEAD_SERVER])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip() == (
        f"vital generate candidates: error: {tmp_path / 'figs'} (captions {captions}): no figures found to generate for"
    )
    assert not (tmp_path / "gen").exists()


def _vqa_result(tmp_path: Path, **changes) -> Path:
    result = {"dataset": "vqa-rad", "compat": "llava-med", "open_recall": 50.0, "closed_accuracy": 80.0,
              "counts": {"open": 1, "closed": 1}, "variants": {}, **changes}  # fmt: skip
    path = tmp_path / "vqa-rad.json"
    path.write_text(json.dumps({k: v for k, v in result.items() if v is not None}))
    return path


@pytest.mark.parametrize(
    ("write", "reason"),
    [
        (lambda tmp: _vqa_result(tmp, compat=None), "lacks ['compat']: is this a result of `vital eval vqa-score`?"),
        (lambda tmp: _vqa_result(tmp, counts=None, variants=None), "lacks ['counts', 'variants']"),
        (lambda tmp: (tmp / "vqa-rad.json").write_text("[1, 2]") and tmp / "vqa-rad.json",
         "expected the JSON object `vital eval vqa-score` writes, got list"),
        (lambda tmp: (tmp / "vqa-rad.json").write_text("[" * 200_000) and tmp / "vqa-rad.json", "nested too deeply"),
    ],
)  # fmt: skip
def test_eval_report_names_a_result_file_it_cannot_use(write, reason, tmp_path, capsys):
    path = write(tmp_path)
    code = vital(["eval", "report", "--out", str(tmp_path / "report"), "--model-id", "me/m", "--vqa", str(path)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().startswith(f"vital eval report: error: {path}: ") and reason in err, err


@pytest.mark.parametrize(
    ("cache", "reason"),
    [
        (b'[1, 2, 3]\n{"sha256": "ab", "phash": null}\n', "line 1 is not a hash cache entry"),
        (b'{"phash": "00ff"}\n', "line 1 is not a hash cache entry"),
        (b"caf\xe9\n", "not UTF-8 text: byte 0xe9"),
    ],
)
def test_a_garbage_hash_cache_is_named(cache, reason, tmp_path, capsys):
    _built_repo(tmp_path)
    path = tmp_path / "hashes.jsonl"
    path.write_bytes(cache)
    code = vital(["audit", "contamination", "--train", str(tmp_path / "built"), "--eval", f"qa50={_qa50(tmp_path)}",
                  "--out", str(tmp_path / "audit"), "--workers", "1", "--cache", str(path)])  # fmt: skip
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 1 and "Traceback" not in err
    assert line.startswith(f"vital audit contamination: error: {path}") and reason in line, line


def test_vital_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VITAL_DEBUG", "1")
    (tmp_path / "items.jsonl").write_bytes(b"[" * 200_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        vital(["preferences", "sample", "--candidates", str(tmp_path / "items.jsonl"), "--out", str(tmp_path / "o"),
               "--encoder", "hashing"])  # fmt: skip


@pytest.mark.parametrize("kind", ["hidden_size big", "garbage bin"])
def test_convert_names_a_config_field_of_the_wrong_type_and_a_garbage_shard(kind, tmp_path, capsys):
    from tests.fakes.original_llava import build_clip, build_original

    source = build_original(tmp_path / "original", "llama", vision=True, tower=str(build_clip(tmp_path / "c")))
    if kind == "hidden_size big":
        config = json.loads((source / "config.json").read_text())
        (source / "config.json").write_text(json.dumps({**config, "hidden_size": "big"}))
        where, reason = source / "config.json", "Field 'hidden_size' expected int, got str (value: 'big')"
    else:
        (where,) = source.glob("*.bin")
        where.write_bytes(b"caf\xe9: not a checkpoint")
        reason = "cannot read this checkpoint file: not a PyTorch checkpoint of tensors"
    code = vital(["convert", "llava-original", "--model", str(source), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ": error: " in ln]
    assert code == 1 and "Traceback" not in err and "weights_only" not in err
    assert line.startswith(f"vital convert llava-original: error: {where}") and reason in line, line
    assert not (tmp_path / "out").exists()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims 10 gigapixels: decoding it would take tens of GB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("command", ["eval answer", "eval chat", "generate candidates"])
def test_a_decompression_bomb_figure_is_an_unusable_figure_not_a_crash(command, tmp_path, capsys, monkeypatch):
    from tests.fakes.openai_server import FakeOpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    images, captions, ids = make_figures(tmp_path / "figs", 2)
    (images / f"{ids[0]}.jpg").write_bytes(png_bomb())
    questions = tmp_path / "qa50.jsonl"
    questions.write_text("".join(json.dumps({**qa50_row(n), "image": f"{ids[n]}.jpg"}) + "\n" for n in range(2)))
    with FakeOpenAIServer() as server:
        common = ["--base-url", server.url, "--max-retries", "0"]
        argv = {
            "eval answer": ["eval", "answer", "--backend", "openai", "--questions", str(questions), "--images",
                            str(images), "--out", str(tmp_path / "answers.jsonl"), "--model", "m"],
            "eval chat": ["eval", "chat", "--questions", str(questions), "--answers", str(_answers(tmp_path)),
                          "--out", str(tmp_path / "chat"), "--judge-model", "m", "--attach-image", "--images",
                          str(images)],
            "generate candidates": ["generate", "candidates", "--figures", str(images), "--captions", str(captions),
                                    "--out", str(tmp_path / "gen"), "--model", "m", "--demos",
                                    str(make_demonstrations(tmp_path / "demos.json"))],
        }[command]  # fmt: skip
        code = vital([*argv, *common])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err[-2000:]
    if command == "eval answer":
        rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
        bomb = next(r for r in rows if r["image"] == f"{ids[0]}.jpg")
        assert bomb["image_status"] == "corrupt" and "decompression bomb" in bomb["image_detail"]


# Every command, its main input replaced by something that is not one: each must answer with one error line,
# exit 1 (or argparse's 2), no traceback, no hang. `{bad}` is the broken path; `{tmp}` a scratch folder.
EVERY_COMMAND = {
    "sources verify": ["sources", "verify", "--dir", "{tmp}", "--lock", "{bad}"],
    "build instructions": ["build", "instructions", "--sources", "{tmp}", "--out", "{tmp}/o", "--mixtures", "{bad}"],
    "export llava": ["export", "llava", "--repo", "{bad}", "--config", "80k", "--out", "{tmp}/x.json"],
    "verify": ["verify", "--repo", "{tmp}", "--config", "80k", "--released", "{bad}"],
    "push": ["push", "{bad}", "--to", "me/x"],
    "fetch figures": ["fetch", "figures", "--urls", "{bad}", "--out", "{tmp}/f", "--no-progress"],
    "build figures": ["build", "figures", "--index", "{bad}", "--out", "{tmp}/o"],
    "generate candidates": ["generate", "candidates", "--figures", "{tmp}", "--captions", "{bad}", "--out",
                            "{tmp}/g", "--model", "m", "--base-url", DEAD_SERVER],
    "generate collect": ["generate", "collect", "--out", "{bad}"],
    "generate reference-answers": ["generate", "reference-answers", "--questions", "{bad}", "--out", "{tmp}/r.jsonl",
                                   "--model", "m", "--base-url", DEAD_SERVER],
    "judge rubric": ["judge", "rubric", "--candidates", "{bad}", "--out", "{tmp}/j", "--model", "m", "--base-url",
                     DEAD_SERVER],
    "preferences sample": ["preferences", "sample", "--candidates", "{bad}", "--out", "{tmp}/s.jsonl", "--encoder",
                           "hashing"],
    "preferences build": ["preferences", "build", "--annotations", "{bad}", "--out", "{tmp}/p"],
    "preferences pairs": ["preferences", "pairs", "--scores", "{bad}", "--out", "{tmp}/p"],
    "preferences agreement": ["preferences", "agreement", "--scores", "{bad}", "--repo", "{tmp}"],
    "preferences mix": ["preferences", "mix", "--repo", "{bad}"],
    "annotate serve": ["annotate", "serve", "--items", "{bad}", "--out", "{tmp}/a", "--annotator", "dr_a", "--port",
                       "0"],
    "select": ["select", "--selector", "{tmp}", "--candidates", "{bad}", "--out", "{tmp}/s", "--top", "1"],
    "convert llava-original": ["convert", "llava-original", "--model", "{bad}", "--out", "{tmp}/c"],
    "eval answer": ["eval", "answer", "--backend", "openai", "--questions", "{bad}", "--out", "{tmp}/a.jsonl",
                    "--model", "m", "--base-url", DEAD_SERVER],
    "eval chat": ["eval", "chat", "--reviews", "{bad}", "--out", "{tmp}/c"],
    "eval vqa-prepare": ["eval", "vqa-prepare", "--dataset", "vqa-rad", "--source", "{bad}", "--out", "{tmp}/v"],
    "eval vqa-score": ["eval", "vqa-score", "--questions", "{bad}", "--answers", "{bad}", "--out", "{tmp}/v.json"],
    "eval winrate": ["eval", "winrate", "--questions", "{bad}", "--answers-a", "{bad}", "--answers-b", "{bad}",
                     "--out", "{tmp}/w", "--judge-model", "m", "--base-url", DEAD_SERVER],
    "eval report": ["eval", "report", "--out", "{tmp}/r", "--model-id", "m", "--winrate", "{bad}"],
    "audit contamination": ["audit", "contamination", "--train", "{tmp}", "--eval", "q={bad}", "--out", "{tmp}/a"],
    "options file": ["preferences", "mix", "--repo", "{tmp}", "--config", "{bad}"],
}  # fmt: skip
NOT_AN_INPUT = {
    "garbage": lambda path: path.write_bytes(b"\x00\xff\xe9 garbage \x89PNG"),
    "empty": lambda path: path.write_bytes(b""),
    "deep nesting": lambda path: path.write_bytes(b"[" * 200_000),
    "folder": lambda path: path.mkdir(),
    "symlink loop": symlink_loop,
    "missing": lambda path: None,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("breakage", sorted(NOT_AN_INPUT))
@pytest.mark.parametrize("command", sorted(EVERY_COMMAND))
def test_every_command_answers_a_broken_input_with_one_line(command, breakage, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.delenv("VITAL_DEBUG", raising=False)
    bad = tmp_path / "input.json"
    NOT_AN_INPUT[breakage](bad)
    argv = [arg.replace("{bad}", str(bad)).replace("{tmp}", str(tmp_path)) for arg in EVERY_COMMAND[command]]
    capsys.readouterr()
    try:
        code = vital(argv)
    except SystemExit as stop:  # argparse: an option file it cannot read
        code = stop.code
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert code in (1, 2) and "Traceback" not in err, f"exit {code}: {err[-1500:]}"
    assert len(errors) == 1 and errors[0].startswith(f"vital {argv[0]}"), err[-1500:]
