"""Classification: registers the task, its models, datasets, loss and metrics."""

from visionkit.tasks.classification import datasets, metrics, models, task  # noqa: F401
