"""Reference models trained on the scene world (:mod:`mmcam.scenes`), shipped in ``models/``.

- ``captioner``: conv encoder + LSTM decoder with soft attention (Show, Attend and Tell).
- ``vqa``: conv encoder + LSTM question encoder fused by FiLM into an answer classifier.
- ``classifier``: a CNN naming the shape of the large object.

``load_model(name_or_path)`` returns the adapter; ``train.train`` and ``evaluate.evaluate``
reproduce and measure them.
"""

from mmcam.models.hub import KNOWN_MODELS, load_model, save_model

__all__ = ["KNOWN_MODELS", "load_model", "save_model"]
