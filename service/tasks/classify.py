"""Classification: the top-k labels of the probabilities."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from enet_serve.service.schemas import ClassifyResponse, Prediction
from enet_serve.service.tasks.base import Answer, Prepared, Task


@dataclass(frozen=True)
class ClassifyOptions:
    top_k: int = 5


class ClassifyTask(Task):
    name: ClassVar[str] = "classify"
    word: ClassVar[str] = "classification"
    route: ClassVar[str] = "/classify"
    default_setting: ClassVar[str] = "default_classify_model"

    def encode(self, prepared: Prepared, outputs: dict[str, np.ndarray], options: ClassifyOptions) -> Answer:
        predictions = top_predictions(outputs[self.primary_output], self.class_names, options.top_k)
        body = ClassifyResponse(model=self.model, predictions=predictions).model_dump_json()
        return Answer(body.encode(), "application/json")


def top_predictions(probabilities: np.ndarray, labels: list[str], top_k: int) -> list[Prediction]:
    p = np.asarray(probabilities, dtype=np.float32).ravel()
    k = max(1, min(int(top_k), p.size))
    idx = np.argpartition(-p, k - 1)[:k] if k < p.size else np.arange(p.size)
    idx = idx[np.argsort(-p[idx], kind="stable")]
    return [Prediction(label=labels[i] if i < len(labels) else f"class_{i}", index=int(i), score=float(p[i]))
            for i in idx]
