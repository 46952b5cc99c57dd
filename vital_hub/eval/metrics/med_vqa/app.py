"""Space entry point: the standard evaluate widget for this metric."""

import evaluate
from evaluate.utils import launch_gradio_widget

launch_gradio_widget(evaluate.load("med_vqa.py"))
