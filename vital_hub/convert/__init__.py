"""Checkpoints in other formats as transformers folders (`vital convert ...`)."""
