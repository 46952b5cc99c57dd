"""The one module that talks to the Hugging Face Hub: push repo folders, resolve datasets, download repo files.

Every other stage calls these functions instead of huggingface_hub directly, so the endpoint (`HF_ENDPOINT`), the
token (`HF_TOKEN` or the login file, never an argument, never printed or written) and the way uploads resume are
decided in one place. `upload_folder` is resumable by re-running: files the Hub already holds (LFS objects from an
interrupted push, unchanged files) are not sent again. Training state (checkpoint folders, optimizer, scheduler and
RNG state), caches, logs and run files stay home unless `--include PATTERN` names them; `--dry-run` lists what
would go up.

    vital push out/instructions --to biomed-vital/instructions
    vital push runs/selector --to biomed-vital/selector --repo-type model --revision v1
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from vital_hub.cli_args import DefaultsOnce
from vital_hub.redaction import redact

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_TYPES = ("dataset", "model")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Temporary names that atomic writes leave while a build runs, and caches that never belong in a repo.
RESUME_HINT = "re-run the same command to resume; files already uploaded are skipped"
IGNORE_PATTERNS = ["**/.*.tmp", ".*.tmp", "__pycache__/**", "**/__pycache__/**", ".cache/**"]
# What a training or generation folder holds besides the artifact itself, left home unless `--include` asks for it:
# resumable-training state (whole checkpoint folders, optimizer/scheduler/RNG state, the Trainer's own bookkeeping),
# request caches (the reply cache of a candidates run is ~1 GB at full scale), logs and the job's run files.
PRIVATE_PATTERNS = (
    "checkpoint-*/**", "global_step*/**", "optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt",
    "rng_state*.pth", "trainer_state.json", "training_args.bin",
    "*.sqlite", "*.sqlite-journal", "*.sqlite-wal", "*.sqlite-shm",
    "*.log", "runs/**", "logs/**", "wandb/**", "run.json", "batches/input-*.jsonl",
)  # fmt: skip


class HubError(RuntimeError):
    """A push or download that cannot go on, with a message that says what to do."""


@dataclass(frozen=True)
class PushPlan:
    """What a push will send, shown before uploading so a user sees where the data goes."""

    folder: Path
    repo_id: str
    repo_type: str
    endpoint: str
    revision: str
    files: int
    bytes: int
    upload: tuple[tuple[str, int], ...] = ()  # (path in the repo, size) of every file that goes up
    skipped: tuple[str, ...] = ()  # files held back by PRIVATE_PATTERNS

    @property
    def url(self) -> str:
        return repo_url(self.repo_id, self.repo_type, self.endpoint)


def hub_endpoint() -> str:
    """The Hub endpoint from HF_ENDPOINT (read now, not at import), without a trailing slash."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def is_local_endpoint(endpoint: str) -> bool:
    return (urlsplit(endpoint).hostname or "") in LOCAL_HOSTS


def find_token() -> str | None:
    """The token from HF_TOKEN or the login file written by `hf auth login` (huggingface_hub's own lookup, which
    also cleans stray newlines); None when there is none."""
    from huggingface_hub import get_token

    return get_token()


def repo_url(repo_id: str, repo_type: str = "dataset", endpoint: str | None = None) -> str:
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{endpoint or hub_endpoint()}/{prefix}{repo_id}"


def check_repo_id(repo_id: str) -> str:
    if repo_id.startswith(("/", ".", "~")) or os.sep + os.sep in repo_id or repo_id.count("/") > 1:
        # Commands take "a local folder or a Hub repo id": this one was meant as a path, and it is not there.
        raise FileNotFoundError(f"{repo_id}: no such file or folder (nor is it a Hub repo id ORG/NAME)")
    if not REPO_ID.match(repo_id):
        raise HubError(f"repo id {repo_id!r} must look like ORG/NAME (letters, digits, '.', '_', '-')")
    return repo_id


def plan_push(
    folder: str | Path, repo_id: str, repo_type: str, revision: str | None, include: list[str] | tuple = ()
) -> PushPlan:
    """What `push_folder` sends: every file but temporary files, caches, checkpoint state, logs and run files
    (PRIVATE_PATTERNS), except those matching one of the `include` glob patterns."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"{folder}: not a folder (expected a repo folder, e.g. the --out of `vital build`)")
    if repo_type not in REPO_TYPES:
        raise HubError(f"repo type {repo_type!r} is not one of {', '.join(REPO_TYPES)}")
    files, skipped = _files_to_upload(folder, include)
    if not files:
        hint = f" ({len(skipped)} held back as training state, caches or logs: --include PATTERN)" if skipped else ""
        raise HubError(f"{folder}: no files to push{hint}")
    if repo_type == "dataset" and not (folder / "README.md").exists():
        raise HubError(f"{folder}: a dataset repo needs a README.md (its YAML `configs:` tells datasets what to load)")
    return PushPlan(
        folder=folder,
        repo_id=check_repo_id(repo_id),
        repo_type=repo_type,
        endpoint=hub_endpoint(),
        revision=revision or "main",
        files=len(files),
        bytes=sum(size for _, size in files),
        upload=tuple(files),
        skipped=tuple(skipped),
    )


def is_private_file(name: str, include: list[str] | tuple = ()) -> bool:
    """Whether a repo path is training state, a cache, a log or a run file (at any depth) and not re-admitted by
    one of the `include` patterns (fnmatch globs on the path in the repo, or on its file name)."""
    from fnmatch import fnmatch

    parts = name.split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    private = any(fnmatch(tail, pattern) for tail in tails for pattern in PRIVATE_PATTERNS)
    return private and not any(fnmatch(name, p) or fnmatch(parts[-1], p) for p in include)


def _files_to_upload(folder: Path, include: list[str] | tuple = ()) -> tuple[list[tuple[str, int]], list[str]]:
    """The (path, size) pairs `upload_folder` sends given the same ignore patterns (its defaults: .git, its cache),
    and the paths held back as private."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    kept = sorted(filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS + DEFAULT_IGNORE_PATTERNS))
    skipped = [name for name in kept if is_private_file(name, include)]
    return [(name, files[name].stat().st_size) for name in kept if name not in set(skipped)], skipped


def push_folder(
    folder: str | Path,
    repo_id: str,
    repo_type: str = "dataset",
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    include: list[str] | tuple = (),
) -> str:
    """Create the repo if needed (and the branch, for a revision other than main), upload the folder, and return
    the commit URL. Re-running after an interruption is the resume: objects already on the Hub are skipped.
    `private=None` leaves a new repo's visibility to the namespace default; an existing repo keeps its own.
    Training state, caches, logs and run files stay home unless an `include` pattern names them."""
    plan = plan_push(folder, repo_id, repo_type, revision, include)
    return _push(plan, private=private, commit_message=commit_message)


def _push(plan: PushPlan, private: bool | None, commit_message: str | None) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    commit_message = commit_message or f"Upload {plan.folder.name} with vital push"
    token = find_token()
    if token is None and not is_local_endpoint(plan.endpoint):
        raise HubError(
            f"no Hugging Face token: pushing to {plan.endpoint} needs a write token. "
            "Set HF_TOKEN in the environment or run `hf auth login`."
        )
    api = HfApi(endpoint=plan.endpoint, token=token if token is not None else False)
    xet_note = _xet_note(plan.endpoint)
    if xet_note:
        print(f"note: {xet_note}", file=sys.stderr)
    try:
        api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=private, exist_ok=True)
        if plan.revision != "main":
            api.create_branch(plan.repo_id, branch=plan.revision, repo_type=plan.repo_type, exist_ok=True)
        commit = api.upload_folder(
            repo_id=plan.repo_id,
            folder_path=plan.folder,
            repo_type=plan.repo_type,
            revision=plan.revision,
            commit_message=commit_message,
            ignore_patterns=IGNORE_PATTERNS + [glob.escape(name) for name in plan.skipped],
        )
    except HfHubHTTPError as err:
        raise HubError(_explain_http_error(err, plan, token)) from None
    except (OSError, RuntimeError) as err:  # dropped connections, failed LFS transfers
        if xet_note and "xet" in str(err).lower():
            raise HubError(f"push to {plan.url} failed: {xet_note}") from None
        raise HubError(
            f"push of {plan.folder} to {plan.url} failed: {redact(str(err), token)}\n{RESUME_HINT}"
        ) from err
    return str(commit.commit_url)


def _xet_note(endpoint: str) -> str | None:
    """Hub-compatible servers other than huggingface.co (mirrors, test servers) rarely speak Xet, and
    huggingface_hub uploads with Xet whenever hf_xet is installed; say how to switch it off."""
    import importlib.util

    from huggingface_hub import constants

    xet_on = not constants.HF_HUB_DISABLE_XET and importlib.util.find_spec("hf_xet") is not None
    host = urlsplit(endpoint).hostname or ""
    if not xet_on or host == "huggingface.co" or host.endswith((".huggingface.co", ".hf.co")):
        return None
    return f"{endpoint} is not huggingface.co: if it does not speak Xet, set HF_HUB_DISABLE_XET=1 and re-run"


def _explain_http_error(err, plan: PushPlan, token: str | None) -> str:
    status = err.response.status_code if err.response is not None else None
    detail = redact(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__, token)
    if status == 401:
        hint = "the token was rejected or is missing: set HF_TOKEN to a write token for this namespace"
    elif status == 403:
        hint = f"the token cannot write to {plan.repo_id.split('/')[0]!r}: use a token with write access to it"
    elif status == 404:
        hint = f"{plan.url} or its branch {plan.revision!r} was not found (check --to, --repo-type and HF_ENDPOINT)"
    elif status is not None and (status >= 500 or status == 429):
        hint = RESUME_HINT
    else:
        hint = "the Hub refused the request; see the message above"
    return f"push of {plan.folder} to {plan.url} failed (HTTP {status}): {detail}\n{hint}"


def resolve_dataset(path_or_repo: str | Path) -> str:
    """A local repo folder (returned as a path) or a Hub repo id (returned as is), as `load_dataset` takes them.

    Stages accept either; this says which one a user meant and fails clearly when it is neither, before datasets
    turns a typo into a network error."""
    text = str(path_or_repo)
    if Path(text).exists():
        if not Path(text).is_dir() and not text.endswith((".json", ".jsonl", ".parquet")):
            raise HubError(f"{text}: expected a repo folder, a data file or a Hub repo id ORG/NAME")
        return str(Path(text))
    if REPO_ID.match(text):
        return text
    raise HubError(f"{text}: no such local folder, and not a Hub repo id of the form ORG/NAME")


def download_file(
    repo_id: str,
    filename: str,
    local_dir: str | Path,
    repo_type: str = "dataset",
    revision: str | None = None,
) -> Path:
    """Download one repo file into `local_dir` (same relative path) and return it. An interrupted download
    resumes from the partial file huggingface_hub keeps under `local_dir/.cache`."""
    from huggingface_hub import hf_hub_download

    return _download(
        hf_hub_download, f"{filename} from ", repo_id, repo_type, filename=filename, revision=revision,
        local_dir=local_dir,
    )  # fmt: skip


def download_repo(
    repo_id: str,
    repo_type: str = "dataset",
    revision: str | None = None,
    local_dir: str | Path | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Download (or reuse from the cache) a repo snapshot and return its folder; used for model folders such as
    selector checkpoints, which datasets does not load."""
    from huggingface_hub import snapshot_download

    return _download(
        snapshot_download, "", repo_id, repo_type, revision=revision, local_dir=local_dir,
        allow_patterns=allow_patterns,
    )  # fmt: skip


def _download(fetch, what: str, repo_id: str, repo_type: str, **kwargs) -> Path:
    """Run a huggingface_hub download with this endpoint and token; a failure becomes a HubError that says what
    is missing, with the token redacted."""
    from huggingface_hub.errors import HfHubHTTPError

    endpoint, token = hub_endpoint(), find_token()
    try:
        path = fetch(
            repo_id=check_repo_id(repo_id), repo_type=repo_type, endpoint=endpoint, token=token or False, **kwargs
        )
    except (HfHubHTTPError, OSError) as err:  # not found, refused, offline, connection dropped
        where = repo_url(repo_id, repo_type, endpoint)
        raise HubError(f"cannot download {what}{where}: {_download_failure(err, token)}") from None
    return Path(path)


def model_card_data(repo_id: str, revision: str | None = None) -> tuple[dict, str | None]:
    """The YAML metadata of a Hub model's card, as the Hub parsed it (its `cardData`), and the commit read; {} for
    a repo without card metadata. Offline (HF_HUB_OFFLINE=1), unreachable or refused is a HubError without the
    token in it."""
    from httpx2 import HTTPError  # huggingface_hub 2's HTTP client (a dependency of it): connection failures
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    endpoint, token = hub_endpoint(), find_token()
    try:
        info = HfApi(endpoint=endpoint, token=token or False).model_info(check_repo_id(repo_id), revision=revision)
    except (HfHubHTTPError, HTTPError, OSError) as err:  # not found, refused, offline, no connection
        where = repo_url(repo_id, "model", endpoint)
        reason = _download_failure(err, token).removesuffix("; re-run the same command to resume")
        raise HubError(f"cannot read the card of {where}: {reason}") from None
    data = info.card_data.to_dict() if info.card_data is not None else {}
    return data, info.sha


def _download_failure(err: Exception, token: str | None) -> str:
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(err, RevisionNotFoundError):
        return "no such revision"
    if isinstance(err, EntryNotFoundError):
        return "no such file in the repo"
    if isinstance(err, RepositoryNotFoundError):
        return "no such repo, or it is private or gated and HF_TOKEN does not give access"
    lines = [line for line in str(err).splitlines() if line.strip()]
    detail = " ".join(lines[:2]) if lines else type(err).__name__
    return f"{redact(detail, token)}; re-run the same command to resume"


def dataset_configs(folder: Path) -> list[str]:
    """Config names from a repo folder's README YAML, for the load hint printed after a push."""
    import yaml

    from vital_hub.io import read_card

    try:
        meta, _ = read_card(folder / "README.md")
    except yaml.YAMLError:
        return []
    return [c["config_name"] for c in meta.get("configs", []) if isinstance(c, dict) and "config_name" in c]


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def build_push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        formatter_class=DefaultsOnce,
        prog="vital push",
        description="Upload a repo folder to the Hub (HF_ENDPOINT, HF_TOKEN honoured; re-run to resume).",
    )
    # `vital push FOLDER --to ORG/NAME`: "repo" is the Hub id, as `hf upload` and `push_to_hub` use it; the old
    # `--repo FOLDER` is accepted, hidden, for one release.
    parser.add_argument(
        "folder", nargs="?", metavar="FOLDER", help="the folder to upload (e.g. the --out of vital build)"
    )
    parser.add_argument("--repo", dest="old_folder", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--to", required=True, metavar="ORG/NAME", help="the Hub repo id to push to")
    parser.add_argument(
        "--repo-type", default="dataset", choices=REPO_TYPES, help="the Hub repo's type (default: dataset)"
    )
    parser.add_argument("--private", action="store_true", help="create the repo as private (if it is new)")
    parser.add_argument("--revision", default=None, metavar="BRANCH", help="branch to commit to (created if new)")
    parser.add_argument("--commit-message", default=None, help="commit title (default: Upload <folder> ...)")
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also upload files matching this glob, which are held back by default: checkpoint folders, "
        "optimizer/scheduler/RNG state, trainer_state.json, training_args.bin, *.sqlite caches, logs, run.json "
        "(repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the files that would go up, then stop")
    return parser


def describe_plan(plan: PushPlan) -> str:
    """The dry run's listing: every file that would go up with its size, then what stays home."""
    width = max(len(_human_bytes(size)) for _, size in plan.upload)
    lines = [f"{_human_bytes(size):>{width}}  {name}" for name, size in plan.upload]
    lines.append(f"{plan.files} files, {_human_bytes(plan.bytes)} would go to {plan.url} (branch {plan.revision})")
    if plan.skipped:
        lines.append(f"held back ({len(plan.skipped)}; upload them with --include PATTERN):")
        lines += [f"  {name}" for name in plan.skipped]
    return "\n".join(lines)


def parse_push_args(argv: list[str]) -> argparse.Namespace:
    parser = build_push_parser()
    args = parser.parse_args(argv)
    if (args.folder is None) == (args.old_folder is None):
        parser.error("give the folder to upload once: vital push FOLDER --to ORG/NAME")
    args.repo = args.folder or args.old_folder
    return args


def push_main(argv: list[str]) -> int:
    args = parse_push_args(argv)
    try:
        plan = plan_push(args.repo, args.to, args.repo_type, args.revision, args.include)
        if args.dry_run:
            print(describe_plan(plan))
            return 0
        held = f"; {len(plan.skipped)} held back (training state, caches, logs: --dry-run lists them)"
        print(
            f"pushing {plan.files} files ({_human_bytes(plan.bytes)}) from {plan.folder} "
            f"to {plan.url} (branch {plan.revision}){held if plan.skipped else ''}",
            flush=True,
        )
        commit_url = _push(plan, private=True if args.private else None, commit_message=args.commit_message)
    except HubError as err:
        print(f"vital push: error: {err}", file=sys.stderr)
        return 1
    print(f"committed: {commit_url}")
    print(f"repo: {plan.url}")
    configs = dataset_configs(plan.folder) if plan.repo_type == "dataset" else []
    revision = f", revision={plan.revision!r}" if plan.revision != "main" else ""
    for name in configs:
        print(f"load: datasets.load_dataset({plan.repo_id!r}, {name!r}{revision})")
    return 0
