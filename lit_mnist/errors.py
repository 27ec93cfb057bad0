"""The one exception whose message is for the user, and the one place that reports errors to the user."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException


class LitMNISTError(Exception):
    """A problem the user can fix; the command prints the message alone and exits with status 1."""


def user_message(err: BaseException) -> str | None:
    """The one sentence to print for an error the user can fix, or ``None`` to show the traceback.

    ``LitMNISTError`` (also when another library wrapped it), Lightning's
    ``MisconfigurationException`` (settings that do not go together; its messages say which), the
    failure of another process of a distributed run (``_raised_by_a_collective``), a file that
    cannot be read or written, and a package a Lightning setting needs that is not installed
    (``accelerator: tpu`` without torch-xla). ``LIT_MNIST_DEBUG=1`` keeps the traceback of the
    last three.
    """
    if isinstance(err, MisconfigurationException):
        return str(err)
    cause = _user_error_in(err)
    if cause is not None:
        return str(cause)
    if os.environ.get("LIT_MNIST_DEBUG"):
        return None
    if _raised_by_a_collective(err):
        return _peer_failure(err)
    if isinstance(err, OSError) and err.filename is not None:
        return f"cannot use {err.filename}: {err.strerror}."
    if isinstance(err, ModuleNotFoundError) and str(err).startswith("Requirement '"):
        return str(err)  # Lightning's RequirementCache: "Requirement 'torch_xla>=1.13' not met. HINT: …"
    return None


@contextmanager
def reported_errors() -> Iterator[None]:
    """Print an error the user can fix (``user_message``) as ``error: …`` and exit with status 1.

    Every command runs inside it; any other error keeps its traceback.
    """
    try:
        yield
    except Exception as err:
        message = user_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def _user_error_in(err: BaseException | None) -> LitMNISTError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LitMNISTError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _raised_by_a_collective(err: BaseException) -> bool:
    """Whether ``err`` came from PyTorch's distributed communication in a run of several processes.

    That is a ``torch.distributed.DistError`` (NCCL and c10d), or a ``RuntimeError`` raised inside
    ``torch.distributed`` or DDP's reducer (``torch.nn.parallel``), as gloo raises them when a peer
    has died; an error of the model's own code in the same run is raised from elsewhere.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return False
    if isinstance(err, torch.distributed.DistError):
        return True
    if not isinstance(err, RuntimeError) or err.__traceback__ is None:
        return False
    innermost = err.__traceback__
    while innermost.tb_next is not None:
        innermost = innermost.tb_next
    module = innermost.tb_frame.f_globals.get("__name__", "")
    return module.startswith(("torch.distributed", "torch.nn.parallel"))


def _peer_failure(err: BaseException) -> str:
    """One sentence for a distributed error raised because another process of the run failed."""
    text = str(err).strip()
    detail = text.splitlines()[0] if text else type(err).__name__
    detail = detail.split("] ", 1)[-1] if detail.startswith("[") else detail  # drop gloo's source location
    detail = detail.split(". ", 1)[0]  # gloo goes on with advice that is no longer true here
    rank, world_size = os.environ.get("RANK", "?"), os.environ.get("WORLD_SIZE", "?")
    return (
        f"rank {rank} of {world_size} stopped: another process of the distributed run died or stopped "
        f"answering ({detail.rstrip('.')}); look in the other machines' logs for the cause."
    )
