"""Redaction runs in one pass over its text, whatever the text holds, and URLs are recorded without credentials.

Values of many megabytes are fed through it (a hang guard, not a timed assertion: the pattern it replaced took
two minutes over 100,000 characters and never finished 10 MB)."""

import json
import os

import pytest

from tests.annotate_helpers import vital
from vital_hub.redaction import environment_secrets, redact, scrub, url_passwords, without_credentials

MB = 1024 * 1024
LONG_VALUES = {
    "one word": "a" * (10 * MB),
    "schemes without credentials": "x://" * (2 * MB),
    "user parts without a password end": ("://user:" + "p" * 1000) * 5000,
    "colons": ":" * (5 * MB),
    "a URL whose password never ends": "http://u:" + "p" * (5 * MB),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("name", list(LONG_VALUES))
def test_multi_megabyte_values_are_redacted_in_one_pass(name):
    text = LONG_VALUES[name]
    assert redact(text, "sk-not-in-there-0123") == text
    secret = "sk-proj-LONGVALUE-0123456789"
    wrapped = f"{text} {secret} https://bob:pw-{secret[:6]}xyz@host/v1 {text}"
    shown = redact(wrapped, secret)
    assert secret not in shown and "pw-sk-pro" not in shown and "https://bob:<token>@host/v1" in shown
    assert len(shown) < len(wrapped)


def test_url_passwords_are_replaced_and_urls_recorded_without_credentials():
    assert redact("see https://bob:pw123@host/x and http://host:8080/v1") == (
        "see https://bob:<token>@host/x and http://host:8080/v1"
    )
    assert redact("at http://:only-password@host/v1") == "at http://:<token>@host/v1"
    assert without_credentials("http://user:PASSWORD@host:8080/v1?x=1") == "http://host:8080/v1?x=1"
    assert without_credentials("https://u:p@[::1]/v1") == "https://[::1]/v1"
    assert without_credentials("http://host/v1") == "http://host/v1" and without_credentials(None) is None
    assert url_passwords("http://user:p%40ss-word@host/v1") == ["p%40ss-word", "p@ss-word"]
    assert url_passwords("http://host/v1") == []


def test_environment_secrets_include_passwords_of_urls(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy:Env-Url-Password-1@127.0.0.1:9/v1")
    monkeypatch.setenv("DEBUG_FLAG", "1")
    found = environment_secrets(urls=("http://u:Given-Url-Password-2@host/v1", None))
    assert "Env-Url-Password-1" in found and "Given-Url-Password-2" in found and "1" not in found


def test_scrub_redacts_every_string_of_a_reply_however_deep():
    secret = "sk-proj-SCRUB-0123456789"
    reply = {"choices": [{"message": {"content": f"your key is {secret}"}}], "usage": {"n": 3}}
    nested = current = {}
    for _ in range(5000):
        current["k"] = [{}]
        current = current["k"][0]
    current["leak"] = secret
    cleaned = scrub({"reply": reply, "nested": nested}, [secret])
    assert secret not in json.dumps(cleaned["reply"]) and cleaned["reply"]["usage"] == {"n": 3}
    assert reply["choices"][0]["message"]["content"].endswith(secret)  # the input is left as it was
    current = cleaned["nested"]
    while "k" in current:
        current = current["k"][0]
    assert current["leak"] == "<token>"


@pytest.mark.timeout(60)
def test_an_error_naming_a_multi_megabyte_id_is_printed_at_once(tmp_path):
    """A duplicate item id of 4 MB: the one error line goes through redaction and comes out, exit 1."""
    huge = "p" * (4 * MB)
    items = tmp_path / "items.jsonl"
    record = {"item_id": huge, "pair_id": "x", "question": "q", "answer_a": "a", "answer_b": "b"}
    items.write_text((json.dumps(record) + "\n") * 2)
    env = dict(os.environ, SOME_SERVICE_TOKEN="tok-abcdefgh-123")
    env.pop("VITAL_DEBUG", None)
    done = vital("annotate", "serve", "--items", str(items), "--out", str(tmp_path / "out"), "--annotator", "a",
                 env=env)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "duplicate item id" in errors[0]
