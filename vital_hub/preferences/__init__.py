"""Stage 2 data: clinician and model preferences over generated instruction candidates.

The flow is: `sample` picks a diverse set of dual-answer questions for clinicians (k-means over image and text
embeddings), the annotation `app` records each clinician's judgements durably, `pairs` turns judgements and rubric
judge scores (`judge`) into preference pairs, and `repo` writes them as the `clinician`, `model` and `mixed`
configs the selector trains from.
"""
