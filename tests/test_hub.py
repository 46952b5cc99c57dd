"""`vital push` and the Hub helpers against a real local Hub-compatible server (tests/fakes/hub_server.py).

Pushing and loading run in subprocesses: huggingface_hub and datasets read HF_ENDPOINT, HF_HUB_OFFLINE and the
cache locations at import time, so only a fresh interpreter sees the fake Hub as "the Hub".
"""

import hashlib
import json
import os
import secrets
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO_ROOT
from tests.fakes.hub_server import running_hub
from vital_hub.hub import HubError, check_repo_id, dataset_configs, plan_push, redact, resolve_dataset

CONFIGS = ("60k", "80k", "150k", "210k")


@pytest.fixture
def token():
    return f"hf_vitalTest{secrets.token_hex(12)}"


@pytest.fixture
def hub(tmp_path, token):
    with running_hub(tmp_path / "hub_store", token=token) as server:
        yield server


def hub_env(endpoint: str, home: Path, token: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        PYTHONPATH=str(REPO_ROOT),
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run_python(args: list[str], env: dict, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def vital(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return run_python(["-m", "vital_hub.cli", *argv], env)


def files_containing(folder: Path, needle: str) -> list[Path]:
    data = needle.encode()
    return [p for p in folder.rglob("*") if p.is_file() and data in p.read_bytes()]


def small_repo(folder: Path, rows: dict[str, int] | None = None) -> Path:
    """A hand-made dataset repo folder: two components as parquet shards, two configs sharing them."""
    rows = rows or {"alpha": 5, "beta": 3}
    for component, count in rows.items():
        shard = folder / "data" / component / "train-00000-of-00001.parquet"
        shard.parent.mkdir(parents=True, exist_ok=True)
        table = pa.table({"id": [f"{component}-{i}" for i in range(count)], "source": [component] * count})
        pq.write_table(table, shard)
    names = list(rows)
    (folder / "README.md").write_text(
        "---\nconfigs:\n"
        f"- config_name: one\n  data_files:\n  - split: train\n    path: data/{names[0]}/*.parquet\n"
        "- config_name: both\n  data_files:\n  - split: train\n    path:\n"
        + "".join(f"    - data/{name}/*.parquet\n" for name in names)
        + "---\n# test repo\n",
        encoding="utf-8",
    )
    return folder


# ---- build -> push -> load_dataset by repo id


COMPARE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from datasets import Image, List, load_dataset

    repo, repo_id, cache, configs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")

    def rows(dataset):
        return list(dataset.cast_column("images", List(Image(decode=False))))

    report = {}
    for name in configs:
        local = rows(load_dataset(repo, name, split="train", cache_dir=cache + "/local"))
        remote = rows(load_dataset(repo_id, name, split="train", cache_dir=cache + "/hub"))
        streamed = rows(load_dataset(repo_id, name, split="train", streaming=True))
        report[name] = {
            "rows": len(local),
            "ids": [r["id"] for r in local],
            "sources": sorted({r["source"] for r in local}),
            "with_image": sum(1 for r in local if r["images"]),
            "hub_equal": remote == local,
            "stream_equal": streamed == local,
        }
    print(json.dumps(report))
    """
)


def build_instructions_repo(tmp_path: Path) -> tuple[Path, dict]:
    from vital_hub.cli import main as vital_main
    from vital_hub.demo import write_sample_sources

    sample = write_sample_sources(tmp_path / "sample", seed=0)
    repo = tmp_path / "instructions"
    argv = ["build", "instructions", "--sources", str(sample["sources"]), "--images", str(sample["images"])]
    argv += ["--out", str(repo), "--allow-unverified"]
    assert vital_main(argv) == 0
    return repo, json.loads((repo / "manifest.json").read_text())


def test_build_push_then_load_by_repo_id_matches_local_folder(tmp_path, hub, token):
    repo, manifest = build_instructions_repo(tmp_path)
    home = tmp_path / "hf_home"
    env = hub_env(hub.endpoint, home, token)

    pushed = vital(["push", "--repo", str(repo), "--to", "biomed-vital/instructions"], env)
    assert pushed.returncode == 0, pushed.stderr
    assert f"{hub.endpoint}/datasets/biomed-vital/instructions/commit/" in pushed.stdout
    assert "load: datasets.load_dataset('biomed-vital/instructions', '80k')" in pushed.stdout

    with urllib.request.urlopen(f"{hub.endpoint}/api/datasets/biomed-vital/instructions") as public:
        assert json.load(public)["private"] is False  # no --private: readable without a token

    local_files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    remote_files = hub.list_files("biomed-vital/instructions")
    assert sorted(remote_files) == local_files
    parquet = [name for name in remote_files if name.endswith(".parquet")]
    assert len(parquet) >= 4 and all(remote_files[name]["lfs"] for name in parquet)
    assert not remote_files["README.md"]["lfs"]
    for name in parquet + ["README.md", "manifest.json"]:
        assert hub.file_bytes("biomed-vital/instructions", name) == (repo / name).read_bytes()

    hub.tree_page_size = 1  # datasets must follow the tree listing's pages to find every shard
    compared = run_python(
        ["-c", COMPARE_SCRIPT, str(repo), "biomed-vital/instructions", str(tmp_path / "cache"), ",".join(CONFIGS)],
        env,
    )
    assert compared.returncode == 0, compared.stderr[-3000:]
    report = json.loads(compared.stdout.strip().splitlines()[-1])
    tree_calls = [path for method, path in hub.requests if method == "GET" and "/tree/" in path]
    assert len(tree_calls) > len(set(tree_calls))  # some listings took several pages
    for name in CONFIGS:
        assert report[name]["rows"] == manifest["configs"][name]["rows"] > 0
        assert report[name]["hub_equal"], name
        assert report[name]["stream_equal"], name
    assert report["150k"]["ids"][: report["80k"]["rows"]] == report["80k"]["ids"]
    assert report["210k"]["ids"][: report["150k"]["rows"]] == report["150k"]["ids"]
    assert report["210k"]["with_image"] > 0

    for output in (pushed.stdout, pushed.stderr, compared.stdout, compared.stderr):
        assert token not in output
    for folder in (home, repo, tmp_path / "hub_store", tmp_path / "cache"):
        assert files_containing(folder, token) == [], folder


def test_interrupted_push_resumes_without_uploading_again(tmp_path, hub, token):
    repo = small_repo(tmp_path / "repo")
    env = hub_env(hub.endpoint, tmp_path / "hf_home", token)
    hub.fail_commits = 1

    failed = vital(["push", "--repo", str(repo), "--to", "org/small"], env)
    assert failed.returncode == 1
    assert "HTTP 500" in failed.stderr and "re-run the same command to resume" in failed.stderr
    assert hub.lfs_puts == 2  # both shards reached the server before the commit failed
    assert sorted(hub.list_files("org/small")) == []

    resumed = vital(["push", "--repo", str(repo), "--to", "org/small"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert hub.lfs_puts == 2  # nothing uploaded twice
    assert sorted(hub.list_files("org/small")) == [
        "README.md",
        "data/alpha/train-00000-of-00001.parquet",
        "data/beta/train-00000-of-00001.parquet",
    ]

    again = vital(["push", "--repo", str(repo), "--to", "org/small"], env)
    assert again.returncode == 0
    assert hub.lfs_puts == 2
    commits = [path for method, path in hub.requests if method == "POST" and path.endswith("/commit/main")]
    assert len(commits) == 2  # the unchanged third push makes no commit


def test_missing_token_for_remote_endpoint_is_a_clear_error(tmp_path):
    repo = small_repo(tmp_path / "repo")
    env = hub_env("https://hub.example.invalid", tmp_path / "hf_home", token=None)
    result = vital(["push", "--repo", str(repo), "--to", "org/small"], env)
    assert result.returncode == 1
    assert "no Hugging Face token" in result.stderr
    assert "HF_TOKEN" in result.stderr and "hf auth login" in result.stderr


def test_rejected_token_is_reported_without_echoing_it(tmp_path, hub):
    repo = small_repo(tmp_path / "repo")
    wrong = f"hf_wrong{secrets.token_hex(8)}"
    result = vital(["push", "--repo", str(repo), "--to", "org/small"], hub_env(hub.endpoint, tmp_path / "h", wrong))
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr and "token was rejected" in result.stderr
    assert wrong not in result.stderr + result.stdout


def test_model_folder_to_a_branch_with_the_library_api_then_download(tmp_path, hub, token):
    folder = tmp_path / "selector"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden": 8}\n')
    (folder / "model.safetensors").write_bytes(os.urandom(3000))
    (folder / ".model.safetensors.abc.tmp").write_bytes(b"half-written")
    script = textwrap.dedent(
        """
        import sys
        from vital_hub.hub import download_repo, push_folder
        url = push_folder(sys.argv[1], "biomed-vital/selector", repo_type="model", revision="v1", private=True)
        print(url)
        print(download_repo("biomed-vital/selector", repo_type="model", revision="v1", local_dir=sys.argv[2]))
        from huggingface_hub import HfApi
        api = HfApi()
        info = api.model_info("biomed-vital/selector", revision="v1")
        print(sorted(s.rfilename for s in info.siblings), info.private)
        tree = api.list_repo_tree("biomed-vital/selector", revision="v1", recursive=True)
        print(sorted((f.path, f.size, f.lfs is not None) for f in tree))
        paths = api.get_paths_info("biomed-vital/selector", ["model.safetensors", "absent"], revision="v1")
        print([(p.path, p.lfs.sha256 if p.lfs else None) for p in paths])
        """
    )
    env = hub_env(hub.endpoint, tmp_path / "hf_home", token)
    result = run_python(["-c", script, str(folder), str(tmp_path / "downloaded")], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{hub.endpoint}/biomed-vital/selector/commit/" in result.stdout
    on_branch = hub.list_files("biomed-vital/selector", repo_type="model", revision="v1")
    assert sorted(on_branch) == ["config.json", "model.safetensors"]  # the temporary file stayed home
    assert on_branch["model.safetensors"]["lfs"]
    assert hub.list_files("biomed-vital/selector", repo_type="model", revision="main") == {}
    weights = (folder / "model.safetensors").read_bytes()
    assert (tmp_path / "downloaded" / "model.safetensors").read_bytes() == weights
    lines = result.stdout.strip().splitlines()
    assert lines[-3] == "['config.json', 'model.safetensors'] True"
    assert lines[-2] == "[('config.json', 14, False), ('model.safetensors', 3000, True)]"
    assert lines[-1] == f"[('model.safetensors', '{hashlib.sha256(weights).hexdigest()}')]"

    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{hub.endpoint}/api/models/biomed-vital/selector")
    assert anonymous.value.code == 401  # private: not visible without the token


# ---- in-process checks of the helpers (no Hub calls)


def test_plan_push_rejects_what_cannot_be_pushed(tmp_path):
    with pytest.raises(HubError, match="not a folder"):
        plan_push(tmp_path / "absent", "org/name", "dataset", None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HubError, match="no files to push"):
        plan_push(empty, "org/name", "dataset", None)
    (empty / "data.parquet").write_bytes(b"x")
    with pytest.raises(HubError, match="needs a README.md"):
        plan_push(empty, "org/name", "dataset", None)
    with pytest.raises(HubError, match="ORG/NAME"):
        plan_push(small_repo(tmp_path / "ok"), "just-a-name", "dataset", None)
    plan = plan_push(tmp_path / "ok", "org/name", "dataset", "v2")
    assert (plan.files, plan.revision, plan.url.endswith("/datasets/org/name")) == (3, "v2", True)


def test_helpers(tmp_path):
    repo = small_repo(tmp_path / "repo")
    assert dataset_configs(repo) == ["one", "both"]
    assert resolve_dataset(repo) == str(repo)
    assert resolve_dataset("biomed-vital/instructions") == "biomed-vital/instructions"
    with pytest.raises(HubError, match="not a Hub repo id"):
        resolve_dataset(str(tmp_path / "missing" / "deeper"))
    assert check_repo_id("biomed-vital/instructions")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        check_repo_id(str(tmp_path / "figures"))
    assert redact("Bearer hf_abc failed", "hf_abc") == "Bearer <token> failed"


def test_failed_downloads_say_what_is_missing_and_never_show_the_token(tmp_path, hub, token):
    script = textwrap.dedent(
        """
        import sys
        from vital_hub.hub import HubError, download_file, download_repo
        for call in (
            lambda: download_repo("biomed-vital/absent", repo_type="model", local_dir=sys.argv[1]),
            lambda: download_file("biomed-vital/absent", "config.json", sys.argv[1], repo_type="model"),
        ):
            try:
                call()
            except HubError as err:
                print(err)
        """
    )
    result = run_python(["-c", script, str(tmp_path / "out")], hub_env(hub.endpoint, tmp_path / "hf_home", token))
    assert result.returncode == 0, result.stderr[-3000:]
    repo_error, file_error = result.stdout.strip().splitlines()
    assert repo_error.startswith(f"cannot download {hub.endpoint}/biomed-vital/absent: ")
    assert file_error.startswith(f"cannot download config.json from {hub.endpoint}/biomed-vital/absent: ")
    for message in (repo_error, file_error):
        assert "no such repo" in message and token not in message


def test_the_push_plan_counts_exactly_the_files_the_upload_sends(tmp_path):
    folder = tmp_path / "repo"
    kept = ["README.md", "data/a/train-00000-of-00001.parquet", "docs/.hidden-note.md"]
    dropped = [
        "data/a/.train-00000.parquet.x1y2.tmp",  # an atomic write in flight
        ".README.md.tmp",
        "__pycache__/m.cpython-312.pyc",
        "src/__pycache__/m.cpython-312.pyc",
        ".cache/huggingface/download/x.lock",
        ".git/HEAD",
    ]
    for name in kept + dropped:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"12345")
    plan = plan_push(folder, "biomed-vital/x", "dataset", None)
    assert plan.files == len(kept) and plan.bytes == 5 * len(kept)


# ---- what a push leaves home


def training_output(folder: Path) -> dict[str, bytes]:
    """A Trainer output folder as a full fine-tune leaves it: the model at the top, resumable state in checkpoints,
    bookkeeping, a log and tensorboard events beside it."""
    files = {
        "config.json": b'{"model_type": "llava"}\n',
        "model.safetensors": os.urandom(2048),
        "tokenizer.json": b"{}",
        "README.md": b"---\nlicense: apache-2.0\n---\n# model\n",
        "adapter/adapter_config.json": b"{}",
        "trainer_state.json": b"{}",
        "training_args.bin": b"pickle",
        "run.json": b"{}",
        "cache.sqlite": b"SQLite format 3\0",
        "train.log": b"step 1\n",
        "runs/Dec07/events.out.tfevents.1": b"tb",
        "checkpoint-2/model.safetensors": os.urandom(512),
        "checkpoint-2/optimizer.pt": os.urandom(4096),
        "checkpoint-2/scheduler.pt": b"s",
        "checkpoint-2/rng_state_0.pth": b"r",
        "checkpoint-2/trainer_state.json": b"{}",
        "nested/checkpoint-4/optimizer.pt": b"o",
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


MODEL_FILES = ["README.md", "adapter/adapter_config.json", "config.json", "model.safetensors", "tokenizer.json"]


def test_a_model_push_leaves_checkpoints_caches_logs_and_run_files_home(tmp_path, hub, token):
    folder = tmp_path / "sft-out"
    files = training_output(folder)
    env = hub_env(hub.endpoint, tmp_path / "hf_home", token)

    dry = vital(["push", "--repo", str(folder), "--to", "me/sft", "--repo-type", "model", "--dry-run"], env)
    assert dry.returncode == 0, dry.stderr
    listed = [line.split()[-1] for line in dry.stdout.splitlines() if line.startswith(" ") or line[0].isdigit()]
    assert [name for name in listed if name in files][: len(MODEL_FILES)] == MODEL_FILES
    assert "2.0 KB  model.safetensors" in dry.stdout  # sizes shown
    assert "5 files" in dry.stdout and "checkpoint-2/optimizer.pt" in dry.stdout.split("held back")[1]
    assert not any(method in ("POST", "PUT") for method, _ in hub.requests)

    pushed = vital(["push", "--repo", str(folder), "--to", "me/sft", "--repo-type", "model"], env)
    assert pushed.returncode == 0, pushed.stderr
    assert "pushing 5 files" in pushed.stdout and "12 held back" in pushed.stdout
    assert sorted(hub.list_files("me/sft", repo_type="model")) == MODEL_FILES

    asked = ["--include", "checkpoint-*", "--include", "run.json"]
    again = vital(["push", "--repo", str(folder), "--to", "me/sft", "--repo-type", "model", *asked], env)
    assert again.returncode == 0, again.stderr
    assert sorted(hub.list_files("me/sft", repo_type="model")) == sorted(
        [*MODEL_FILES, "run.json", *(name for name in files if name.startswith("checkpoint-2/"))]
    )


def test_library_pushes_use_the_same_rules(tmp_path, hub, token):
    """`push_folder` (a candidates folder, as a dataset) and the recipes' `push_folder_to_hub` (a training output)."""
    candidates = tmp_path / "candidates"
    small_repo(candidates)
    for name in ("cache.sqlite", "cache.sqlite-wal", "run.json", "summary.json"):
        (candidates / name).write_bytes(b"x")
    model = tmp_path / "sft-out"
    training_output(model)
    script = textwrap.dedent(
        """
        import sys
        from vital_hub.hub import push_folder
        from vital_hub.training.card import push_folder_to_hub
        push_folder(sys.argv[1], "me/candidates")
        push_folder_to_hub(sys.argv[2], "me/sft", private=False, message="trained")
        """
    )
    result = run_python(["-c", script, str(candidates), str(model)], hub_env(hub.endpoint, tmp_path / "h", token))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(hub.list_files("me/candidates")) == [
        "README.md",
        "data/alpha/train-00000-of-00001.parquet",
        "data/beta/train-00000-of-00001.parquet",
        "summary.json",
    ]
    assert sorted(hub.list_files("me/sft", repo_type="model")) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
