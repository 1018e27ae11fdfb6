"""Out of GPU memory: recognise it, and retry the work in smaller pieces (the one helper every module uses).

Two shapes of work meet an out-of-memory error in this book:

* a list of items processed in batches (sequences to score, windows, chains to predict):
  :func:`halving_batches` yields each batch's result and halves the batch size when one does not fit;
* one piece of work sized by a number (a training step's token budget): :func:`retry_halving` calls it
  again with half the size.

Both log each step down, free the cached blocks before retrying (outside the ``except`` block, so that
the traceback no longer holds the failed batch's tensors), and stop with advice at their floor.
Needs only torch.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_out_of_memory(err: BaseException) -> bool:
    """True for a CUDA (or other accelerator) out-of-memory error."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(err, oom) or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def free_cached_memory() -> None:
    """Return the allocator's cached blocks to the GPU (a no-op without CUDA)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def halving_batches(fn: Callable[[list], T], items: Sequence, batch_size: int, what: str = "item",
                    advice: str = "use a smaller model, shorter inputs or a GPU with more memory"
                    ) -> Iterator[tuple[list, T]]:
    """Yield ``(batch, fn(batch))`` over ``items`` in order, in batches of ``batch_size``.

    On out of memory the batch size is halved and the same items are tried again; it never grows back
    within one call. Items come back in their order, each exactly once.

    Raises:
        torch.OutOfMemoryError: a batch of one ``what`` does not fit (with ``advice``).
    """
    start, size = 0, max(1, int(batch_size))
    while start < len(items):
        batch, failed = list(items[start:start + size]), False
        try:
            result = fn(batch)
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(err):
                raise
            if len(batch) == 1:
                raise torch.cuda.OutOfMemoryError(f"out of memory with a batch of one {what}: {advice}") from err
            log.warning("out of memory with a batch of %d %ss; retrying with %d", len(batch), what, len(batch) // 2)
            size, failed = len(batch) // 2, True
        if failed:
            free_cached_memory()
            continue
        yield batch, result
        start += len(batch)


def retry_halving(fn: Callable[[int], T], size: int, floor: int, what: str = "token_budget",
                  on_failure: Callable[[], None] | None = None,
                  advice: str = "use a smaller model, shorter inputs or a GPU with more memory",
                  where: str = "") -> tuple[T, int]:
    """``fn(size)``, and on out of memory ``fn(size // 2)``, ... while ``size // 2 >= floor``.

    Args:
        fn: the work, given the size to use.
        size: the size to try first.
        floor: the smallest size worth trying.
        what: the size's name, for the log and the error.
        on_failure: called after each failed try, before the next (e.g. zero the gradients).
        where: words for the log and the error, e.g. ``" at step 12"``.

    Returns:
        ``(fn's result, the size that worked)``.

    Raises:
        torch.OutOfMemoryError: out of memory at the floor (with ``advice``).
    """
    while True:
        try:
            return fn(size), size
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            if size // 2 < floor:
                raise torch.cuda.OutOfMemoryError(f"out of memory{where} with {what}={size}, and half of it is under "
                                                  f"the floor of {floor}: {advice}") from err
            log.warning("out of memory%s with %s=%d: retrying with %d", where, what, size, size // 2)
        if on_failure is not None:
            on_failure()
        free_cached_memory()
        size //= 2
