"""The selection model (stage 2 of BioMed-VITAL): a multimodal reward model that scores instruction candidates.

Importing the package registers `SelectorConfig`/`SelectorModel` with transformers' Auto classes, so a saved or
pushed selector loads with `AutoModel.from_pretrained`. Modules: `modeling` (the model), `convert` (BiomedCLIP's
open_clip weights), `text` (what the selector reads), `losses`, `data` (decoding and collators), `trainer` (the
TRL RewardTrainer subclass behind `recipes/reward.py`), `select` (`vital select`) and `chunks` (its input
pipeline).
"""

from vital_hub.selector.modeling import SelectorConfig, SelectorModel

__all__ = ["SelectorConfig", "SelectorModel"]
