"""The progress bar every replay command shows on stderr (STYLE §9), driven by cumulative counts."""

from __future__ import annotations

import sys
from typing import Any, Optional

import click


class ProgressBar:
    """A progress callback: ``bar(done)`` or ``bar(done, total)``; the bar opens on the first call.

    Silent with ``quiet`` or when the total is 0. Use ``close()`` (or ``with``) to end the line.
    """

    def __init__(self, label: str, total: Optional[int] = None, *, quiet: bool = False) -> None:
        self.label = label
        self.total = total
        self.quiet = quiet
        self.bar: Any = None
        self.done = 0

    def __call__(self, done: int, total: Optional[int] = None) -> None:
        total = self.total if total is None else total
        if self.quiet or not total:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
