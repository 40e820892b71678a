"""Row geometry of stacked updates, one column chunk at a time (Gram matrices, distances to a point, weighted sums
of differences), and the CPU threading the chunked kernels share.

Why chunks: the direct expressions (``updates - point``, ``updates / norms``, ``updates.double()``) each build a
temporary as large as the (n, d) updates; at 100 x 1.6M float32 that is 640 MiB (1.3 GiB in float64) written once,
page-faulted in on every call, and read again, which on a 2-core CPU costs more than the arithmetic. Here every
temporary is one chunk of columns (a few MiB) that stays in cache, and only (n,)- or (n, n)-sized results leave
it. Sums over chunks are accumulated in float64.

Why threads (:func:`run_in_threads`): a chunked kernel makes many short torch calls. Left to themselves, CPU calls
split across the cores with OpenMP, and every call ends at a barrier; when another process holds one of the cores
(a shared machine, Ray workers), each barrier waits for a descheduled thread, and a kernel of ten thousand calls
was measured 5-15x slower than with one thread. So on a CPU the columns are split into one contiguous range per
thread (``torch.get_num_threads()`` of them), and each Python thread runs its calls single-threaded: the threads
only meet at the end, as fast as OpenMP on an idle machine and no slower than one core on a busy one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

#: bytes of one chunk of rows x columns: fits a CPU's L2/L3 next to the data being read
CPU_CHUNK_BYTES = 4 << 20
GPU_CHUNK_BYTES = 256 << 20

#: elements a thread must get before a kernel is split between threads (starting one has a fixed cost)
MIN_THREAD_WORK = 1 << 20

T = TypeVar("T")


def run_in_threads(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``tasks`` (independent, each writing only its own part of any shared output) and return their results
    in order: with one task, inline; otherwise one Python thread per task, each with single-threaded torch calls.

    ``torch.set_num_threads(1)`` in a worker changes that thread's OpenMP pool (the caller's own threads keep
    theirs) and the default that threads starting torch work adopt; the worker sets that default back to the
    caller's count before it ends. Torch releases the GIL inside every call, so the threads run in parallel.
    """
    if len(tasks) <= 1:
        return [task() for task in tasks]
    threads = torch.get_num_threads()

    def run(task: Callable[[], T]) -> T:
        torch.set_num_threads(1)
        try:
            return task()
        finally:
            torch.set_num_threads(threads)

    with ThreadPoolExecutor(len(tasks), thread_name_prefix="fedsec-kernel") as pool:
        return list(pool.map(run, tasks))


def split_range(size: int, step: int, device: torch.device, *, work: int) -> list[tuple[int, int]]:
    """``[0, size)`` cut into up to ``torch.get_num_threads()`` contiguous ranges whose bounds are multiples of
    ``step``, each with at least :data:`MIN_THREAD_WORK` of the ``work`` (elements touched in all); one range off
    the CPU (a GPU is not helped by Python threads)."""
    if size <= 0:
        return []
    steps = -(-size // step)
    parts = min(torch.get_num_threads(), steps, max(1, work // MIN_THREAD_WORK)) if device.type == "cpu" else 1
    per_part = -(-steps // max(parts, 1)) * step
    return [(first, min(size, first + per_part)) for first in range(0, size, per_part)]


def map_ranges(part: Callable[[int, int], T], size: int, step: int, device: torch.device, *, work: int) -> list[T]:
    """``part(start, stop)`` over the ranges of :func:`split_range`, in threads (:func:`run_in_threads`)."""
    ranges = split_range(size, step, device, work=work)
    return run_in_threads([lambda bounds=bounds: part(*bounds) for bounds in ranges])


def chunk_width(n: int, element_size: int, device: torch.device, budget: tuple[int, int] | None = None) -> int:
    """Columns per chunk of n rows: about ``budget`` bytes, (CPU, other devices) (default: this module's
    :data:`CPU_CHUNK_BYTES`, :data:`GPU_CHUNK_BYTES`), a multiple of 256."""
    cpu, gpu = budget or (CPU_CHUNK_BYTES, GPU_CHUNK_BYTES)
    return max(256, (cpu if device.type == "cpu" else gpu) // (max(n, 1) * element_size) // 256 * 256)


def _column_slices(start: int, stop: int, width: int) -> Iterator[slice]:
    for first in range(start, stop, width):
        yield slice(first, min(stop, first + width))


def gram_matrix(
    rows: torch.Tensor | Sequence[torch.Tensor],
    *,
    shift_row: int | None = None,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """G[i, j] = <r_i - s, r_j - s> for the rows r_i of an (n, d) tensor or a sequence of n tensors of d values.

    s = row ``shift_row`` (None: no shift); shifting leaves distances unchanged and, with a central row, keeps
    ||a||^2 + ||b||^2 - 2 a.b from cancelling. Each chunk of columns is gathered into one (n, w) buffer in
    ``compute_dtype`` (default: the rows' dtype) and multiplied by its transpose there; the chunk products are
    summed in float64. Returns (n, n) float64 on the rows' device.
    """
    if isinstance(rows, torch.Tensor):
        n, d = rows.shape
        device, dtype = rows.device, compute_dtype or rows.dtype
    else:
        n = len(rows)
        d = rows[0].numel() if n else 0
        device = rows[0].device if n else torch.device("cpu")
        dtype = compute_dtype or (rows[0].dtype if n else torch.float32)
    if n == 0 or d == 0:
        return torch.zeros((n, n), dtype=torch.float64, device=device)
    width = chunk_width(n, max(torch.empty((), dtype=dtype).element_size(), 4), device)

    def part(start: int, stop: int) -> torch.Tensor:
        gram = torch.zeros((n, n), dtype=torch.float64, device=device)
        buffer = torch.empty(n * min(width, stop - start), dtype=dtype, device=device)
        for columns in _column_slices(start, stop, width):
            x = buffer[: n * (columns.stop - columns.start)].view(n, -1)
            if isinstance(rows, torch.Tensor):
                chunk = rows[:, columns]
                if shift_row is None:
                    x = chunk if chunk.dtype == dtype else x.copy_(chunk)
                elif chunk.dtype == dtype:
                    torch.sub(chunk, chunk[shift_row], out=x)
                else:
                    x.copy_(chunk).sub_(x[shift_row].clone())
            else:
                for i, row in enumerate(rows):
                    x[i].copy_(row.reshape(-1)[columns])
                if shift_row is not None:
                    x.sub_(x[shift_row].clone())
            # the lower triangle of blocks only (G is symmetric): 3/4 of the product, measured 10% faster
            gram[:, :half] += (x @ x[:half].T).to(torch.float64)
            gram[half:, half:] += (x[half:] @ x[half:].T).to(torch.float64)
        return gram

    half = n // 2
    parts = map_ranges(part, d, width, device, work=n * d)
    gram = sum(parts[1:], parts[0])
    gram[:half, half:] = gram[half:, :half].T
    return gram


def distances_to(updates: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """||u_i - point|| for the rows of ``updates`` (n, d), shape (n,), in the updates' dtype (squares summed over
    chunks in float64). point: (d,), same device and dtype."""
    n, d = updates.shape
    width = chunk_width(n, updates.element_size(), updates.device)

    def part(start: int, stop: int) -> torch.Tensor:
        squares = torch.zeros(n, dtype=torch.float64, device=updates.device)
        buffer = torch.empty(n * min(width, stop - start), dtype=updates.dtype, device=updates.device)
        for columns in _column_slices(start, stop, width):
            difference = torch.sub(updates[:, columns], point[columns],
                                   out=buffer[: n * (columns.stop - columns.start)].view(n, -1))
            squares += torch.linalg.vector_norm(difference, dim=1).to(torch.float64).square()
        return squares

    parts = map_ranges(part, d, width, updates.device, work=n * d)
    squares = sum(parts[1:], parts[0]) if parts else torch.zeros(n, dtype=torch.float64, device=updates.device)
    return squares.sqrt().to(updates.dtype)


def weighted_differences(updates: torch.Tensor, point: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i weights_i (u_i - point), shape (d,), in the updates' dtype; updates (n, d), point (d,), weights (n,)."""
    n, d = updates.shape
    out = torch.empty(d, dtype=updates.dtype, device=updates.device)
    weights = weights.to(updates.dtype)
    width = chunk_width(n, updates.element_size(), updates.device)

    def part(start: int, stop: int) -> None:
        buffer = torch.empty(n * min(width, stop - start), dtype=updates.dtype, device=updates.device)
        for columns in _column_slices(start, stop, width):
            difference = torch.sub(updates[:, columns], point[columns],
                                   out=buffer[: n * (columns.stop - columns.start)].view(n, -1))
            torch.mv(difference.T, weights, out=out[columns])

    map_ranges(part, d, width, updates.device, work=n * d)
    return out
