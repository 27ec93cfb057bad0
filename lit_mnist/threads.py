"""How many CPU threads a lit_mnist process computes with: the cores other programs leave idle when it starts.

PyTorch's CPU kernels (its own, oneDNN's and MKL's) share one pool of GNU OpenMP threads, one per
core by default. When a thread has done its share of a kernel, it spins for a while waiting for
the next one, and every kernel waits for its slowest thread. On an idle machine that makes
MNIST's short kernels fast; beside another busy process it makes them slow: the thread that
shares a core with the neighbour waits for its time slice while the others spin, and a 2-core
machine with one busy neighbour ran ``fit`` 2 to 75 times slower.

So a process takes one thread per core that other processes do not keep busy when it starts
(``default_threads``, the ``--threads`` option of Lightning's commands, which ``--print_config``
shows): as many as PyTorch would on an idle machine, and fewer beside busy ones, where it then
keeps its speed. ``OMP_NUM_THREADS`` set by the user wins, and so does ``--threads``. The count
is decided once per process and stays for its run, so the run's arithmetic does not change under
it. ``docs/benchmarks.md``, "On a busy machine", has the measurements behind this, and what it
does not cover (a neighbour that starts after the run).

This module imports torch only when it is asked for a count.
"""

from __future__ import annotations

import functools
import os
import time


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, which ``taskset`` and cgroups narrow)."""
    return len(os.sched_getaffinity(0))


def user_threads() -> int | None:
    """The thread count the user set with ``OMP_NUM_THREADS`` (its first value), or ``None``."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def busy_cores(seconds: float = 0.1) -> float:
    """How many cores other processes keep busy: their share of the machine's CPU time over ``seconds``.

    Read from ``/proc/stat`` (Linux) while this process sleeps, less this process's own CPU time;
    time the hypervisor gives to other machines (steal) counts as busy. 0 where ``/proc/stat``
    cannot be read.
    """

    def sample() -> tuple[float, float, float]:
        with open("/proc/stat") as stat:
            fields = [float(v) for v in stat.readline().split()[1:9]]
        idle = fields[3] + fields[4]  # idle and iowait
        return sum(fields) - idle, sum(fields), sum(os.times()[:2])

    try:
        busy0, total0, own0 = sample()
        time.sleep(seconds)
        busy1, total1, own1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    if total1 <= total0:
        return 0.0
    others = (busy1 - busy0) - (own1 - own0) * os.sysconf("SC_CLK_TCK")
    return max(0.0, (os.cpu_count() or 1) * others / (total1 - total0))


@functools.cache
def idle_cores() -> int:
    """The threads PyTorch would take, less the cores other processes kept busy when this was first asked.

    PyTorch takes one thread per physical core; the busy cores are counted in logical CPUs
    (``busy_cores``), of which a core may have two. At least one.
    """
    import torch

    return max(1, min(torch.get_num_threads(), available_cores() - round(busy_cores())))


def default_threads(processes: int = 1) -> int:
    """The thread count of each of ``processes`` processes of a run on this machine.

    ``OMP_NUM_THREADS`` if the user set it; otherwise the idle cores (``idle_cores``) shared among
    the processes, at least one each.
    """
    return user_threads() or max(1, idle_cores() // processes)


def use(count: int) -> None:
    """Make PyTorch compute with ``count`` threads, here and in the processes this one starts.

    The count also goes into ``OMP_NUM_THREADS``, so that Lightning's DDP launcher keeps it (it
    would otherwise divide the cores among its processes itself) and the processes it starts take
    the same (they read it as the user's setting).
    """
    import torch

    torch.set_num_threads(count)
    os.environ["OMP_NUM_THREADS"] = str(count)
