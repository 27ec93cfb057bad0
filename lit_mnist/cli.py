"""``python -m lit_mnist``: LightningCLI with this project's defaults.

Subcommands are Lightning's ``fit``, ``validate``, ``test`` and ``predict``, and ``export``,
``tune`` and ``serve`` (``lit_mnist/export.py``, ``tune.py``, ``serve.py``). On top of them:
runs are logged to TensorBoard under ``lightning_logs/<run name>/version_N/`` (the run name is the
first ``--config`` file's name, else the model class), the best (by ``val/acc``) and last
checkpoints are kept, ``fit`` ends by testing the best checkpoint, ``--ckpt_path last`` finds the
newest ``last.ckpt`` of the run, and problems the user can fix are reported in one sentence.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.fabric.plugins.io import TorchCheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lit_mnist import export
from lit_mnist.callbacks import KerasModelSummary, LineProgressBar, PredictionWriter, TensorBoardFigures
from lit_mnist.checkpoint import AtomicCheckpointIO, check_model_class, find_last, read_checkpoint
from lit_mnist.errors import LitMNISTError
from lit_mnist.models.classifier import MNISTClassifier

#: The top of ``python -m lit_mnist --help``; ``main`` runs the last three subcommands before LightningCLI.
DESCRIPTION = (
    "Train, test and use the lit_mnist seed models. Subcommands: fit, validate, test, predict "
    "(Lightning's, below); export (a checkpoint to ONNX or TorchScript); tune (an Optuna "
    "hyper-parameter search of fit runs); serve (an HTTP API and a draw-a-digit page for a "
    "checkpoint). Each takes --help."
)

#: ``--ckpt_path`` values that name no file; Lightning resolves them itself.
CKPT_KEYWORDS = ("best", "hpc", "registry")


class _Parser(LightningArgumentParser):
    """jsonargparse's parser, minus the 70-line usage it prints before every error message."""

    def print_usage(self, file: Any = None) -> None:
        pass


class _SaveConfigToRunFolder(SaveConfigCallback):
    """Writes ``config.yaml`` into the run's log folder, and nowhere when there is no logger.

    Lightning's callback would otherwise write (and, with ``overwrite``, replace) a ``config.yaml``
    in the current directory, which may be the user's own file.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.logger is not None:
            super().setup(trainer, pl_module, stage)


class LitMNISTCLI(LightningCLI):
    def __init__(self, args: Any = None, run: bool = True) -> None:
        self._same_checkpoint: _SameCheckpointOnEveryRank | None = None
        _quiet_lightning_noise()
        callbacks = [] if sys.stdout.isatty() else [LineProgressBar()]
        callbacks.append(KerasModelSummary())
        super().__init__(
            MNISTClassifier,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            save_config_callback=_SaveConfigToRunFolder,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {
                        "save_dir": "lightning_logs",
                        "name": None,
                        "default_hp_metric": False,
                        "log_graph": True,
                    },
                },
                "callbacks": callbacks,
            },
            parser_kwargs={
                "description": DESCRIPTION,
                "prog": "lit_mnist",
            },
            parser_class=_Parser,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(TensorBoardFigures, "figures")
        parser.set_defaults(
            {
                "data": {"class_path": "lit_mnist.data.MNISTDataModule"},
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-epoch{epoch:02d}-val_acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best checkpoint (the final weights without validation).",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:
            return
        config = self.config[subcommand]
        logger = config.trainer.logger
        init_args = logger.get("init_args", {}) if isinstance(logger, Namespace) else {}
        if "name" in init_args and init_args.name is None:
            init_args.name = run_name(config)
        if "save_dir" in init_args and subcommand == "fit":
            _check_writable(Path(init_args.save_dir))
        self._resolve_ckpt_path(config, logger)

    def _resolve_ckpt_path(self, config: Namespace, logger: Any) -> None:
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None or ckpt_path in CKPT_KEYWORDS:
            return
        last = ckpt_path == "last"
        if last:
            ckpt_path = self._find_last(config, logger)
            if ckpt_path is None:
                self._same_checkpoint = _SameCheckpointOnEveryRank("no last.ckpt (training from scratch)")
                return
        checkpoint = read_checkpoint(ckpt_path)
        wanted = config.model.get("class_path") if isinstance(config.model, Namespace) else None
        check_model_class(checkpoint, ckpt_path, wanted)
        if last:
            # The same run folder, epoch and step: the same checkpoint, on a shared disk or a copy.
            where = Path(ckpt_path).relative_to(logger.init_args.save_dir)
            found = f"{where} (epoch {checkpoint.get('epoch')}, step {checkpoint.get('global_step')})"
            self._same_checkpoint = _SameCheckpointOnEveryRank(found)

    def _find_last(self, config: Namespace, logger: Any) -> Path | None:
        """The newest ``last.ckpt`` of this run name; under ``fit`` the run resumes in its folder."""
        if not isinstance(logger, Namespace) or logger.init_args.get("save_dir") is None:
            raise LitMNISTError("--ckpt_path last needs a logger with a save_dir to find last.ckpt in.")
        run_dir = Path(logger.init_args.save_dir) / (logger.init_args.get("name") or "")
        last = find_last(run_dir)
        if last is None:
            if self.config.subcommand != "fit":
                raise LitMNISTError(f"--ckpt_path last: no last.ckpt under {run_dir}/version_*/checkpoints/.")
            print(f"No last.ckpt under {run_dir}/version_*/checkpoints/: training from scratch.")
            config.ckpt_path = None
            return None
        config.ckpt_path = str(last)
        if self.config.subcommand == "fit":
            logger.init_args.version = last.parent.parent.name
            print(f"Resuming from {last}")
        return last

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        if self._same_checkpoint is not None:
            trainer.callbacks.append(self._same_checkpoint)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        if trainer.loggers:
            trainer.callbacks.append(LearningRateMonitor())
        return trainer

    def before_predict(self) -> None:
        self.trainer.callbacks.append(PredictionWriter())

    def after_fit(self) -> None:
        if not self.config.fit.test_after_fit or self.trainer.interrupted:
            return
        checkpoint = self.trainer.checkpoint_callback
        best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
        if best:
            what = f"the best checkpoint {best}"
        else:
            what = "the final weights (no validation score picked a best checkpoint)"
        if self.trainer.is_global_zero:
            print(f"Testing {what}")
        results = self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None)
        if results and self.trainer.is_global_zero:
            metrics = results[0]
            print(f"Test accuracy {100 * metrics['test/acc']:.2f} %, loss {metrics['test/loss']:.4f}")


class _SameCheckpointOnEveryRank(L.Callback):
    """Stops a distributed run whose ranks resolved ``--ckpt_path last`` to different checkpoints.

    Each rank resolves ``last`` on its own, before the process group exists, in its own view of the
    log folder; a rank that found no file would train from scratch while the others resume. Once
    the group exists (the callbacks' ``setup``, before Lightning loads the checkpoint), the ranks
    compare their choices and all stop with one message if they differ. Every rank attaches this
    callback (they all parse the same ``--ckpt_path last``), so the comparison never waits alone.

    Args:
        found: What this rank resolved ``last`` to: the file under the log folder, its epoch and step.
    """

    def __init__(self, found: str) -> None:
        self.found = found

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size < 2 or not torch.distributed.is_initialized():
            return
        choices: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(choices, self.found)
        if len(set(choices)) > 1:
            listed = "; ".join(f"rank {rank}: {found}" for rank, found in enumerate(choices))
            raise LitMNISTError(
                f"--ckpt_path last resolved to different checkpoints on different ranks ({listed}); "
                "every machine must see the run's log folder at the same path (a shared file system, "
                "or a copy), or pass the same --ckpt_path file to all."
            )


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise LitMNISTError(f"Cannot write to the log folder {folder}: {err.strerror}.") from None


def run_name(config: Namespace) -> str:
    """The first ``--config`` file's stem, else the model class name in lower case."""
    files = config.get("config") or []
    if files:
        return Path(str(files[0])).stem
    class_path = config.model.get("class_path", "model") if isinstance(config.model, Namespace) else "model"
    return class_path.rsplit(".", 1)[-1].lower()


def _quiet_lightning_noise() -> None:
    """Drop Lightning's advertisement line and a deprecation warning it raises itself under torch ≥ 2.13."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # TensorBoard's add_graph traces with torch.jit; PredictionWriter counts rows itself.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices")
    # tune runs each trial's LitMNISTCLI in-process with args while sys.argv holds tune's own.
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")


def _user_error_in(err: BaseException | None) -> LitMNISTError | None:
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LitMNISTError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


#: Words in the errors that gloo and NCCL raise when another process of the run died or stopped answering.
_PEER_FAILURE_MARKERS = ("closed by peer", "reset by peer", "timed out", "timeout", "nccl", "gloo")


def _peer_failure(err: BaseException) -> str | None:
    """One sentence for an error raised because another process of a distributed run failed, else ``None``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 2 or not isinstance(err, RuntimeError):
        return None
    text = str(err)
    distributed_error = getattr(torch.distributed, "DistError", ())
    if not (isinstance(err, distributed_error) or any(m in text.lower() for m in _PEER_FAILURE_MARKERS)):
        return None
    detail = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    detail = detail.split("] ", 1)[-1] if detail.startswith("[") else detail  # drop gloo's source location
    detail = detail.split(". ", 1)[0]  # gloo goes on with advice that is no longer true here
    rank = os.environ.get("RANK", "?")
    return (
        f"rank {rank} of {world_size} stopped: another process of the distributed run died or stopped "
        f"answering ({detail.rstrip('.')}); look in the other machines' logs for the cause."
    )


def main(args: Any = None) -> None:
    """Entry point of ``python -m lit_mnist`` and the ``lit-mnist`` script."""
    argv = sys.argv[1:] if args is None else args
    try:
        if isinstance(argv, list) and argv[:1] == ["export"]:
            return export.main(argv[1:])
        if isinstance(argv, list) and argv[:1] == ["tune"]:
            from lit_mnist import tune  # Optuna is imported only by the command that uses it

            return tune.main(argv[1:])
        if isinstance(argv, list) and argv[:1] == ["serve"]:
            from lit_mnist import serve  # LitServe is imported only by the command that uses it

            return serve.main(argv[1:])
        LitMNISTCLI(args=args)
    except Exception as err:
        message = user_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None


def user_message(err: BaseException) -> str | None:
    """The one sentence to print for an error the user can fix, or ``None`` to show the traceback.

    ``LitMNISTError`` (also wrapped in jsonargparse's ``ValueError``), Lightning's
    ``MisconfigurationException`` (settings that do not go together; its messages say which), a
    distributed peer's failure, and a file that cannot be read or written. ``LIT_MNIST_DEBUG=1``
    keeps the traceback of the last two.
    """
    if isinstance(err, MisconfigurationException):
        return str(err)
    cause = _user_error_in(err)
    if cause is not None:
        return str(cause)
    if os.environ.get("LIT_MNIST_DEBUG"):
        return None
    if isinstance(err, RuntimeError):
        return _peer_failure(err)
    if isinstance(err, OSError) and err.filename is not None:
        return f"cannot use {err.filename}: {err.strerror}."
    return None
