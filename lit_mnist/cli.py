"""``python -m lit_mnist``: LightningCLI with this project's defaults.

Subcommands are Lightning's ``fit``, ``validate``, ``test`` and ``predict``. On top of them:
runs are logged to TensorBoard under ``lightning_logs/<run name>/version_N/`` (the run name is the
first ``--config`` file's name, else the model class), the best (by ``val/acc``) and last
checkpoints are kept, ``fit`` ends by testing the best checkpoint, ``--ckpt_path last`` finds the
newest ``last.ckpt`` of the run, and problems the user can fix are reported in one sentence.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_mnist.callbacks import LineProgressBar
from lit_mnist.errors import LitMNISTError
from lit_mnist.models.classifier import MNISTClassifier

#: ``--ckpt_path`` values that name no file; Lightning resolves them itself.
CKPT_KEYWORDS = ("best", "hpc", "registry")


class LitMNISTCLI(LightningCLI):
    def __init__(self, args: Any = None, run: bool = True) -> None:
        callbacks = [] if sys.stdout.isatty() else [LineProgressBar()]
        super().__init__(
            MNISTClassifier,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                "logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "lightning_logs", "name": None, "default_hp_metric": False},
                },
                "callbacks": callbacks,
            },
            parser_kwargs={"description": "Train, test and use the lit_mnist seed models."},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
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
        self._resolve_ckpt_path(config, logger)

    def _resolve_ckpt_path(self, config: Namespace, logger: Any) -> None:
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None or ckpt_path in CKPT_KEYWORDS:
            return
        if ckpt_path != "last":
            if not Path(ckpt_path).is_file():
                raise LitMNISTError(f"Checkpoint file {ckpt_path} does not exist.")
            return
        if not isinstance(logger, Namespace) or logger.init_args.get("save_dir") is None:
            raise LitMNISTError("--ckpt_path last needs a logger with a save_dir to find last.ckpt in.")
        run_dir = Path(logger.init_args.save_dir) / (logger.init_args.get("name") or "")
        found = sorted(run_dir.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not found:
            if self.config.subcommand != "fit":
                raise LitMNISTError(f"--ckpt_path last: no last.ckpt under {run_dir}/version_*/checkpoints/.")
            print(f"No last.ckpt under {run_dir}/version_*/checkpoints/: training from scratch.")
            config.ckpt_path = None
            return
        config.ckpt_path = str(found[-1])
        if self.config.subcommand == "fit":
            logger.init_args.version = found[-1].parent.parent.name
            print(f"Resuming from {found[-1]}")

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


def run_name(config: Namespace) -> str:
    """The first ``--config`` file's stem, else the model class name in lower case."""
    files = config.get("config") or []
    if files:
        return Path(str(files[0])).stem
    class_path = config.model.get("class_path", "model") if isinstance(config.model, Namespace) else "model"
    return class_path.rsplit(".", 1)[-1].lower()


def main(args: Any = None) -> None:
    """Entry point of ``python -m lit_mnist`` and the ``lit-mnist`` script."""
    try:
        LitMNISTCLI(args=args)
    except LitMNISTError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
