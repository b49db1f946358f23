"""Image generation: DCGAN and DDPM-style diffusion models, digits/folder datasets, Fréchet distance."""

from visionkit.tasks.generation import datasets, diffusion  # noqa: F401  (import registers components)
