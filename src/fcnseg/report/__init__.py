"""What people look at after and during training: the HTML evaluation report (per-class and
per-image scores, the confusion heat map, a gallery of the worst and best images) and the
TensorBoard logging of a training run.

    scores.py       per-image IU gathered while `evaluate` runs; the gallery's kept images
    charts.py       bar chart, histogram (matplotlib), gallery strips (Pillow)
    html.py         the page (page.html, package data): plain templates, no script
    evaluation.py   the report folder: index.html, report.json, CSVs, charts/, gallery/
    tensorboard.py  the training run's event files (torch.utils.tensorboard, fcnseg[tb])
"""

from __future__ import annotations

from .scores import ImageScore, PerImageScores

__all__ = ["ImageScore", "PerImageScores"]
