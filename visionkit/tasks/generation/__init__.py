"""Generation: registers the task, DCGAN and DDPM models, GAN losses, the image-folder dataset and metrics."""

from visionkit.tasks.generation import datasets, diffusion, gan, metrics, task  # noqa: F401
