"""What the benchmark scripts share: median times, peak resident memory, their RESULTS sections.

Each script times its operations in its own process and measures each one's peak memory in a
fresh one (``ru_maxrss`` survives fork+exec, so a child starts at its parent's peak: the
high-water mark is reset through /proc/self/clear_refs and read from /proc/self/status). Each
writes one section of RESULTS.md, replacing its previous one and keeping every other.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "child_memory",
    "cuda_peak",
    "high_water",
    "median_seconds",
    "replace_section",
    "reset_high_water",
]


def median_seconds(fn: Callable[[], object], rounds: int, device: str = "cpu") -> float:
    """The median wall time of ``rounds`` calls of ``fn`` after one warm-up call.

    On CUDA each call is timed to the device's synchronisation.
    """

    def sync() -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cuda_peak(fn: Callable[[], object], device: str) -> int:
    """Peak CUDA memory allocated by ``fn`` above what was allocated before it (bytes)."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device) - base


def reset_high_water() -> None:
    """Reset this process's peak resident memory to its current size (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def high_water() -> int:
    """This process's peak resident memory since the last reset, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def replace_section(path: Path, lines: list[str]) -> None:
    """Write ``lines`` (a section: its first ``## `` line is the heading) into ``path``.

    The file's section of the same heading is replaced; every other section is kept, in order.
    """
    heading = next(line for line in lines if line.startswith("## "))
    previous = path.read_text() if path.exists() else ""
    parts = previous.split("\n## ")
    kept = parts[0] + "".join(
        "\n## " + part for part in parts[1:] if "## " + part.split("\n")[0] != heading
    )
    path.write_text(kept.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
"""glibc settings for a child whose peak memory is read: every allocation above 64 KiB is its own
mapping, returned to the system when freed, so the resident peak is the live tensors' peak and
repeats to the page (with the defaults freed blocks linger and the same run read ±40 MiB)."""


def child_memory(command: list[str], name: str) -> int | None:
    """The peak-memory growth a child run of ``command`` prints last (bytes), or None, said.

    The child runs with :data:`EXACT_MALLOC`.
    """
    env = {**os.environ, **EXACT_MALLOC}
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode == 0 and out.stdout.strip():
        return int(out.stdout.strip().splitlines()[-1])
    print(f"memory of {name!r} not measured: {out.stderr.strip()[-300:]}", file=sys.stderr)
    return None
