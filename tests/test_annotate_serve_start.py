"""`vital annotate serve` prints its URL only once it accepts connections: a request sent the moment the line
appears, with no retry, is answered."""

import select
import subprocess
import sys
import time
import urllib.request

from tests.annotate_helpers import clean_env, stop, write_items
from tests.conftest import REPO_ROOT


def test_the_url_line_appears_only_once_the_server_answers(tmp_path):
    items = write_items(tmp_path / "items", count=2)
    command = [sys.executable, "-m", "vital_hub.cli", "annotate", "serve", "--items", str(items),
               "--out", str(tmp_path / "out"), "--port", "0", "--annotator", "dr_lee"]  # fmt: skip
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(None), cwd=REPO_ROOT
    )
    try:
        deadline = time.monotonic() + 60
        line = ""
        while "://" not in line and time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 0.5)[0]:
                line = proc.stdout.readline()
        assert "://" in line, proc.stderr.read() if proc.poll() is not None else "no URL line within 60 s"
        url = "http://" + line.split("://", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=10) as response:  # at once: no retry, no wait
            assert response.status == 200
    finally:
        stop(proc)
