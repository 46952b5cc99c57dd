"""Shared by the annotation app tests: items files, `vital annotate` in a subprocess, accounts made by the CLI."""

import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from tests.conftest import REPO_ROOT


def phantom_png(shade: int) -> bytes:
    """A small synthetic 'scan': an ellipse with two darker blobs."""
    picture = Image.new("L", (160, 120), 10)
    draw = ImageDraw.Draw(picture)
    draw.ellipse((20, 10, 140, 110), fill=shade)
    draw.ellipse((50, 40, 75, 70), fill=shade // 3)
    draw.ellipse((90, 45, 110, 80), fill=shade // 2)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def write_items(folder: Path, count: int = 5) -> Path:
    """An items JSONL file: pictures as files beside it, the last item without any picture."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(count):
        item = {
            "item_id": f"3000{i}_F1#q0",
            "pair_id": f"3000{i}_F1",
            "caption": f"Figure {i}: axial CT, case {i}.",
            "mentions": [f"As shown in Figure {i}, a mass is present.", "It measured 3 cm."],
            "question": f"Question number {i}: what does the image show?",
            "answer_a": f"Answer A{i}: a **well-circumscribed** lesion.\n\n- margin smooth\n- no calcification",
            "answer_b": f"Answer B{i}: <script>window.pwned=1</script> normal anatomy.",
        }
        if i < count - 1:
            (folder / f"3000{i}_F1.png").write_bytes(phantom_png(120 + 25 * i))
            item["image"] = f"3000{i}_F1.png"
        lines.append(json.dumps(item))
    path = folder / "items.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def qa50_items(folder: Path, images: Path, good: int = 3, broken: int = 2) -> tuple[Path, list[str]]:
    """Items from the real qa50 questions whose figures are in `images`: `good` that decode, then `broken`
    whose downloads are empty or cut off, in that order. Returns (items file, each item's figure state in order)."""
    from vital_hub.preferences.items import ImageResolver, Item

    resolver = ImageResolver(images)
    records = [json.loads(line) for line in (images.parent / "llava_med_eval_qa50_qa.jsonl").open()]
    chosen, states = [], []
    for record in records:
        ok = resolver.bytes_for(Item("x", record["pair_id"], "q", "a", "b")) is not None
        if (ok and states.count("ok") < good) or (not ok and states.count("broken") < broken):
            chosen.append(record)
            states.append("ok" if ok else "broken")
    order = sorted(range(len(chosen)), key=lambda i: states[i] != "ok")
    chosen, states = [chosen[i] for i in order], [states[i] for i in order]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "qa50_items.jsonl"
    with path.open("w") as handle:
        for record in chosen:
            item = {
                "item_id": f"{record['pair_id']}#q{record['question_id']}",
                "pair_id": record["pair_id"],
                "caption": record["fig_caption"],
                "question": record["text"].replace("<image>", "").strip(),
                "answer_a": record["gpt4_answer"],
                "answer_b": "The image shows normal tissue with no abnormality.",
            }
            handle.write(json.dumps(item) + "\n")
    return path, states


def vital(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vital_hub.cli", *args],
        capture_output=True,
        text=True,
        env=clean_env(env),
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def clean_env(env: dict | None = None) -> dict:
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def invite(out: Path, name: str, url: str = "http://127.0.0.1:1", admin: bool = False) -> str:
    """`vital annotate add-annotator`; returns the credential from the invite link it prints."""
    result = vital("annotate", "add-annotator", name, "--out", str(out), "--url", url, *(["--admin"] if admin else []))
    assert result.returncode == 0, result.stderr
    link = next(line for line in result.stdout.splitlines() if "#key=" in line)
    return link.split("#key=", 1)[1]


def start_server(items, out: Path, *extra: str, annotator: str | None = None, host="127.0.0.1", env=None):
    """`vital annotate serve` in a subprocess on a free port; returns (process, port) once it listens."""
    command = [sys.executable, "-m", "vital_hub.cli", "annotate", "serve", "--items", str(items), "--out", str(out),
               "--host", host, "--port", "0", *(["--annotator", annotator] if annotator else []), *extra]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(env), cwd=REPO_ROOT
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if "://" in line:
                port = int(line.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                wait_until_listening(host, port)
                return proc, port
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()}")
    proc.kill()
    raise AssertionError("server did not start within 60 s")


def wait_until_listening(host: str, port: int) -> None:
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    for _ in range(100):
        try:
            socket.create_connection((connect_host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)


def stop(proc) -> str:
    """Stop the server; returns everything it wrote (to check that no secret was logged)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return (proc.stdout.read() or "") + (proc.stderr.read() or "")


# What the sign-in page keeps in localStorage and the app's script sends with every API call; HTTP clients that sign
# in with the form do the same (scripts normally use Authorization: Bearer instead).
TEST_BINDING = "test-binding-0123456789abcdef-0123456789"
BOUND = {"X-Vital-Binding": TEST_BINDING}


def login_form(credential: str, **fields) -> dict:
    return {"key": credential, "binding": TEST_BINDING, **fields}


def log_lines(out: Path, annotator: str) -> list[dict]:
    path = out / f"{annotator}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def verdict(item_id: str, index: int, a: bool | None = True, b: bool | None = False, **extra) -> dict:
    return {"index": index, "item_id": item_id, "acceptable_a": a, "acceptable_b": b, **extra}
