"""LightningCLI with this project's defaults: the ``fit``, ``validate``, ``test`` and ``predict`` commands.

Runs are logged to TensorBoard under ``lightning_logs/<run name>/version_N/`` (``run_name``), the
best (by ``val/acc``) and last checkpoints are kept, ``fit`` ends by testing the best checkpoint,
and ``--ckpt_path last`` finds the newest ``last.ckpt`` of the run. The callbacks and the
checkpoint writer the CLI adds are Trainer defaults: ``--print_config`` shows them and a config
can change them (``trainer.callbacks``, ``trainer.plugins``).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import ArgumentParser, Namespace, auto_cli
from jsonargparse.typing import PositiveInt
from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.callbacks import ModelCheckpoint, ModelSummary, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from lit_mnist import threads
from lit_mnist.callbacks import TensorBoardFigures
from lit_mnist.checkpoint import (
    SAVE_DIR,
    check_model_class,
    find_last,
    import_class_path,
    read_checkpoint,
    resolve_ckpt_path,
    run_name,
)
from lit_mnist.errors import LitMNISTError
from lit_mnist.models.classifier import MNISTClassifier

#: ``--ckpt_path`` values that name no file; Lightning resolves them itself.
CKPT_KEYWORDS = ("best", "hpc", "registry")
#: The top of ``python -m lit_mnist --help``.
DESCRIPTION = (
    "Train and use the lit_mnist models. Commands: fit, validate, test, predict (Lightning's), "
    "export (a checkpoint to ONNX or TorchScript), tune (an Optuna search over fit runs), serve (an "
    "HTTP API and a draw-a-digit page). Each takes --help."
)
#: Lightning's own subcommands, run by ``LitMNISTCLI``.
LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
#: ``--checkpoint.filename``'s default: the best checkpoint by validation accuracy.
BEST_FILENAME = "best-epoch{epoch:02d}-val_acc{val/acc:.4f}"
#: The default name instead, with ``--checkpoint.monitor null`` (the checkpoint of the last epoch).
UNMONITORED_FILENAME = "epoch{epoch:02d}"


#: Lines of jsonargparse's report of a refused value that say nothing about the value itself.
_REPORT_FRAMING = (
    "Does not validate",
    "Subtypes",
    "Errors",
    "Problem with given class_path",
    "Expected a <class 'NoneType'>",
    "Given value",
)


def refusal(message: str) -> tuple[str, str] | None:
    """The option's key and the reason in jsonargparse's nested report of a refused value, if it is one.

    ``Parser key "data": ... Parser key "batch_size": Not of type PositiveInt: 0 does not conform
    to restriction v>0`` gives ``("data.batch_size", "Not of type PositiveInt: 0 ...")``.
    """
    if not message.startswith('Parser key "'):
        return None
    keys, reason = [], None
    for line in message.splitlines():
        text = line.strip(" -")
        found = re.match(r'Parser key "([^"]+)":\s*(.*)', text)
        if found:
            keys.append(found.group(1))
            text = found.group(2)
        if text and reason is None and not text.startswith(_REPORT_FRAMING):
            reason = text
    return (".".join(keys), reason) if reason else None


def one_line(message: str) -> str:
    """jsonargparse's nested report of a refused value (``refusal``) as one line; others as they are."""
    refused = refusal(message)
    return f'Parser key "{refused[0]}": {refused[1]}' if refused else message


class CommandParser(LightningArgumentParser):
    """jsonargparse's parser for every command, minus the long usage it prints before an error.

    Args:
        commands: The project's other commands (name → one line of help), listed beside
            Lightning's in ``--help``; their own options are in ``lit_mnist <name> --help``.
        *args: ``LightningArgumentParser``'s.
        **kwargs: ``LightningArgumentParser``'s.
    """

    def __init__(self, *args: Any, commands: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = dict(commands or {})

    def print_usage(self, file: Any = None) -> None:
        pass

    def dump(self, cfg: Namespace, *args: Any, **kwargs: Any) -> str:
        """The config as YAML, with the thread count the run will take (``--print_config`` shows it)."""
        with warnings.catch_warnings():
            # Lightning's SaveConfigCallback still passes skip_none, which jsonargparse 4.49 deprecated.
            warnings.filterwarnings("ignore", message=r"\s*skip_none parameter was deprecated")
            return super().dump(with_threads(cfg), *args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> Any:
        super().error(one_line(message), ex)

    def add_subcommands(self, required: bool = True, dest: str = "subcommand", **kwargs: Any) -> Any:
        subcommands = super().add_subcommands(required=required, dest=dest, **kwargs)
        for name, help_ in self.commands.items():
            listed = ArgumentParser(description=f"{help_} Its options: lit_mnist {name} --help.")
            subcommands.add_subcommand(name, listed, help=help_)
        return subcommands


def run_command(function: Callable[..., Any], args: Sequence[str], name: str) -> Any:
    """Run a typed function as the command ``lit_mnist <name>``.

    Its options are its parameters (types checked by jsonargparse), its ``--help`` is its
    docstring, ``Args:`` included, and it takes ``--config`` (a YAML file of its options) and
    ``--print_config``, like Lightning's commands.

    Args:
        function: The command, a function whose parameters all have types.
        args: The command line after the command's name.
        name: The command's name.
    """
    return auto_cli(
        function,
        args=list(args),
        as_positional=False,
        parser_class=CommandParser,
        prog=f"lit_mnist {name}",
        description="",  # the function's docstring
    )


class _SaveConfigToRunFolder(SaveConfigCallback):
    """Writes ``config.yaml`` into the run's log folder, and nowhere when there is no logger.

    Lightning's callback would otherwise write (and, with ``overwrite``, replace) a ``config.yaml``
    in the current directory, which may be the user's own file.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.logger is not None:
            super().setup(trainer, pl_module, stage)


def default_callbacks() -> list[dict[str, Any]]:
    """The callbacks every run gets unless its config sets ``trainer.callbacks`` (``+=`` adds to them).

    A progress bar (Lightning's tqdm bar on a terminal, ``LineProgressBar``'s few lines per epoch
    in a log), the Keras-like model summary, the learning rates in TensorBoard, ``predictions.csv``
    for ``predict``, and the check that every process of a distributed run resumed from the
    same checkpoint.
    """
    progress = (
        "lightning.pytorch.callbacks.TQDMProgressBar"
        if sys.stdout.isatty()
        else ("lit_mnist.callbacks.LineProgressBar")
    )
    names = [
        progress,
        "lit_mnist.callbacks.KerasModelSummary",
        "lit_mnist.callbacks.LearningRateMonitor",
        "lit_mnist.callbacks.PredictionWriter",
        "lit_mnist.callbacks.SameCheckpointOnEveryRank",
    ]
    return [{"class_path": name} for name in names]


#: Trainer flags that turn a kind of callback off, and that kind: ``default_callbacks`` has one of each.
SWITCHED_CALLBACKS = {"enable_progress_bar": ProgressBar, "enable_model_summary": ModelSummary}


def _drop_switched_off_callbacks(trainer: Namespace) -> None:
    """``--trainer.enable_progress_bar false`` and ``enable_model_summary false`` also take the
    default progress bar and summary out of the callbacks.

    Lightning refuses a progress bar callback with its flag off, and keeps a summary callback
    (printing the summary) with its flag off.
    """
    off = tuple(kind for flag, kind in SWITCHED_CALLBACKS.items() if trainer.get(flag) is False)
    if not off or not trainer.get("callbacks"):
        return
    kept = []
    for callback in trainer.callbacks:
        class_path = callback.get("class_path") if isinstance(callback, Namespace) else None
        callback_class = import_class_path(class_path) if class_path else type(callback)
        if not (isinstance(callback_class, type) and issubclass(callback_class, off)):
            kept.append(callback)
    trainer.callbacks = kept


def _name_unmonitored_checkpoints(config: Namespace) -> None:
    """``--checkpoint.monitor null`` keeps the final weights: the default name drops the metric.

    The default name formats ``val/acc``; with nothing monitored Lightning would write it as 0.
    A name the user gives is kept.
    """
    checkpoint = config.get("checkpoint")
    if checkpoint is not None and checkpoint.monitor is None and checkpoint.filename == BEST_FILENAME:
        checkpoint.filename = UNMONITORED_FILENAME


def _keep_no_checkpoints(config: Namespace) -> None:
    """``--trainer.enable_checkpointing false``: the CLI's ``ModelCheckpoint`` saves nothing.

    Lightning refuses any ``ModelCheckpoint`` with the flag off, and LightningCLI always adds the
    one that ``--checkpoint.*`` configures; so the flag is turned back on and that callback keeps
    no best and no last checkpoint.
    """
    if config.trainer.get("enable_checkpointing") is not False or config.get("checkpoint") is None:
        return
    config.trainer.enable_checkpointing = True
    config.checkpoint.save_top_k, config.checkpoint.save_last, config.checkpoint.monitor = 0, False, None


def _settled(config: Namespace) -> Namespace:
    """One command's parsed ``config`` with what its flags imply: threads, callbacks, checkpoints."""
    config = with_threads(config)
    _drop_switched_off_callbacks(config.trainer)
    _keep_no_checkpoints(config)
    _name_unmonitored_checkpoints(config)
    return config


class LitMNISTCLI(LightningCLI):
    """The project's LightningCLI: its models and data modules, logging, checkpoints and checks.

    Args:
        args: The command line after the program's name (``["fit", "--config", ...]``), or a
            dict / ``Namespace`` as LightningCLI takes it; ``None`` reads ``sys.argv``.
        run: Run the subcommand (``False``: only build the model, data module and Trainer).
        commands: The project's other commands (name → one line of help), listed in ``--help``.
    """

    def __init__(self, args: Any = None, run: bool = True, commands: Mapping[str, str] | None = None) -> None:
        configure_process()
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
                        "save_dir": SAVE_DIR,
                        "name": None,
                        "default_hp_metric": False,
                        "log_graph": True,
                    },
                },
                "plugins": [{"class_path": "lit_mnist.checkpoint.AtomicCheckpointIO"}],
            },
            parser_kwargs={"prog": "lit_mnist", "description": DESCRIPTION, "commands": commands},
            parser_class=CommandParser,
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(TensorBoardFigures, "figures")
        parser.set_defaults(
            {
                "trainer.callbacks": default_callbacks(),
                "data": {"class_path": "lit_mnist.data.MNISTDataModule"},
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": BEST_FILENAME,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=True,
            help="After fit, test the best checkpoint (the final weights without validation).",
        )
        parser.add_argument(
            "--threads",
            type=PositiveInt | None,
            default=None,
            help="CPU threads of PyTorch's kernels in each of the run's processes. Default: OMP_NUM_THREADS "
            "if set, otherwise the cores that other programs left idle when the command started, shared by "
            "the run's CPU processes (DDP).",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand is None:  # run=False: the config of one command
            self.config = _settled(self.config)
            return
        if subcommand not in LIGHTNING_COMMANDS:
            raise LitMNISTError(f"Put the command first: python -m lit_mnist {subcommand} ...")
        self.config[subcommand] = config = _settled(self.config[subcommand])
        _check_launcher(config.trainer)
        logger = config.trainer.logger
        init_args = logger.get("init_args", {}) if isinstance(logger, Namespace) else {}
        if "name" in init_args and init_args.name is None:
            model = config.model.get("class_path") if isinstance(config.model, Namespace) else None
            init_args.name = run_name(config.get("config") or [], model)
        if "save_dir" in init_args and subcommand == "fit":
            _check_writable(Path(init_args.save_dir))
        self._resolve_ckpt_path(config, logger)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        threads.use((self.config[self.subcommand] if self.subcommand else self.config).threads)
        if self.subcommand in ("validate", "test", "predict"):
            # Only fit writes checkpoints; the writer LightningCLI adds would merely restore its
            # state from --ckpt_path and warn that the run's folder changed.
            self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, ModelCheckpoint)]

    def _resolve_ckpt_path(self, config: Namespace, logger: Any) -> None:
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None or ckpt_path in CKPT_KEYWORDS:
            return
        if ckpt_path == "last":
            ckpt_path = self._find_last(config, logger)
            if ckpt_path is None:
                return
        checkpoint = read_checkpoint(ckpt_path)
        wanted = config.model.get("class_path") if isinstance(config.model, Namespace) else None
        check_model_class(checkpoint, ckpt_path, wanted)

    def _find_last(self, config: Namespace, logger: Any) -> Path | None:
        """The newest ``last.ckpt`` of this run name; under ``fit`` the run resumes in its folder."""
        if not isinstance(logger, Namespace) or logger.init_args.get("save_dir") is None:
            raise LitMNISTError("--ckpt_path last needs a logger with a save_dir to find last.ckpt in.")
        run_dir = Path(logger.init_args.save_dir) / (logger.init_args.get("name") or "")
        if self.config.subcommand != "fit":
            config.ckpt_path = str(resolve_ckpt_path("last", run_dir))
            return Path(config.ckpt_path)
        last = find_last(run_dir)
        if last is None:
            print(f"No last.ckpt under {run_dir}/version_*/checkpoints/: training from scratch.")
            config.ckpt_path = None
            return None
        config.ckpt_path = str(last)
        logger.init_args.version = last.parent.parent.name
        print(f"Resuming from {last}")
        return last

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


def with_threads(config: Namespace) -> Namespace:
    """``config`` with ``threads`` decided (``threads.default_threads``) where the user left it unset.

    A run of ``trainer.devices`` CPU processes shares the idle cores among them, and so do the processes
    a launcher started on this machine (torchrun's ``LOCAL_WORLD_SIZE``).
    """
    if "threads" not in config or config.threads is not None:
        return config
    trainer = config.get("trainer") or Namespace()
    devices = trainer.get("devices")
    processes = devices if trainer.get("accelerator") == "cpu" and isinstance(devices, int) else 1
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", processes))
    config = config.clone()
    config.threads = threads.default_threads(processes)
    return config


def _check_launcher(trainer: Namespace) -> None:
    """Refuse a run over several machines that no launcher started: it would wait for the others."""
    num_nodes = trainer.get("num_nodes") or 1
    launchers = (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment)
    launched = any(env.detect() for env in launchers)
    if num_nodes > 1 and not launched and "NODE_RANK" not in os.environ:
        raise LitMNISTError(
            f"trainer.num_nodes is {num_nodes} but no launcher started this process: start the same command "
            "on every machine with torchrun (python -m torch.distributed.run --nnodes ... -m lit_mnist ...) "
            "or srun (configs/trainer/multinode.sbatch), or set --trainer.num_nodes 1."
        )


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise LitMNISTError(f"Cannot write to the log folder {folder}: {err.strerror}.") from None


@functools.cache
def configure_process() -> None:
    """Once per process: hide library noise the user cannot act on, and torch's NVML check.

    Drops Lightning's advertisement line, its note that a summary callback is already there, and
    the warnings that Lightning and torch raise about their own code. Importing Lightning sets
    ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` (so that looking for a GPU does not initialise CUDA, which
    would poison ``fork``); on a machine without a CUDA device torch then loads NVML afresh at
    every look, which ``Optimizer.step`` does at every step, so it is set back to 0 there.
    """
    # Lightning's advertisement, and its note that the Keras-like summary replaces its own.
    noise = ("litlogger", "already configured with model summary callbacks")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not any(text in record.getMessage() for text in noise)
    )
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # TensorBoard's add_graph traces with torch.jit; PredictionWriter counts rows itself.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Couldn't infer the batch indices")
    # tune runs each trial's LitMNISTCLI in-process with args while sys.argv holds tune's own.
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    # Lightning's weight averaging (configs/cnn_drawn.yaml) warns that it cannot shard a model that has
    # configure_model (none here is sharded), and that test, validate and predict cannot restore the
    # average's own state (they read the average itself, which is what a checkpoint's weights are).
    warnings.filterwarnings("ignore", message=r"You're using the WeightAveraging callback")
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and not torch.cuda.is_available():
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
