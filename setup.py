"""Ships the top-level configs/ folder inside the package as visionkit/configs (the rest is in pyproject.toml)."""

from setuptools import find_packages, setup

# pyproject.toml cannot add a package mapped from outside visionkit/ to the ones `packages.find` finds,
# so the package list lives here: every visionkit package, plus visionkit.configs read from configs/.
setup(
    packages=[*find_packages(include=["visionkit", "visionkit.*"]), "visionkit.configs"],
    package_dir={"visionkit.configs": "configs"},
    package_data={"visionkit.configs": ["**/*.yaml"], "visionkit.cli": ["catalog.json"]},
)
