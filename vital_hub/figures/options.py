"""What `vital fetch figures` is asked to do: its options (`FetchConfig`), the HTTP client's settings
(`HttpOptions`) and the shard (`Shard`); and the options of `vital build figures` (`BuildOptions`).

Kept apart from the pipeline, the HTTP client and the index so that parsing the command line (`--help`, a bad
flag) imports neither aiohttp nor pyarrow.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from vital_hub.config import help_field
from vital_hub.figures.resolve import DEFAULT_BUCKET
from vital_hub.figures.safety import Limits

MiB = 1 << 20
# Options that change what a figure's row or file is; the others (speed, retries, progress) do not.
RESULT_OPTIONS = (
    "base_url", "legacy_base_url", "licence", "legacy", "max_image_mb", "max_pixels", "max_archive_mb",
    "max_unpacked_mb", "max_held_mb",
)  # fmt: skip


@dataclass(frozen=True)
class HttpOptions:
    concurrency: int = 32
    requests_per_second_per_host: float = 1000.0  # the ceiling: halved on each 503 Slow Down, regained on success
    max_retries: int = 6
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0
    timeout_s: float = 60.0


@dataclass(frozen=True)
class Shard:
    """`--shard I/N`: shard I (0-based) of N."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError as err:
            raise ValueError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from err
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"--shard {text}: need 0 <= I < N (shards are numbered from 0)")
        return cls(index, count)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}"

    def holds(self, pmcid: str) -> bool:
        digest = hashlib.sha256(pmcid.encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index


@dataclass
class FetchConfig:
    """Everything `vital fetch figures` needs; YAML (`--config`) then command-line flags override the defaults.

    The HTTP and safety defaults are those of `HttpOptions` and `Limits`, in this command's units (MB, not bytes).
    """

    urls: str = help_field("JSONL of image URL records (legacy or new format)")
    out: str = help_field("folder for <pair_id>.jpg files and index/")
    base_url: str = help_field("bucket root", default=DEFAULT_BUCKET)
    legacy_base_url: str | None = help_field(
        "replaces scheme and host of pmc_tar_url (a mirror or a local server)", default=None
    )
    concurrency: int = help_field("requests in flight at once (one connection pool)", default=HttpOptions.concurrency)
    rate_limit: float = help_field(
        "requests per second per host: the most, halved on each 503 Slow Down and regained on success (0 = unlimited)",
        default=HttpOptions.requests_per_second_per_host,
    )
    max_retries: int = help_field(
        "retries on 429, 5xx, timeouts and truncated bodies", default=HttpOptions.max_retries
    )
    backoff_base: float = help_field(
        "first backoff in seconds (doubles, with jitter)", default=HttpOptions.backoff_base_s
    )
    backoff_max: float = help_field("longest backoff in seconds", default=HttpOptions.backoff_max_s)
    timeout: float = help_field("connect and read timeout in seconds", default=HttpOptions.timeout_s)
    shard: str = help_field("I/N: fetch shard I (0-based) of N", default="0/1")
    retry_failed: bool = help_field("retry figures whose status is not ok", default=False)
    licence: bool = help_field("read article metadata for the licence of every figure", default=True)
    legacy: bool = help_field("fall back to legacy tarballs", default=True)
    max_image_mb: float = help_field("largest image file accepted", default=Limits.max_image_bytes / MiB)
    max_pixels: int = help_field("largest image accepted, in pixels", default=Limits.max_pixels)
    max_archive_mb: float = help_field("largest tarball downloaded", default=Limits.max_archive_bytes / MiB)
    max_unpacked_mb: float = help_field(
        "most bytes unpacked from one tarball", default=Limits.max_unpacked_bytes / MiB
    )
    max_held_mb: float = help_field(
        "most bytes of wanted figures kept from one tarball", default=Limits.max_held_bytes / MiB
    )
    progress: bool = help_field("show a progress bar", default=True)

    def __post_init__(self):
        Shard.parse(self.shard)  # a bad --shard is an error here, before any work
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.max_retries < 0:
            raise ValueError("max_retries cannot be negative")

    @property
    def shard_spec(self) -> Shard:
        """The `--shard I/N` option as a Shard (checked once in __post_init__)."""
        return Shard.parse(self.shard)

    def limits(self) -> Limits:
        return Limits(
            max_image_bytes=int(self.max_image_mb * MiB),
            max_pixels=self.max_pixels,
            max_archive_bytes=int(self.max_archive_mb * MiB),
            max_unpacked_bytes=int(self.max_unpacked_mb * MiB),
            max_held_bytes=int(self.max_held_mb * MiB),
        )

    def http_options(self) -> HttpOptions:
        return HttpOptions(
            concurrency=self.concurrency,
            requests_per_second_per_host=self.rate_limit,
            max_retries=self.max_retries,
            backoff_base_s=self.backoff_base,
            backoff_max_s=self.backoff_max,
            timeout_s=self.timeout,
        )


@dataclass(frozen=True)
class BuildOptions:
    index: str = help_field("the --out folder of `vital fetch figures`")
    out: str = help_field("dataset repo folder to write (README.md + data/figures/)")
    captions: str | None = help_field("llava_med_instruct_fig_captions.json ({domain: [records]})", default=None)
    images: str | None = help_field("folder of <pair_id>.jpg (default: the --index folder)", default=None)
    shard_mb: float = help_field("target parquet shard size in MB", default=256.0)
    allow_incomplete: bool = help_field("build even if a fetch shard is unfinished", default=False)
    workers: int = help_field(
        "processes computing the figures' perceptual hashes", default=min(os.cpu_count() or 1, 8)
    )
