"""The private details of other libraries that ``lit_mnist/internals.py`` relies on, checked against them.

Each test fails when the library changes the detail, so that the one module using it is mended.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import torch
from helpers import SHORT_FIT, run_cli

from lit_mnist import internals
from lit_mnist.internals import saved_class_path


def test_lightningcli_saves_the_model_class_path_in_the_checkpoint(tmp_path: Path) -> None:
    result = run_cli(
        "fit", "--config", "configs/dropout.yaml", *SHORT_FIT, "--trainer.limit_train_batches", "2",
        "--test_after_fit", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / "dropout" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert saved_class_path(checkpoint) == "lit_mnist.DropoutMLP"
    assert saved_class_path({"hyper_parameters": {}}) is None


def test_the_journal_storage_heartbeat_fails_a_silent_trial_and_optuna_records_beats(tmp_path: Path) -> None:
    """``internals.journal_storage_with_heartbeat`` relies on Optuna's private ``BaseHeartbeat`` contract."""
    journal = str(tmp_path / "journal.log")
    plain = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    silent = optuna.create_study(
        storage=plain, study_name="s"
    ).ask()  # RUNNING, no heartbeat: its process died
    stale = []
    storage = internals.journal_storage_with_heartbeat(
        journal, 1, 2, lambda _, trial: stale.append(trial.number)
    )
    study = optuna.load_study(study_name="s", storage=storage)
    time.sleep(2.5)

    def objective(trial: optuna.Trial) -> float:
        time.sleep(1.5)
        return 1.0

    study.optimize(objective, n_trials=1)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and stale == [silent.number]
    assert internals.HEARTBEAT_KEY in trials[1].system_attrs
