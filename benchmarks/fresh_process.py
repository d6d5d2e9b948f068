"""Run a benchmark's function in an interpreter of its own, so that its threads, allocator and peak memory are
its own and not what an earlier measurement left behind."""

from __future__ import annotations

import multiprocessing
import resource
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    """function(*args) in a new interpreter (spawned, not forked). Linux starts a child's peak RSS at its
    parent's, so keep the parent light (about 260 MB with torch imported) and below what is measured."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
