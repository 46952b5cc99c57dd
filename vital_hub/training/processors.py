"""Processors of every supported family, with or without torchvision.

Most 2026 processors (Qwen2.5-VL, Qwen3-VL, SmolVLM, InternVL, LLaVA-OneVision) bundle a video processor, and
transformers builds video processors only with torchvision. Training on figures needs none of it: where
torchvision is absent, the processor is loaded as its image-only variant, the same class with the video
processor left out, and the Pillow-backed image processor transformers ships. Saved again, it writes the
original class name and the video processor settings it was loaded with (transformers 5 keeps them inside
`processor_config.json`, older folders in `video_preprocessor_config.json`), so the saved folder is the one the
original processor would save, and loads with the stock `AutoProcessor` wherever torchvision is installed.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import inspect
import json
import types
from pathlib import Path

VIDEO = "video_processor"


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


@functools.cache
def image_only(processor_class: type) -> type:
    """`processor_class` without its video processor (same name, same behaviour on text and images).

    transformers reads a processor's sub-processors from its `__init__` signature and passes saved settings
    (`image_seq_length`, `num_image_tokens`, ...) back by the argument names of its code object, so the
    image-only `__init__` is a real function with the original's arguments, less `video_processor`.
    """
    original = inspect.signature(processor_class.__init__)
    kept = [p for p in original.parameters.values() if p.name not in ("self", VIDEO)]
    if any(p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL) for p in kept):
        raise TypeError(f"{processor_class.__name__}: cannot derive an image-only processor from {original}")
    defaults = {p.name: p.default for p in kept if p.default is not p.empty}
    named = [p for p in kept if p.kind is not p.VAR_KEYWORD]
    header = ", ".join(f"{p.name}=_defaults[{p.name!r}]" if p.name in defaults else p.name for p in named)
    passed = ", ".join(f"{p.name}={p.name}" for p in named)
    source = f"def __init__(self, {header}, **kwargs):\n    _original(self, {passed}, {VIDEO}=None, **kwargs)\n"
    scope = {"_defaults": defaults, "_original": processor_class.__init__}
    exec(compile(source, f"<image-only {processor_class.__name__}>", "exec"), scope)  # noqa: S102
    # A class attribute, so that it is neither saved nor counted as a sub-processor: some processors read video
    # defaults in apply_chat_template even for conversations without video (SmolVLM reads num_frames and fps).
    absent = types.SimpleNamespace(num_frames=None, fps=None)
    namespace = {"__init__": scope["__init__"], "__module__": processor_class.__module__, VIDEO: absent,
                 "image_only": True, "kept_video_settings": None, "to_dict": _to_dict_with_kept_video}  # fmt: skip
    # Placed after the family's class in the method order, so that its `super().__init__(..., video_processor=...)`
    # (Gemma 4 passes it by name, which ProcessorMixin refuses for an attribute it no longer has) drops the video.
    return type(processor_class.__name__, (processor_class, _without_video()), namespace)


@functools.cache
def _without_video():
    """A ProcessorMixin step that drops `video_processor=None` before ProcessorMixin checks its arguments."""
    from transformers import ProcessorMixin

    class WithoutVideo(ProcessorMixin):
        def __init__(self, *args, **kwargs):
            if VIDEO in kwargs and kwargs[VIDEO] is None:
                del kwargs[VIDEO]
            super().__init__(*args, **kwargs)

    return WithoutVideo


def _to_dict_with_kept_video(self) -> dict:
    """The processor's settings as saved, with the video processor settings of the folder it was loaded from."""
    output = super(type(self), self).to_dict()
    if self.kept_video_settings is not None:
        output[VIDEO] = copy.deepcopy(self.kept_video_settings)
    return output


def takes_video(processor_class: type) -> bool:
    return VIDEO in processor_class.get_attributes()


def saved_config(path: str | Path, name: str, revision: str | None = None) -> dict | None:
    """A JSON settings file of a local folder or Hub repo (`processor_config.json`, ...), or None where absent."""
    from huggingface_hub import hf_hub_download

    local = Path(path) / name
    try:
        config_file = local if Path(path).is_dir() else hf_hub_download(str(path), name, revision=revision)
        return json.loads(Path(config_file).read_text(encoding="utf-8"))
    except Exception:  # no such file: the processor is described by its sub-processors' files alone
        return None


def processor_class_of(path: str | Path, revision: str | None = None) -> type | None:
    """The processor class a local folder or Hub repo names in its processor_config.json, if any."""
    import transformers

    name = (saved_config(path, "processor_config.json", revision) or {}).get("processor_class")
    return getattr(transformers, name, None) if name else None


def video_settings(path: str | Path, revision: str | None = None) -> dict | None:
    """The video processor settings a folder or repo holds: inside processor_config.json (how transformers 5
    saves them) or in the older separate video_preprocessor_config.json; None where it has none."""
    inside = (saved_config(path, "processor_config.json", revision) or {}).get(VIDEO)
    if isinstance(inside, dict):
        return inside
    return saved_config(path, "video_preprocessor_config.json", revision)


def has_video_config(path: str | Path, revision: str | None = None) -> bool:
    """Whether the folder or repo holds a video processor's settings (in either place transformers keeps them)."""
    return video_settings(path, revision) is not None


def load_processor_from(path: str | Path, revision: str | None = None, **settings):
    """AutoProcessor, or the image-only variant of the folder's processor class where no video processor can load:
    torchvision is missing, or the folder has no video settings. The image-only processor keeps the folder's video
    settings and writes them back when saved, so a processor saved from it is the one the folder describes.

    `settings` override saved processor settings (a pixel budget: Qwen's `max_pixels`, SmolVLM's `size`, ...).
    """
    from transformers import AutoProcessor

    processor_class = processor_class_of(path, revision)
    if processor_class is not None and takes_video(processor_class):
        video = video_settings(path, revision)
        if video is None or not has_torchvision():
            try:
                processor = image_only(processor_class).from_pretrained(path, revision=revision, **settings)
            except ImportError as err:
                raise ImportError(f"the processor of {path} ({processor_class.__name__}) needs: {err}") from err
            processor.kept_video_settings = video
            return processor
    try:
        return AutoProcessor.from_pretrained(path, revision=revision, **settings)
    except ImportError as err:
        raise ImportError(f"the processor of {path} needs a package that is not installed: {err}") from err
