"""Packaging beside pyproject.toml: the one thing pyproject.toml cannot say.

The shipped models stay in the repository's top-level ``models/`` folder; the wheel carries them
as package data ``mmcam/_shipped/<name>/...`` (see :data:`mmcam.models.hub.SHIPPED_MODELS`).
``packages.find`` in pyproject.toml cannot add a package that lives outside ``mmcam/``, so the
package list and that folder mapping are given here.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mmcam", "mmcam.*"]) + ["mmcam._shipped"],
    package_dir={"mmcam._shipped": "models"},
)
