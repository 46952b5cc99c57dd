"""The selection model: a dual encoder (image + text) with an MLP head that scores one instruction candidate.

The paper's selector (`filter/train_clip_filter.py` in https://github.com/mao1207/BioMed-VITAL) is BiomedCLIP
with its image and text features (L2-normalised, as open_clip's forward returns them) concatenated text first, then fed to an MLP
1024->512->512->512->1 with ReLU and a final sigmoid. Here the backbone is pluggable:

- `dual_encoder`: any transformers CLIP-family model with `get_image_features`/`get_text_features`
  (CLIP, SigLIP, VisionTextDualEncoder); its own pooling and projections are used.
- `biomedclip`: a VisionTextDualEncoder (ViT + BERT) laid out like open_clip's BiomedCLIP: no poolers, the CLS
  token of the last hidden state is projected, the text projection is open_clip's two-layer MLP. Only this
  layout reproduces BiomedCLIP's features exactly (a stock VisionTextDualEncoder adds tanh poolers and a single
  linear text projection); `vital_hub.selector.convert` maps open_clip weights onto it.
- `text`: a text-only selector, an `AutoModelForSequenceClassification` with one label whose logit is the score.

The head widths follow the backbone (input = text dim + image dim). Pixels may come in as uint8: the model
normalises them itself, so data loaders ship four times fewer bytes and do no float work.

This module only imports torch and transformers so that a saved selector loads anywhere `vital_hub` is installed:
`import vital_hub.selector` registers the classes with the Auto classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

# open_clip's (and OpenAI CLIP's) normalisation constants, which BiomedCLIP's preprocessing uses.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
BACKBONES = ("dual_encoder", "biomedclip", "text")
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def get_backbone_kind(name: str) -> str:
    """Validate a backbone kind, failing with the known names."""
    if name not in BACKBONES:
        raise ValueError(f"unknown selector backbone {name!r}; known: {', '.join(BACKBONES)}")
    return name


def config_from_dict(value: dict | PreTrainedConfig | None) -> PreTrainedConfig | None:
    """A nested backbone config as saved in config.json (a dict with `model_type`) back to its class."""
    if value is None or isinstance(value, PreTrainedConfig):
        return value
    value = dict(value)
    model_type = value.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"backbone_config has unknown model_type {model_type!r}")
    return CONFIG_MAPPING[model_type](**value)


class SelectorConfig(PreTrainedConfig):
    """Backbone kind + backbone config + head shape + the text and image preprocessing the selector expects."""

    model_type = "vital_selector"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone: str = "dual_encoder",
        backbone_config: dict | PreTrainedConfig | None = None,
        head_hidden_sizes: list[int] | tuple[int, ...] = (512, 512, 512),
        head_activation: str = "relu",
        output_sigmoid: bool = True,
        normalize_features: bool = True,
        text_max_length: int = 256,
        truncation_side: str = "right",
        image_size: int = 224,
        image_mean: list[float] | tuple[float, ...] = OPENAI_CLIP_MEAN,
        image_std: list[float] | tuple[float, ...] = OPENAI_CLIP_STD,
        **kwargs,
    ):
        kwargs.setdefault("num_labels", 1)
        self.backbone = get_backbone_kind(backbone)
        self.backbone_config = config_from_dict(backbone_config)
        if head_activation not in ACTIVATIONS:
            raise ValueError(f"unknown head_activation {head_activation!r}; known: {', '.join(ACTIVATIONS)}")
        if truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
        self.head_hidden_sizes = list(head_hidden_sizes)
        self.head_activation = head_activation
        self.output_sigmoid = output_sigmoid
        self.normalize_features = normalize_features
        self.text_max_length = text_max_length
        self.truncation_side = truncation_side
        self.image_size = image_size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        super().__init__(**kwargs)

    @property
    def uses_images(self) -> bool:
        return self.backbone != "text"

    def to_dict(self) -> dict:
        output = super().to_dict()
        if isinstance(self.backbone_config, PreTrainedConfig):
            output["backbone_config"] = self.backbone_config.to_dict()
        return output


def build_biomedclip_backbone(config: PreTrainedConfig) -> nn.Module:
    """A VisionTextDualEncoder with pooler-free towers and open_clip's MLP text projection (see module doc)."""
    from transformers import VisionTextDualEncoderModel

    vision = AutoModel.from_config(config.vision_config, add_pooling_layer=False)
    text = AutoModel.from_config(config.text_config, add_pooling_layer=False)
    backbone = VisionTextDualEncoderModel(config=config, vision_model=vision, text_model=text)
    text_width, dim = config.text_config.hidden_size, config.projection_dim
    hidden = (text_width + dim) // 2  # open_clip's HFTextEncoder with proj_type "mlp"
    backbone.text_projection = nn.Sequential(
        nn.Linear(text_width, hidden, bias=False), nn.GELU(), nn.Linear(hidden, dim, bias=False)
    )
    return backbone


def projection_dims(config: SelectorConfig) -> tuple[int, int]:
    """(text feature width, image feature width) of a dual-encoder backbone config."""
    backbone = config.backbone_config
    if getattr(backbone, "projection_dim", None):
        return backbone.projection_dim, backbone.projection_dim
    # SigLIP projects nothing: its features are the towers' pooled outputs.
    return backbone.text_config.hidden_size, backbone.vision_config.hidden_size


def build_head(input_size: int, hidden_sizes: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(input_size, width), ACTIVATIONS[activation]()]
        input_size = width
    layers.append(nn.Linear(input_size, 1))
    return nn.Sequential(*layers)


class SelectorModel(PreTrainedModel):
    """Scores (image, text) candidates; `logits` has shape (batch, 1), in [0, 1] when `output_sigmoid`."""

    config_class = SelectorConfig
    config: SelectorConfig
    base_model_prefix = "selector"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: SelectorConfig):
        super().__init__(config)
        if config.backbone_config is None:
            raise ValueError("SelectorConfig.backbone_config is required")
        if config.backbone == "text":
            self.backbone = AutoModelForSequenceClassification.from_config(config.backbone_config)
            self.head = None
        else:
            if config.backbone == "biomedclip":
                self.backbone = build_biomedclip_backbone(config.backbone_config)
            else:
                self.backbone = AutoModel.from_config(config.backbone_config)
            text_dim, image_dim = projection_dims(config)
            self.head = build_head(text_dim + image_dim, config.head_hidden_sizes, config.head_activation)
        self.post_init()

    def _init_weights(self, module):
        """Only the head is ours to initialise (PyTorch's default, as the paper's head had); backbone modules keep
        their own model's initialisation."""
        if self.head is not None and isinstance(module, nn.Linear) and any(module is layer for layer in self.head):
            module.reset_parameters()

    def backbone_dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def normalize_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (0-255) -> normalised floats in the backbone's dtype; float pixels pass unchanged."""
        if pixel_values.dtype == torch.uint8:
            # Plain tensors rather than buffers: nothing to get lost when weights load onto a meta-initialised model.
            mean = torch.tensor(self.config.image_mean, device=pixel_values.device).view(1, -1, 1, 1)
            std = torch.tensor(self.config.image_std, device=pixel_values.device).view(1, -1, 1, 1)
            pixel_values = (pixel_values.float() / 255.0 - mean) / std
        return pixel_values.to(self.backbone_dtype())

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = self.normalize_pixels(pixel_values)
        if self.config.backbone == "biomedclip":
            hidden = self.backbone.vision_model(pixel_values=pixel_values).last_hidden_state
            return self.backbone.visual_projection(hidden[:, 0])
        return self.backbone.get_image_features(pixel_values=pixel_values).pooler_output

    def text_features(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        if self.config.backbone == "biomedclip":
            hidden = self.backbone.text_model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            return self.backbone.text_projection(hidden[:, 0])
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and self.config.backbone_config.model_type == "vision-text-dual-encoder":
            kwargs["token_type_ids"] = token_type_ids
        return self.backbone.get_text_features(**kwargs).pooler_output

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """Score a batch. When there are k texts per image (chosen and rejected answers share one figure),
        `pixel_values` may hold each image once: its features are reused for all k texts, in blocks."""
        if self.config.backbone == "text":
            logits = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits.float()
        else:
            if pixel_values is None:
                raise ValueError("this selector reads images: pixel_values is required")
            text = self.text_features(input_ids, attention_mask, token_type_ids)
            image = self.image_features(pixel_values)
            if text.shape[0] != image.shape[0]:
                if text.shape[0] % image.shape[0]:
                    raise ValueError(f"{text.shape[0]} texts cannot share {image.shape[0]} images")
                image = image.repeat(text.shape[0] // image.shape[0], 1)
            if self.config.normalize_features:
                text, image = F.normalize(text, dim=-1), F.normalize(image, dim=-1)
            features = torch.cat([text, image], dim=-1)
            # The head runs in its own dtype (fp32 unless the whole model was cast), also under bf16 autocast:
            # a bf16 sigmoid output has ~1/256 resolution near 0.5 and would turn close scores into ties.
            with torch.autocast(device_type=features.device.type, enabled=False):
                logits = self.head(features.to(self.head[0].weight.dtype))
        if self.config.output_sigmoid:
            logits = torch.sigmoid(logits)
        return SequenceClassifierOutput(logits=logits)


AutoConfig.register(SelectorConfig.model_type, SelectorConfig, exist_ok=True)
AutoModel.register(SelectorConfig, SelectorModel, exist_ok=True)
AutoModelForSequenceClassification.register(SelectorConfig, SelectorModel, exist_ok=True)
# This file needs only torch and transformers, so save_pretrained ships it beside the weights: a selector on the
# Hub loads with `AutoModel.from_pretrained(repo, trust_remote_code=True)` where vital-hub is not installed.
SelectorConfig.register_for_auto_class()
SelectorModel.register_for_auto_class("AutoModel")
