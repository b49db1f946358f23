"""Generation: registers the task (with its diffusion and GAN families), DCGAN and DDPM models, GAN losses,
the image-folder dataset and metrics."""

from visionkit.tasks.generation import (  # noqa: F401
    datasets,
    diffusion,
    diffusion_task,
    gan,
    gan_task,
    metrics,
    task,
)
