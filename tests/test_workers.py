"""Worker processes die with their parent, their errors cross the process boundary, one run holds a folder."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from tests.conftest import REPO_ROOT
from tests.test_build_crash import processes_mentioning
from vital_hub.sources import ChecksumMismatch
from vital_hub.workers import FolderInUse, WorkerCrash, WorkerInputError, call_portably, folder_lock


def _raise(err: Exception):
    raise err


def _raise_mismatch(path: str):
    raise ChecksumMismatch(path, "aa", "bb", "registry")  # made in the worker: it could not be sent there either


def test_an_unpicklable_error_reaches_the_parent_with_its_kind_and_message():
    with ProcessPoolExecutor(max_workers=1) as pool:
        with pytest.raises(WorkerInputError, match="/data/x.json: sha256 mismatch: expected aa"):
            pool.submit(call_portably, _raise_mismatch, "/data/x.json").result()
        with pytest.raises(KeyError):  # a picklable error is passed on as it is
            pool.submit(call_portably, _raise, KeyError("k")).result()
        assert pool.submit(call_portably, len, "abc").result() == 3


def test_other_unpicklable_errors_become_a_crash_naming_their_class():
    class Odd(RuntimeError):
        def __init__(self, a, b):
            super().__init__(f"{a}/{b}")

    with pytest.raises(WorkerCrash, match="Odd: 1/2"):
        call_portably(_raise, Odd(1, 2))


def test_the_folder_lock_refuses_a_second_holder_and_is_gone_after(tmp_path):
    with folder_lock(tmp_path, "vital x"):
        script = f"from vital_hub.workers import folder_lock\nwith folder_lock(__import__('pathlib').Path({str(tmp_path)!r}), 'vital x'): pass"
        other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
        assert other.returncode == 1 and f"FolderInUse: {tmp_path} is in use by another `vital x`" in other.stderr
    assert not (tmp_path / ".vital.lock").exists()
    with folder_lock(tmp_path, "vital x"):  # free again
        pass
    assert issubclass(FolderInUse, OSError)  # so the `vital` entry point reports it as one line


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_dataloader_workers_die_with_their_killed_parent(tmp_path):
    """The `vital select` decoders: torch's own watchdog only notices a dead parent between items."""
    marker = f"worker-death-check-{tmp_path.name}"
    script = textwrap.dedent(
        """
        import os, sys, time
        import torch
        from torch.utils.data import DataLoader, Dataset
        from vital_hub.workers import torch_worker_init

        class Slow(Dataset):
            def __len__(self):
                return 100
            def __getitem__(self, index):
                time.sleep(30)  # one slow figure
                return index

        loader = DataLoader(Slow(), num_workers=2, worker_init_fn=torch_worker_init(os.getpid()))
        iterator = iter(loader)
        print("started", flush=True)
        next(iterator)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, marker], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert process.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 30
    while len(processes_mentioning(marker)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(processes_mentioning(marker)) == 3  # the parent and its two workers
    time.sleep(0.5)  # the workers are inside __getitem__
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.monotonic() + 3
    while processes_mentioning(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_mentioning(marker)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_parent_death_signal_is_armed():
    """The kernel, not only the watcher thread, kills a worker whose parent dies."""
    script = (
        "import ctypes, os\nfrom vital_hub.workers import die_with_parent\ndie_with_parent(os.getppid())\n"
        "value = ctypes.c_int()\nctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)\nprint(value.value)"
    )  # 2 = PR_GET_PDEATHSIG
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    assert done.stdout.strip() == str(int(signal.SIGKILL)), done.stderr
