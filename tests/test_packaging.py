"""pyproject.toml builds without setuptools' deprecation warnings (a license table printed one at every
install) and ships the license text it names."""

from __future__ import annotations

import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_reads_without_setuptools_warnings():
    from setuptools.config.pyprojecttoml import apply_configuration, read_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), ROOT / "pyproject.toml")  # what `pip install` runs
        project = read_configuration(ROOT / "pyproject.toml")["project"]
    noisy = [str(w.message).splitlines()[0] for w in seen if "setuptools" in type(w.message).__module__
             or "Setuptools" in type(w.message).__name__]
    assert not noisy, noisy
    assert isinstance(project["license"], str)  # an SPDX expression
    for name in project["license-files"]:
        assert (ROOT / name).is_file(), name
