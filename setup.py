"""Package data for a non-editable install: the shipped folders go into the wheel as ``cascade/_resources``.

Everything else is in pyproject.toml. :mod:`cascade.paths` reads these folders from the checkout when it runs from one
(the editable install of ``make setup``) and from ``cascade/_resources`` when it runs from a wheel.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

#: Same list as cascade.paths.RESOURCES (tests/unit/test_packaging.py checks that they agree).
RESOURCES = ("tasks", "python_backends", "data", "loadtest", "bench/data", "k8s/triton-cascade")


class BuildWithResources(build_py):
    def run(self):
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's folders
            return
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "cascade" / "_resources"
        for name in RESOURCES:
            shutil.copytree(
                root / name, target / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
            )


setup(cmdclass={"build_py": BuildWithResources})
