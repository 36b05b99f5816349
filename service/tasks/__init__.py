"""One handler per task (config.json's `task`): how a model of that task turns an image into an answer.

A new task is one module with a `Task` subclass, added to HANDLERS; a new segmentation response
format is one `@segment_format` function (tasks/segment.py).
"""
from __future__ import annotations

from enet_serve.model_config import ModelConfig
from enet_serve.service.settings import Settings
from enet_serve.service.tasks.base import Answer, Prepared, Task
from enet_serve.service.tasks.classify import ClassifyOptions, ClassifyTask
from enet_serve.service.tasks.segment import SEGMENT_FORMATS, SegmentOptions, SegmentTask, segment_format

HANDLERS: dict[str, type[Task]] = {cls.name: cls for cls in (SegmentTask, ClassifyTask)}


def handler_for(model: str, config: ModelConfig, settings: Settings) -> Task:
    return HANDLERS[config.task](model, config, settings)


__all__ = ["Answer", "ClassifyOptions", "ClassifyTask", "HANDLERS", "Prepared", "SEGMENT_FORMATS", "SegmentOptions",
           "SegmentTask", "Task", "handler_for", "segment_format"]
