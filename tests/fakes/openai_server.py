"""A real OpenAI-compatible HTTP server on 127.0.0.1 for offline tests and benchmarks.

It serves chat completions and the files + batches endpoints the Batch API uses, and misbehaves on request:
latency, a requests-per-minute limit answered with 429 + Retry-After, scripted faults per route ("429",
"500", "timeout", "malformed", "empty", "truncated", "400", "401", "403", "404"; "pass" lets one through; with
`echo_credentials` their error bodies quote the key the request carried; with `echo_credentials_in_reply` every
successful chat reply quotes it, Basic credentials of a `user:password@` URL decoded), and it logs every request it received
(route, request key, status, whether the reply reached a live connection) so tests can check that nothing was
paid for twice. The request key is sha256 of the canonical request JSON, the same hash the
client's cache uses.

In a test:   with FakeOpenAIServer(latency_s=0.1) as server: ... server.url ... server.log
As a process (benchmarks): python -m tests.fakes.openai_server --latency 0.5 --rpm 3000   (prints the URL;
GET /_log returns the log as JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

DUAL_MARKER = "Answer 2:"


def request_key(body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def default_reply(body: dict) -> str:
    """A deterministic reply shaped like a vision LLM's: multi-line answers, markup, numbered turns."""
    system = " ".join(m["content"] for m in body.get("messages", []) if m.get("role") == "system")
    seed = int(request_key(body)[:8], 16)
    topic = ["lesion", "opacity", "mass", "nodule", "effusion"][seed % 5]
    if DUAL_MARKER in system:
        return "\n\n".join(
            f"User: Question {n} about the {topic}?\nAnswer 1: First view of round {n}.\nAnswer 2: Second view {n}."
            for n in range(1, 5)
        )
    rounds = []
    for n in range(1, 6):
        rounds.append(
            f"**User:** What does part {n} of the image show?\n\n"
            f"**Assistant:** Part {n} shows a {topic}.\nIt continues on a second line ({seed % 1000})."
        )
    return "\n\n".join(rounds)


@dataclass
class FakeOpenAIServer:
    latency_s: float = 0.0
    requests_per_minute: float | None = None
    faults: dict[str, list[str]] = field(default_factory=dict)  # route -> faults for its next requests
    timeout_sleep_s: float = 30.0
    reply: Callable[[dict], str] = default_reply
    batch_ready_after: int = 0  # retrieves answered "in_progress" before a batch completes
    finish_reason: str = "stop"
    echo_credentials: bool = False  # error bodies quote the key they got, as some servers do on a 401
    echo_credentials_in_reply: bool = False  # successful replies quote it too (a careless or hostile server)
    require_credential: str | None = None  # set: every route answers 401 unless the request carries this credential
    log: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self._files: dict[str, dict] = {}
        self._batches: dict[str, dict] = {}
        self._retrieves: dict[str, int] = {}
        self._lock = threading.Lock()
        self._bucket_level = self._bucket_capacity()
        self._bucket_time = time.monotonic()
        self.port = 0

    # -------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        """The endpoint as Azure clients take it (they add /openai/deployments/<name>/...)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOpenAIServer:
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True, name="fake-openai")
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        if getattr(self, "_loop", None) is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(10)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self, started: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._run(started))
        self._loop.close()

    async def _run(self, started: threading.Event | None) -> None:
        self._stop_event = asyncio.Event()
        runner = web.AppRunner(self.app(), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        if started is not None:
            started.set()
        await self._stop_event.wait()
        await runner.cleanup()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=512 * 1024 * 1024, middlewares=[self._check_credential])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat)  # Azure OpenAI
        app.router.add_post("/v1/files", self.upload_file)
        app.router.add_get("/v1/files/{file_id}", self.file_info)
        app.router.add_get("/v1/files/{file_id}/content", self.file_content)
        app.router.add_post("/v1/batches", self.create_batch)
        app.router.add_get("/v1/batches/{batch_id}", self.retrieve_batch)
        app.router.add_get("/_log", self.get_log)
        return app

    # -------------------------------------------------------------- helpers

    @web.middleware
    async def _check_credential(self, request: web.Request, handler):
        if self.require_credential is not None and self._credential(request) != self.require_credential:
            self._record("auth", request, 401)
            return self._error(401, "missing or wrong credentials")
        return await handler(request)

    def chat_log(self, status: int | None = 200) -> list[dict]:
        return [e for e in self.log if e["route"] == "chat" and (status is None or e["status"] == status)]

    def _next_fault(self, route: str) -> str | None:
        with self._lock:
            queue = self.faults.get(route)
            fault = queue.pop(0) if queue else None
        return None if fault == "pass" else fault

    def _bucket_capacity(self) -> float:
        return max(1.0, self.requests_per_minute / 60.0) if self.requests_per_minute else 0.0

    def _admit(self) -> float | None:
        """None when the rate limit admits a request, else the seconds until it would."""
        if not self.requests_per_minute:
            return None
        rate = self.requests_per_minute / 60.0
        with self._lock:
            now = time.monotonic()
            self._bucket_level = min(self._bucket_capacity(), self._bucket_level + (now - self._bucket_time) * rate)
            self._bucket_time = now
            if self._bucket_level >= 1.0:
                self._bucket_level -= 1.0
                return None
            return (1.0 - self._bucket_level) / rate

    def _record(self, route: str, request: web.Request, status: int, **extra) -> dict:
        transport = request.transport
        entry = {
            "route": route,
            "path": request.path,
            "status": status,
            "delivered": transport is not None and not transport.is_closing(),
            "time": time.time(),
            **extra,
        }
        with self._lock:
            self.log.append(entry)
        return entry

    def _echo(self, request: web.Request) -> str:
        """The credential the request carried, quoted the way a careless server does, when echo_credentials."""
        if not self.echo_credentials:
            return ""
        return f": Incorrect API key provided: {self._credential(request)}"

    @staticmethod
    def _credential(request: web.Request) -> str:
        """The credential a request carried: an api-key header, a Bearer key, or Basic `user:password` decoded."""
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Basic "):
            return base64.b64decode(authorization[6:]).decode("utf-8", "replace")
        return request.headers.get("api-key") or authorization.removeprefix("Bearer ")

    @staticmethod
    def _error(status: int, message: str, headers: dict | None = None) -> web.Response:
        body = {"error": {"message": message, "type": "fake_error", "code": str(status)}}
        return web.json_response(body, status=status, headers=headers)

    def completion(self, body: dict, quoted: str = "") -> dict:
        text = self.reply(body) + (f"\n\n(You called me with {quoted}.)" if quoted else "")
        prompt_tokens = max(1, len(json.dumps(body.get("messages", []))) // 4)
        return {
            "id": f"chatcmpl-{request_key(body)[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": max(1, len(text) // 4),
                "total_tokens": prompt_tokens + max(1, len(text) // 4),
            },
        }

    # -------------------------------------------------------------- routes

    async def chat(self, request: web.Request) -> web.StreamResponse:
        received = time.time()
        body = await request.json()
        key = request_key(body)
        fault = self._next_fault("chat")
        if fault is None and (wait := self._admit()) is not None:
            fault = "429"
            retry_headers = {"retry-after-ms": str(math.ceil(wait * 1000)), "retry-after": str(math.ceil(wait))}
        else:
            retry_headers = {"retry-after-ms": "50", "retry-after": "1"}
        if self.latency_s and fault not in ("429",):
            await asyncio.sleep(self.latency_s)
        if fault == "timeout":
            await asyncio.sleep(self.timeout_sleep_s)
        if fault == "429":
            self._record("chat", request, 429, received=received, key=key)
            return self._error(429, "Rate limit reached (fake)", retry_headers)
        if fault in ("400", "401", "403", "404", "500", "502", "503"):
            self._record("chat", request, int(fault), received=received, key=key)
            return self._error(int(fault), f"fake {fault}{self._echo(request)}")
        if fault == "malformed":
            self._record("chat", request, 200, received=received, key=key, fault=fault)
            return web.Response(text='{"id": "x", "choices": [{"mess', content_type="application/json")
        if fault == "empty":
            self._record("chat", request, 200, received=received, key=key, fault=fault)
            return web.json_response({"id": "x", "object": "chat.completion", "choices": []})
        quoted = self._credential(request) if self.echo_credentials_in_reply else ""
        payload = json.dumps(self.completion(body, quoted)).encode()
        if fault == "truncated":
            self._record("chat", request, 200, received=received, key=key, fault=fault)
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            request.transport.close()
            return response
        self._record("chat", request, 200, received=received, key=key, fault=fault, query=dict(request.query))
        return web.Response(body=payload, content_type="application/json")

    async def upload_file(self, request: web.Request) -> web.Response:
        if (fault := self._next_fault("files")) is not None:
            self._record("files", request, int(fault))
            return self._error(int(fault), f"fake {fault}")
        form = await request.post()
        upload = form["file"]
        data = upload.file.read()
        file_id = f"file-{len(self._files) + 1:04d}"
        info = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": upload.filename,
            "purpose": form.get("purpose", "batch"),
            "status": "processed",
        }
        self._files[file_id] = {"info": info, "data": data}
        self._record("files", request, 200, file_id=file_id)
        return web.json_response(info)

    async def file_info(self, request: web.Request) -> web.Response:
        entry = self._files.get(request.match_info["file_id"])
        return web.json_response(entry["info"]) if entry else self._error(404, "no such file")

    async def file_content(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if (fault := self._next_fault("content")) is not None:
            self._record("content", request, int(fault), file_id=file_id)
            return self._error(int(fault), f"fake {fault}")
        entry = self._files.get(file_id)
        if entry is None:
            return self._error(404, "no such file")
        self._record("content", request, 200, file_id=file_id)
        return web.Response(body=entry["data"], content_type="application/octet-stream")

    async def create_batch(self, request: web.Request) -> web.Response:
        if (fault := self._next_fault("batches")) is not None:
            self._record("batches", request, int(fault))
            return self._error(int(fault), f"fake {fault}")
        spec = await request.json()
        if spec.get("input_file_id") not in self._files:
            return self._error(400, f"unknown input_file_id {spec.get('input_file_id')!r}")
        batch_id = f"batch_{len(self._batches) + 1:04d}"
        lines = self._files[spec["input_file_id"]]["data"].decode().splitlines()
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": spec.get("endpoint"),
            "completion_window": spec.get("completion_window", "24h"),
            "created_at": int(time.time()),
            "input_file_id": spec["input_file_id"],
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "metadata": spec.get("metadata"),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
        }
        self._batches[batch_id] = batch
        self._retrieves[batch_id] = 0
        self._record("batches", request, 200, batch_id=batch_id)
        return web.json_response(batch)

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        batch_id = request.match_info["batch_id"]
        batch = self._batches.get(batch_id)
        if batch is None:
            return self._error(404, "no such batch")
        self._retrieves[batch_id] += 1
        if batch["status"] != "completed":
            if self._retrieves[batch_id] > self.batch_ready_after:
                self._complete_batch(batch)
            else:
                batch["status"] = "in_progress"
        self._record("retrieve", request, 200, batch_id=batch_id)
        return web.json_response(batch)

    def _complete_batch(self, batch: dict) -> None:
        outputs, errors = [], []
        for number, line in enumerate(self._files[batch["input_file_id"]]["data"].decode().splitlines()):
            item = json.loads(line)
            key = request_key(item["body"])
            if "FAIL-IN-BATCH" in json.dumps(item["body"]):
                errors.append(
                    {
                        "id": f"r{number}",
                        "custom_id": item["custom_id"],
                        "response": None,
                        "error": {"code": "server_error", "message": "fake batch failure"},
                    }
                )
                continue
            completion = self.completion(item["body"])
            outputs.append(
                {
                    "id": f"r{number}",
                    "custom_id": item["custom_id"],
                    "error": None,
                    "response": {"status_code": 200, "request_id": key[:12], "body": completion},
                }
            )
            with self._lock:
                self.log.append(
                    {"route": "batch-item", "key": key, "status": 200, "delivered": True, "time": time.time()}
                )
        batch["output_file_id"] = self._store_output(outputs, f"{batch['id']}_output.jsonl")
        batch["error_file_id"] = self._store_output(errors, f"{batch['id']}_errors.jsonl") if errors else None
        batch["status"] = "completed"
        batch["request_counts"] = {
            "total": len(outputs) + len(errors),
            "completed": len(outputs),
            "failed": len(errors),
        }

    def _store_output(self, lines: list[dict], name: str) -> str:
        file_id = f"file-{len(self._files) + 1:04d}"
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        info = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": "batch_output",
            "status": "processed",
        }
        self._files[file_id] = {"info": info, "data": data}
        return file_id

    async def get_log(self, request: web.Request) -> web.Response:
        with self._lock:
            return web.json_response(list(self.log))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--rpm", type=float, default=None)
    args = parser.parse_args()
    server = FakeOpenAIServer(latency_s=args.latency, requests_per_minute=args.rpm)
    server.port = args.port

    async def serve() -> None:
        started = threading.Event()
        task = asyncio.create_task(server._run(started))
        while not started.is_set():
            await asyncio.sleep(0.01)
        print(server.url, flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
