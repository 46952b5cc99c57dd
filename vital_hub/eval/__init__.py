"""Evaluation: answer an eval set with any model, judge open visual chat (qa50), score medical VQA, compare two
models by win rate, and publish the results (summary JSON, per-sample details dataset, model card section).

Each part is a module with a thin `vital eval ...` entry in `vital_hub.eval.cli`.
"""
