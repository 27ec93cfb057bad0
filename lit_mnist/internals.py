"""Every private detail of another library that this package relies on, because no public way exists.

Each has a test in ``tests/test_internals.py`` that fails when the library changes it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

#: The trial system attribute holding the time of a journal-stored trial's last heartbeat.
HEARTBEAT_KEY = "lit_mnist:heartbeat"


def saved_class_path(checkpoint: dict[str, Any]) -> str | None:
    """The model class a LightningCLI checkpoint was saved from, e.g. ``lit_mnist.models.mlp.MLP``.

    LightningCLI stores it under ``hyper_parameters["_class_path"]`` so that
    ``load_from_checkpoint`` on a base class can rebuild the right subclass; Lightning reads the
    key itself but offers no public accessor, and the commands need the class before loading
    the weights (to refuse a checkpoint of another class, or of a class that is not a model).

    Args:
        checkpoint: A checkpoint's content, as ``lit_mnist.checkpoint.read_checkpoint`` returns it.
    """
    value = checkpoint.get("hyper_parameters", {}).get("_class_path")
    return value if isinstance(value, str) and value else None


def journal_storage_with_heartbeat(
    path: str, heartbeat_interval: int, grace_period: int, stale_trial_callback: Callable[..., None]
) -> Any:
    """Optuna's journal-file storage with the heartbeat that Optuna gives only its RDB storage.

    ``study.optimize`` records a running trial's heartbeat from its own thread and, before each
    trial, fails the trials whose heartbeat is older than ``grace_period`` and hands each to
    ``stale_trial_callback``, for storages that implement ``optuna.storages._heartbeat.BaseHeartbeat``
    (private, with the private ``_get_stale_trial_ids``); Optuna 5.1's ``JournalStorage`` does not.
    The heartbeat is a trial system attribute (one journal line per beat); a trial without one
    counts from its start.

    Args:
        path: The journal file (created if missing).
        heartbeat_interval: Seconds between a running trial's heartbeats.
        grace_period: Seconds without a heartbeat after which a running trial is failed.
        stale_trial_callback: Called with the study and each trial failed that way.
    """
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat

    class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
        def record_heartbeat(self, trial_id: int) -> None:
            # A trial that another process has failed meanwhile takes no more heartbeats.
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                self.set_trial_system_attr(trial_id, HEARTBEAT_KEY, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            running = self.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            now = time.time()
            return [
                self.get_trial_id_from_study_id_trial_number(study_id, t.number)
                for t in running
                if now - t.system_attrs.get(HEARTBEAT_KEY, t.datetime_start.timestamp()) > grace_period
            ]

        def get_heartbeat_interval(self) -> int:
            return heartbeat_interval

        def get_heartbeat_stale_trial_callback(self) -> Callable[..., None]:
            return stale_trial_callback

    return HeartbeatJournalStorage(optuna.storages.journal.JournalFileBackend(path))
