"""The base of ribsr's errors that list every problem of a file or configuration at once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["ProblemsError"]


class ProblemsError(ValueError):
    """One or more problems, all listed (``problems``), of ``source`` (a file or other origin, optional).

    Subclasses name what was invalid in ``what``; the message is ``"{what} in {source}:"`` and a line per problem.
    """

    what = "invalid input"

    def __init__(self, problems: Sequence[str], source: str | Path | None = None) -> None:
        self.problems = list(problems)
        self.source = None if source is None else str(source)
        where = f" in {self.source}" if self.source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.what}{where}:\n{lines}")
