"""Medical VQA metric (open recall, closed accuracy) as an `evaluate` module.

Load it offline from the folder: `evaluate.load("vital_hub/eval/metrics/med_vqa", config_name="llava-med")`
or `config_name="strict"`. The rules live in `vqa_scoring.py` beside this file (standard library only), so the
folder can be pushed as a Hub Space unchanged.
"""

import datasets
import evaluate

from .vqa_scoring import CLOSED_RULES, COMPATS, score_all

_DESCRIPTION = """Open-question token recall and closed-question accuracy for medical VQA (VQA-RAD, SLAKE,
PathVQA), x100. `llava-med` reproduces LLaVA-Med's scripts, quirks included ("no" matches "nodule", repeated
predicted words inflate recall); `strict` fixes them with whole-word matching and clipped counts."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: model answers (strings).
    references: ground-truth answers (strings).
    answer_types: "OPEN" or "CLOSED" per question.
    closed_rule: "substring" (default, LLaVA-Med's batch script) or "substring-yes-no" (its run_eval.py, which
        also wants "yes" or "no" in the prediction); llava-med only.
Returns:
    open_recall, closed_accuracy (x100, None when there is no question of that type), open_count, closed_count,
    scores (per question, 0-1).
Example:
    >>> metric = evaluate.load("vital_hub/eval/metrics/med_vqa", config_name="strict")
    >>> metric.compute(predictions=["No nodule."], references=["no"], answer_types=["CLOSED"])["closed_accuracy"]
    100.0
"""

_CITATION = """@article{li2023llavamed, title={LLaVA-Med: Training a Large Language-and-Vision Assistant for
Biomedicine in One Day}, author={Li, Chunyuan and others}, journal={arXiv:2306.00890}, year={2023}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MedVqa(evaluate.Metric):
    def _info(self):
        if self.config_name not in (*COMPATS, "default"):
            raise ValueError(f"unknown config {self.config_name!r}; known: {list(COMPATS)}")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "answer_types": datasets.Value("string"),
                }
            ),
        )

    def _compute(self, predictions, references, answer_types, closed_rule="substring"):
        if closed_rule not in CLOSED_RULES:
            raise ValueError(f"unknown closed_rule {closed_rule!r}; known: {list(CLOSED_RULES)}")
        compat = "llava-med" if self.config_name == "default" else self.config_name
        return score_all(predictions, references, answer_types, compat=compat, closed_rule=closed_rule)
