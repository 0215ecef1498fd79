"""Progress records yielded by the core's generator functions."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One step of a long computation.

    Attributes
    ----------
    step : int
        Steps done so far (1-based once the first step has finished).
    total : int
        Steps planned; a computation may stop earlier when it converges.
    message : str
        Short human-readable status, e.g. ``"iteration 12, rel. error 0.3121"``.
    data : dict, optional
        A partial result worth showing at once (e.g. one K's instability score).
    """

    step: int
    total: int
    message: str = ""
    data: dict | None = None


def drain(gen: Generator[Progress, None, T], on_progress=None) -> T:
    """Run a core generator to the end and return its result (the blocking twin);
    ``on_progress(p)`` is called with every :class:`Progress` on the way.
    """
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(p)


def relay(gen: Generator[Progress, None, T], fn) -> Generator[Progress, None, T]:
    """Yield ``fn(p)`` for every progress record of ``gen``; return its result."""
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield fn(p)
