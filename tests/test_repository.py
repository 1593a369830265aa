"""Repository-level checks: lint, and the README's commands stay in step with .ci/run."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def test_ruff_clean():
    ruff = shutil.which("ruff") or str(REPO / ".venv" / "bin" / "ruff")
    if not shutil.which(ruff):
        pytest.skip("ruff not installed (pip install -e '.[dev]')")
    paths = [p for p in ("src", "tests", "benchmarks", "scripts", "hubconf.py") if (REPO / p).exists()]
    result = subprocess.run([ruff, "check", *paths], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    lines = [line.strip() for line in ci.splitlines()]
    # The main suite, then the spandrel tests in their own venv: both commands as the README gives them.
    main = ".venv/bin/python -m pytest"
    spandrel = ".venv-spandrel/bin/python -m pytest tests/integrations"
    for command in (main, spandrel):
        assert command in readme and command in lines
    assert lines.index(main) < lines.index(spandrel)


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "ribsr", "--help"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0
    for command in ("verify", "convert", "info"):
        assert command in out.stdout


def test_the_version_has_one_source():
    import importlib.metadata

    import tomllib

    import ribsr

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ribsr.__version__"}
    assert importlib.metadata.version("ribsr") == ribsr.__version__  # the installed metadata is built from it


def test_ci_runs_the_browser_test_after_the_suite():
    # The browser test (tests/test_browser.py, marked `browser`, left out of the default run) as docs/compare.md
    # gives it, run by .ci/run after the README's test command.
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    browser = ".venv/bin/python -m pytest -m browser tests/test_browser.py"
    assert browser in (REPO / "docs" / "compare.md").read_text() and browser in ci
    assert ci.index(".venv/bin/python -m pytest") < ci.index(browser)
    assert "not browser" in (REPO / "pyproject.toml").read_text()
