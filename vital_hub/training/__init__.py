"""Instruction tuning of vision-language models on the instruction mixtures (the library behind `recipes/sft.py`).

- `data`: load a config of the instructions repo (Hub id or local folder) or a weighted mixture of several.
- `masking`: tokenize a conversation with the model's processor and keep the loss on assistant tokens only.
- `collator`: decode and cap images, tokenize, pad: one batch for the trainer.
- `freeze`: which parts train (vision tower frozen by default; a projector-only stage).
- `card`: model card, generation config and push of the trained model.
- `synthetic`: offline tokenizers, processors, LLaVA configs and data shaped like the mixtures, for tests and benchmarks.
"""
