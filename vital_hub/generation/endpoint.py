"""Where a model server is and how hard to press it: the client's settings, the options every server-calling
command shares, and the openai (or Azure OpenAI) client made from them.

The API key is read from the environment variable named in the settings when a client is made; it is never stored.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from vital_hub.config import help_field
from vital_hub.generation.failures import FatalAPIError
from vital_hub.redaction import without_credentials


@dataclass
class ClientConfig:
    model: str
    base_url: str | None = None  # else OPENAI_BASE_URL, else OpenAI
    api_key_env: str = "OPENAI_API_KEY"  # read from the environment only, never stored
    azure_api_version: str | None = None  # set -> AzureOpenAI client (base_url is the Azure endpoint)
    concurrency: int = 16
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_retries: int = 6
    timeout_s: float = 120.0
    max_prompt_tokens: int | None = 128_000  # a request whose prompt is estimated above this is never sent
    cache_path: str | None = None  # SQLite request cache; key = sha256 of the whole request JSON

    def __post_init__(self):
        if not self.model:
            raise ValueError("ClientConfig.model is required")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        for name in ("requests_per_minute", "tokens_per_minute", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive or None, got {value}")
        if self.azure_api_version and not self.base_url:
            raise ValueError("an Azure client needs base_url (the resource endpoint)")


@dataclass(kw_only=True)
class ServerOptions:
    """How to reach an OpenAI-compatible server and how hard to press it: the options shared by every command
    that calls one (generation, the rubric judge, the eval judges and answering through a server)."""

    base_url: str | None = help_field("OpenAI-compatible endpoint (else OPENAI_BASE_URL, else OpenAI)", default=None)
    api_key_env: str = help_field("environment variable holding the API key", default="OPENAI_API_KEY")
    azure_api_version: str | None = help_field("use Azure OpenAI with this API version", default=None)
    concurrency: int = help_field("requests in flight", default=16)
    requests_per_minute: float | None = help_field("client-side request rate limit", default=None)
    tokens_per_minute: float | None = help_field("client-side token rate limit", default=None)
    max_retries: int = help_field("retries of 429/5xx/timeouts/malformed replies", default=6)
    timeout_s: float = help_field("seconds per request", default=120.0)
    max_prompt_tokens: int | None = help_field(
        "a request whose prompt is estimated above this many tokens fails unsent (None: no limit)", default=128_000
    )

    def recorded_settings(self, leave_out: tuple[str, ...] = ("api_key_env",)) -> dict:
        """The settings as run.json records them: the endpoint without credentials, nothing secret."""
        settings = {key: value for key, value in dataclasses.asdict(self).items() if key not in leave_out}
        if "base_url" in settings:
            settings["base_url"] = without_credentials(settings["base_url"])
        return settings

    def client_config(self, model: str, cache_path: str | None) -> ClientConfig:
        shared = {item.name: getattr(self, item.name) for item in dataclasses.fields(ServerOptions)}
        return ClientConfig(model=model, cache_path=cache_path, **shared)


def make_openai(config: ClientConfig, asynchronous: bool = True, max_retries: int = 0):
    """An openai (Azure)OpenAI client for the config, the key read from the environment at this moment."""
    import openai

    api_key = os.environ.get(config.api_key_env)
    if not api_key:
        if not (config.base_url or os.environ.get("OPENAI_BASE_URL")):
            raise FatalAPIError(
                f"environment variable {config.api_key_env} is not set: export the API key there "
                "(it is read only from the environment)"
            )
        api_key = "unused"  # self-hosted servers (vLLM, SGLang) usually run without a key
    common = {"api_key": api_key, "max_retries": max_retries, "timeout": config.timeout_s}
    if config.azure_api_version:
        azure = openai.AsyncAzureOpenAI if asynchronous else openai.AzureOpenAI
        return azure(azure_endpoint=config.base_url, api_version=config.azure_api_version, **common)
    plain = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return plain(base_url=config.base_url, **common)
