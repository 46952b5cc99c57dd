"""ChatClient against a real local OpenAI-compatible server: retries, fail-fast errors, cache, limits, cost."""

import asyncio
import time

import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from vital_hub.generation.batch import with_retries
from vital_hub.generation.cache import RequestCache, request_key
from vital_hub.generation.client import ChatClient, ClientConfig, FatalAPIError, is_retryable, make_openai
from vital_hub.generation.limits import Limiter, TokenBucket, estimate_tokens, image_tokens
from vital_hub.generation.pricing import Price, PriceTable, load_prices


@pytest.fixture
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-123")
    return "sk-test-secret-123"


@pytest.fixture
def server():
    with FakeOpenAIServer() as running:
        yield running


def requests(count: int, tag: str = "q") -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"{tag} {n}"}], "max_tokens": 50} for n in range(count)]


def client_for(server, tmp_path, **overrides) -> ChatClient:
    settings = {"model": "gpt-4o", "base_url": server.url, "cache_path": str(tmp_path / "cache.sqlite"), **overrides}
    return ChatClient(ClientConfig(**settings))


def test_results_in_order_with_usage_and_cost(server, tmp_path, api_key):
    client = client_for(server, tmp_path, concurrency=4)
    results = client.chat_many(requests(6), desc="t")
    assert [r.key for r in results] == [client.key_of(q) for q in requests(6)]
    assert all(r.status == "ok" and r.text.startswith("**User:**") and not r.cached for r in results)
    logged = {e["key"] for e in server.chat_log()}
    assert logged == {r.key for r in results}
    first = results[0]
    assert first.cost_usd == pytest.approx((first.prompt_tokens * 2.5 + first.completion_tokens * 10) / 1e6)
    assert client.stats.sent == 6 and client.stats.cost_usd == pytest.approx(sum(r.cost_usd for r in results))


def test_cache_answers_repeats_without_the_server(server, tmp_path, api_key):
    client_for(server, tmp_path).chat_many(requests(3))
    again = client_for(server, tmp_path).chat_many(requests(4))
    assert [r.cached for r in again] == [True, True, True, False]
    assert len(server.chat_log()) == 4
    assert again[0].cost_usd is not None  # what the cached reply cost is kept


def test_identical_requests_in_flight_are_sent_once(server, tmp_path, api_key):
    results = client_for(server, tmp_path, concurrency=4).chat_many(requests(1) * 3)
    assert len(server.chat_log()) == 1
    assert [r.cached for r in results] == [False, True, True] and len({r.text for r in results}) == 1


def test_azure_deployment_endpoint(server, tmp_path, api_key):
    config = ClientConfig(model="my-gpt4o", base_url=server.root, azure_api_version="2024-10-21")
    [result] = ChatClient(config).chat_many(requests(1))
    [entry] = server.chat_log()
    assert result.ok and entry["path"] == "/openai/deployments/my-gpt4o/chat/completions"
    assert entry["query"] == {"api-version": "2024-10-21"}


def test_api_key_is_never_written_to_the_cache(server, tmp_path, api_key):
    client_for(server, tmp_path).chat_many(requests(2))
    for path in tmp_path.glob("cache.sqlite*"):
        assert api_key.encode() not in path.read_bytes()


@pytest.mark.parametrize("fault", ["429", "500", "503", "timeout", "malformed", "empty", "truncated"])
def test_retryable_faults_are_retried_until_answered(tmp_path, api_key, fault):
    with FakeOpenAIServer(faults={"chat": [fault, fault]}, timeout_sleep_s=1.5) as fake:
        client = client_for(fake, tmp_path, timeout_s=0.5)
        [result] = client.chat_many(requests(1))
    assert result.status == "ok" and result.text
    assert client.stats.retries == 2
    assert len(RequestCache(tmp_path / "cache.sqlite")) == 1


def test_retry_after_is_honoured(tmp_path, api_key):
    with FakeOpenAIServer(requests_per_minute=60) as fake:  # one request per second, burst of one
        client = client_for(fake, tmp_path, concurrency=2)
        results = client.chat_many(requests(2))
        times = sorted(e["time"] for e in fake.chat_log())
        refused = fake.chat_log(429)
    assert all(r.ok for r in results)
    assert refused, "the second request should have met the rate limit"
    assert times[1] - times[0] >= 0.9  # the retry waited for the server's Retry-After


def test_giving_up_records_an_error(tmp_path, api_key):
    with FakeOpenAIServer(faults={"chat": ["500"] * 3}) as fake:
        [result] = client_for(fake, tmp_path, max_retries=2).chat_many(requests(1))
    assert result.status == "error" and "gave up after 3 attempts: HTTP 500" in result.error
    assert result.text is None and len(RequestCache(tmp_path / "cache.sqlite")) == 0


def test_bad_request_fails_that_request_without_retry(tmp_path, api_key):
    with FakeOpenAIServer(faults={"chat": ["400"]}) as fake:
        client = client_for(fake, tmp_path, concurrency=1)
        results = client.chat_many(requests(2))
        assert len(fake.log) == 2
    assert results[0].status == "error" and results[0].error == "HTTP 400: fake 400"
    assert results[1].ok


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("401", "the API key was rejected: check the environment variable OPENAI_API_KEY"),
        ("403", "has no access to model 'gpt-4o'"),
        ("404", "model 'gpt-4o' or the chat completions endpoint was not found"),
    ],
)
def test_auth_and_missing_model_stop_the_run(tmp_path, api_key, fault, message):
    with FakeOpenAIServer(faults={"chat": [fault]}) as fake:
        client = client_for(fake, tmp_path, concurrency=1)
        with pytest.raises(FatalAPIError, match=message):
            client.chat_many(requests(3))
        assert len(fake.log) == 1


def test_missing_key_for_openai_says_which_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    client = ChatClient(ClientConfig(model="gpt-4o", api_key_env="MY_KEY"))
    with pytest.raises(FatalAPIError, match="environment variable MY_KEY is not set"):
        client.chat_many(requests(1))


def test_model_in_request_is_refused(server, tmp_path, api_key):
    with pytest.raises(ValueError, match="must not name the model"):
        asyncio.run(client_for(server, tmp_path).chat({"model": "x", "messages": []}))


def test_chat_many_inside_a_running_loop(server, tmp_path, api_key):
    client = client_for(server, tmp_path)

    async def caller():
        return client.chat_many(requests(2))

    assert all(r.ok for r in asyncio.run(caller()))


def test_cache_key_covers_the_whole_request():
    body = {"model": "m", "messages": [{"role": "user", "content": "a"}], "max_tokens": 5}
    assert request_key(body) == request_key(dict(reversed(body.items())))
    assert request_key(body) != request_key({**body, "max_tokens": 6})
    assert request_key(body) != request_key({**body, "model": "n"})


def test_cache_survives_reopening_and_keeps_batch_jobs(tmp_path):
    cache = RequestCache(tmp_path / "c.sqlite")
    cache.put("k", {"choices": []}, source="batch")
    cache.add_batch_job("batch_1", "file-1", ["k", "j"], "validating")
    cache.close()
    reopened = RequestCache(tmp_path / "c.sqlite")
    assert reopened.get("k") == ({"choices": []}, "batch") and reopened.get("x") is None
    assert reopened.batch_jobs(pending_only=True)[0]["keys"] == ["k", "j"]
    reopened.mark_batch("batch_1", "completed", collected=True)
    assert reopened.batch_jobs(pending_only=True) == []


def test_token_estimates_follow_the_tile_rule():
    assert image_tokens("https://x/y.jpg", "low") == 85
    assert image_tokens("https://x/y.jpg", None) == 85 + 170 * 4  # unknown size: 1024 x 1024
    body = {"messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 100}
    assert estimate_tokens(body) == 4 + 10 + 100


def test_request_bucket_spaces_requests():
    async def measure():
        limiter = Limiter(concurrency=8, requests_per_minute=600)  # 10/s, burst of 5
        start = time.monotonic()
        for _ in range(10):
            async with limiter.slot(0):
                pass
        return time.monotonic() - start

    assert asyncio.run(measure()) >= 0.45  # five admitted at once, five more at 10/s


def test_token_bucket_settles_estimates():
    async def run():
        bucket = TokenBucket(rate_per_s=100)
        await bucket.take(40)
        bucket.give_back(30)
        return bucket.level

    assert asyncio.run(run()) == pytest.approx(40, abs=1)


def test_price_table_prefixes_batch_discount_and_files(tmp_path):
    table = PriceTable()
    assert table.lookup("gpt-4o-2024-08-06") == table.lookup("gpt-4o")
    assert table.lookup("gpt-4o-mini-2024") == Price(0.15, 0.60)
    assert table.cost("unknown-model", 10, 10) is None
    assert table.cost("gpt-4o", 1_000_000, 0, batch=True) == pytest.approx(1.25)
    path = tmp_path / "prices.yaml"
    path.write_text("local-vlm: {input_per_million: 0, output_per_million: 0}\n")
    assert PriceTable(load_prices(path)).cost("local-vlm", 100, 100) == 0.0
    path.write_text("bad: {input: 1}\n")
    with pytest.raises(ValueError, match="price of 'bad' must give input_per_million"):
        load_prices(path)


@pytest.mark.parametrize(("fault", "retried"), [("409", True), ("429", True), ("503", True), ("400", False)])
def test_batch_control_calls_follow_the_chat_retry_rules(tmp_path, api_key, fault, retried):
    assert is_retryable(int(fault)) is retried
    with FakeOpenAIServer(faults={"files": [fault]}) as fake:
        config = ClientConfig(model="gpt-4o", base_url=fake.url)
        api, redact = make_openai(config, asynchronous=False), ChatClient(config).redact

        def upload():
            return api.files.create(file=("input.jsonl", b"{}\n"), purpose="batch")

        if retried:
            assert with_retries(upload, "upload input.jsonl", redact).id
        else:
            with pytest.raises(FatalAPIError, match=f"upload input.jsonl failed: HTTP {fault}: fake {fault}"):
                with_retries(upload, "upload input.jsonl", redact)
        assert [e["status"] for e in fake.log if e["route"] == "files"] == [int(fault), 200][: 1 + retried]


def test_token_estimate_only_with_a_token_limit(server, tmp_path, api_key, monkeypatch):
    import vital_hub.generation.client as client_module

    estimated = []
    monkeypatch.setattr(client_module, "estimate_tokens", lambda body: estimated.append(body) or estimate_tokens(body))
    client_for(server, tmp_path).chat_many(requests(2))
    assert estimated == []
    client_for(server, tmp_path, tokens_per_minute=1_000_000).chat_many(requests(2, tag="t"))
    assert len(estimated) == 2


def test_an_oversized_prompt_fails_unsent_with_the_reason(server, tmp_path, api_key):
    client = client_for(server, tmp_path, max_prompt_tokens=100)
    big = {"messages": [{"role": "user", "content": "x" * 4_000}], "max_tokens": 50}
    small, oversized = client.chat_many([requests(1)[0], big])
    assert small.ok and not oversized.ok
    assert oversized.error == "prompt of about 1,004 tokens is over the limit of 100 (max_prompt_tokens): not sent"
    assert len(server.chat_log()) == 1  # only the small one went out
    assert client_for(server, tmp_path, max_prompt_tokens=None).chat_many([big])[0].ok  # None: no limit
