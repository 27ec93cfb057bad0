"""Callbacks the CLI adds to every run, and the moving average of the weights a config can add."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveInt
from lightning.pytorch import callbacks
from lightning.pytorch.callbacks import BasePredictionWriter, ModelSummary, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.model_summary import summarize
from matplotlib.figure import Figure
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from lit_mnist.errors import LitMNISTError
from lit_mnist.models.attribution import heat_map, integrated_gradients
from lit_mnist.models.classifier import MNISTClassifier


class LineProgressBar(ProgressBar):
    """Progress for logs and CI: a line at each quarter of an epoch and one with the epoch's metrics.

    Lightning's tqdm bar writes a new line per refresh when its output is not a terminal; the
    CLI uses this bar instead in that case.

    Args:
        lines_per_epoch: Progress lines per training epoch (before the epoch's summary line).
    """

    def __init__(self, lines_per_epoch: int = 4) -> None:
        super().__init__()
        self.lines_per_epoch = lines_per_epoch
        self._enabled = True
        self._epoch_start = 0.0
        self._total = 0
        self._every = 0
        self._next_line = math.inf

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _print(self, text: str) -> None:
        if self._enabled and self.trainer.is_global_zero:
            print(text, flush=True)

    def _epoch(self, trainer: L.Trainer) -> str:
        return f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        total = self.total_train_batches
        lines = isinstance(total, int) and total >= 2 * self.lines_per_epoch
        self._total = total if lines else 0
        self._every = total // self.lines_per_epoch if lines else 0
        self._next_line = self._every if lines else math.inf

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = batch_idx + 1
        if done < self._next_line:  # all but a few batches per epoch stop here
            return
        self._next_line = (done // self._every + 1) * self._every
        if done < self._total - self._every // 2:
            elapsed = time.perf_counter() - self._epoch_start
            self._print(f"{self._epoch(trainer)}: {done}/{self._total} batches, {elapsed:.1f} s")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if "/" in k}
        shown = "  ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(metrics.items())
        )
        self._print(f"{self._epoch(trainer)} done in {elapsed:.1f} s  {shown}")


def _is_metrics(module: nn.Module) -> bool:
    children = list(module.children())
    return isinstance(module, Metric) or (bool(children) and all(_is_metrics(c) for c in children))


def _keras_shape(shape: Any) -> str:
    if isinstance(shape, list) and shape and all(isinstance(n, int) for n in shape):
        return "(" + ", ".join(["None", *map(str, shape[1:])]) + ")"
    return str(shape)


def keras_summary(model: L.LightningModule, max_depth: int = 2) -> str:
    """A table like Keras' ``model.summary()``: layer (type), output shape, exact parameter count.

    Layers are Lightning's ``ModelSummary`` rows down to ``max_depth`` (indented by depth);
    torchmetrics modules are left out. Output shapes come from a forward pass of the model's
    ``example_input_array``, with its batch dimension shown as ``None`` as Keras does.
    """
    summary = summarize(model, max_depth=max_depth)
    rows = [("Layer (type)", "Output Shape", "Param #")]
    for name, kind, shape, params in zip(
        summary.layer_names, summary.layer_types, summary.out_sizes, summary.param_nums, strict=True
    ):
        if not _is_metrics(model.get_submodule(name)):
            rows.append((f"{'  ' * name.count('.')}{name} ({kind})", _keras_shape(shape), f"{params:,}"))
    widths = [max(len(row[i]) for row in rows) + 3 for i in range(3)]
    table = [" " + "".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    total, trainable = summary.total_parameters, summary.trainable_parameters
    return "\n".join(
        [
            f'Model: "{type(model).__name__}"',
            "_" * sum(widths),
            table[0],
            "=" * sum(widths),
            *table[1:],
            "=" * sum(widths),
            f"Total params: {total:,}",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}",
            "_" * sum(widths),
        ]
    )


class KerasModelSummary(ModelSummary):
    """``fit`` starts by printing ``keras_summary`` of the model instead of Lightning's table.

    Args:
        max_depth: How deep into the module tree to list layers: 2 lists those inside ``net``;
            0 prints nothing.
    """

    def __init__(self, max_depth: int = 2) -> None:
        super().__init__(max_depth=max_depth)
        self.max_depth = max_depth

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.max_depth and trainer.is_global_zero:
            print(keras_summary(pl_module, self.max_depth), flush=True)


class LearningRateMonitor(callbacks.LearningRateMonitor):
    """Lightning's learning-rate logger, which does nothing in a run without a logger.

    Lightning's stops such a run with an error; this one lets ``--trainer.logger false`` work
    without also removing it from ``trainer.callbacks``.

    Args:
        logging_interval: ``step``, ``epoch``, or ``None`` for the scheduler's own interval.
        log_momentum: Also log the momentum (or Adam's beta1).
        log_weight_decay: Also log the weight decay.
    """

    def __init__(
        self, logging_interval: str | None = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        super().__init__(logging_interval, log_momentum, log_weight_decay)

    def on_train_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class EMAWeightAveraging(callbacks.WeightAveraging):
    """An exponential moving average of the weights, updated after every optimizer step in one pass.

    Lightning's ``EMAWeightAveraging`` updates each tensor as ``decay * average + (1 - decay) *
    weights``, several kernels and two temporaries per tensor at every step; this one hands
    ``AveragedModel`` PyTorch's ``get_ema_multi_avg_fn``, one in-place ``lerp`` over all the tensors,
    and gives the same average to float rounding. Lightning's ``WeightAveraging`` does the rest:
    validation, checkpoints and so every command read the average.

    Args:
        decay: Weight of the average so far at each optimizer step: 0.999 averages over about the
            last 1,000 steps.
    """

    def __init__(self, decay: ClosedUnitInterval = 0.999) -> None:
        super().__init__(multi_avg_fn=get_ema_multi_avg_fn(decay))


class SameCheckpointOnEveryRank(L.Callback):
    """Stops a distributed run whose processes started from different checkpoints.

    Each process resolves ``--ckpt_path last`` on its own, in its own view of the log folder; a
    process that found no file would train from scratch while the others resume. Once every
    process has loaded its checkpoint (or none), they compare which one (its file from the run
    folder on, its epoch and step) and all stop with one message if they differ. One process: no
    check.
    """

    def __init__(self) -> None:
        self.loaded = "no last.ckpt (training from scratch)"

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The log folder may sit at different paths on different machines: name the file from its
        # run folder on (<run name>/version_N/checkpoints/last.ckpt).
        where = Path(*Path(str(trainer.ckpt_path)).parts[-4:])
        self.loaded = f"{where} (epoch {checkpoint.get('epoch')}, step {checkpoint.get('global_step')})"

    def _compare(self, trainer: L.Trainer) -> None:
        if trainer.world_size < 2 or not torch.distributed.is_initialized():
            return
        choices: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(choices, self.loaded)
        if len(set(choices)) > 1:
            listed = "; ".join(f"rank {rank}: {found}" for rank, found in enumerate(choices))
            raise LitMNISTError(
                f"--ckpt_path last resolved to different checkpoints on different ranks ({listed}); "
                "every machine must see the run's log folder at the same path (a shared file system, "
                "or a copy), or pass the same --ckpt_path file to all."
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compare(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compare(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._compare(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._compare(trainer)


def tensorboard_logger(trainer: L.Trainer) -> TensorBoardLogger | None:
    """The trainer's first ``TensorBoardLogger``, if it has one."""
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _as_images(x: Any) -> torch.Tensor | None:
    """``[B, H, W]`` from a batch of grey images ``[B, 1, H, W]`` or ``[B, H, W]``; else ``None``."""
    if not isinstance(x, torch.Tensor):
        return None
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    return x if x.ndim == 3 else None


def image_grid(
    images: torch.Tensor, titles: Sequence[str], columns: int = 8, attributions: torch.Tensor | None = None
) -> Figure:
    """A figure of grey images ``[N, H, W]`` (each scaled to its own range), a title under each.

    The images and a white band under each for its title are one ``make_grid`` picture on one
    axes: drawing it costs a fraction of what a subplot per image does. With ``attributions``
    (``[N, H, W]``) each image is drawn as its ``heat_map``.
    """
    images = images.detach().float().cpu()
    low = images.amin(dim=(1, 2), keepdim=True)
    images = (images - low) / (images.amax(dim=(1, 2), keepdim=True) - low).clamp_min(1e-12)
    height = images.shape[1]
    band = height // 3
    cells = images[:, None].expand(-1, 3, -1, -1) if attributions is None else heat_map(images, attributions)
    grid = make_grid(F.pad(cells, (0, 0, 0, band), value=1.0), nrow=columns, pad_value=1.0).permute(1, 2, 0)
    used_columns, rows = min(columns, len(images)), math.ceil(len(images) / columns)
    figure = Figure(figsize=(1.1 * used_columns, 1.1 * rows * (height + band) / height), dpi=80)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.imshow(grid.numpy(), extent=(0, used_columns, rows, 0), aspect="auto")
    title_y = (height + band / 2) / (height + band)
    for i, title in enumerate(titles):
        ax.text(i % columns + 0.5, i // columns + title_y, title, ha="center", va="center", fontsize=7)
    ax.axis("off")
    return figure


class TensorBoardFigures(L.Callback):
    """Figures for TensorBoard: what the data looks like and where the model goes wrong.

    * ``train/samples``: a grid of the first training batch's images with their labels, as the
      model gets them (distorted, when the data module augments them), once per ``fit``;
    * ``val/confusion_matrix`` and ``val/worst_errors`` after the validation of every
      ``every_n_epochs``-th epoch and of the last one (``max_epochs``; not the sanity check),
      ``test/...`` after testing: torchmetrics' confusion-matrix plot, and the
      ``num_worst`` misclassified images whose true class got the lowest probability, titled
      with the predicted and the true label; with ``attributions``, each drawn with the
      Integrated Gradients of its predicted class over it (``lit_mnist.models.attribution``: red
      ink raised the wrong answer's score, blue ink lowered it).

    It needs a ``TensorBoardLogger`` among the trainer's loggers and does nothing without one.
    The evaluation figures are built from what ``validation_step`` / ``test_step`` return, which
    must be class probabilities ``[B, C]`` (``MNISTClassifier`` returns them), so there is no
    second forward pass; training steps cost nothing. Image grids are drawn only for grey image
    batches. Under DDP the confusion matrix covers all processes and the worst images those of
    process 0. Drawing the two evaluation figures takes about half a second on a CPU core, which is
    why they are not drawn after every epoch by default.

    Args:
        num_samples: Training images in ``train/samples``.
        num_worst: Misclassified images in each ``worst_errors`` grid.
        every_n_epochs: Draw the validation figures after every n-th epoch (and the last).
        attributions: Draw over each digit in ``worst_errors`` which pixels its wrong answer
            rests on (Integrated Gradients against a blank image, as ``serve``'s page does):
            16 forward and backward passes per digit, once per figure.
    """

    def __init__(
        self,
        num_samples: NonNegativeInt = 32,
        num_worst: NonNegativeInt = 16,
        every_n_epochs: PositiveInt = 5,
        attributions: bool = False,
    ) -> None:
        self.num_samples = num_samples
        self.num_worst = num_worst
        self.every_n_epochs = every_n_epochs
        self.attributions = attributions
        self._active = False
        self._draw_samples = False
        self._confmat: MulticlassConfusionMatrix | None = None
        self._worst: tuple[torch.Tensor, ...] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw_samples = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._draw_samples:
            return
        self._draw_samples = False
        logger = tensorboard_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            return
        images = _as_images(batch[0])
        if images is None:
            return
        n = min(len(images), self.num_samples)
        titles = [str(int(label)) for label in batch[1][:n]]
        logger.experiment.add_figure(
            "train/samples", image_grid(images[:n], titles), global_step=trainer.global_step
        )

    def _start(self, trainer: L.Trainer) -> None:
        epoch = trainer.current_epoch + 1
        wanted = (
            trainer.state.fn != "fit"
            or epoch % self.every_n_epochs == 0
            or epoch == trainer.max_epochs
            or (trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps)
        )
        self._active = wanted and tensorboard_logger(trainer) is not None and not trainer.sanity_checking
        self._confmat = None
        self._worst = None

    def _update(self, probs: Any, batch: Any) -> None:
        if not self._active or not isinstance(probs, torch.Tensor) or probs.ndim != 2:
            return
        targets = batch[1]
        if self._confmat is None:
            self._confmat = MulticlassConfusionMatrix(probs.shape[1], validate_args=False).to(probs.device)
        self._confmat.update(probs, targets)
        images = _as_images(batch[0])
        if images is None:
            return
        preds = probs.argmax(dim=1)
        wrong = preds != targets
        true_prob = probs.gather(1, targets[:, None]).squeeze(1)
        found = (true_prob[wrong], images[wrong], preds[wrong], targets[wrong])
        if self._worst is not None:
            found = tuple(torch.cat(pair) for pair in zip(self._worst, found, strict=True))
        keep = found[0].argsort()[: self.num_worst]
        self._worst = tuple(t[keep] for t in found)

    def _log(self, trainer: L.Trainer, split: str) -> None:
        logger = tensorboard_logger(trainer)
        if not self._active or self._confmat is None or logger is None:
            return
        matrix = self._confmat.compute()
        if not trainer.is_global_zero:
            return
        figure = Figure(figsize=(5, 5), dpi=80, layout="constrained")
        self._confmat.plot(val=matrix, ax=figure.add_subplot())
        step = trainer.global_step
        logger.experiment.add_figure(f"{split}/confusion_matrix", figure, global_step=step)
        if self._worst is not None and len(self._worst[0]):
            _, images, preds, targets = self._worst
            titles = [f"pred {p} / true {t}" for p, t in zip(preds.tolist(), targets.tolist(), strict=True)]
            maps = None
            if self.attributions and isinstance(trainer.lightning_module, MNISTClassifier):
                maps = integrated_gradients(trainer.lightning_module, images[:, None], preds)[:, 0]
            grid = image_grid(images, titles, attributions=maps)
            logger.experiment.add_figure(f"{split}/worst_errors", grid, global_step=step)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update(outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, "val")

    on_test_epoch_start = on_validation_epoch_start
    on_test_batch_end = on_validation_batch_end

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, "test")


class PredictionWriter(BasePredictionWriter):
    """Writes what ``predict`` returns to a CSV file in the run's directory and prints its path.

    One row per input, in order: ``index`` (its position in the predicted set: the MNIST test
    set, or the name-sorted files of ``data.predict_dir``), ``file`` (when the data module has
    ``predict_names``), ``label`` (the predicted class), ``prob_0 … prob_{C-1}`` (the class
    probabilities from ``predict_step``, the softmax of the logits) and ``true_label`` when the
    batches carry labels. The run's directory is the trainer's ``log_dir``
    (``lightning_logs/<run>/version_N/`` with the default logger; the working directory with
    none). Rows are written batch by batch. Meant for one process: under DDP every process would
    write its own shard to the same file.

    Args:
        filename: The CSV file's name inside the run's directory.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        self.filename = filename
        self.path: Path | None = None
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._count = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        directory = Path(trainer.log_dir or trainer.default_root_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / self.filename
        if self.path.exists():
            raise LitMNISTError(
                f"{self.path} already exists: move it away, or predict with a logger (a new run folder)."
            )
        self._file = self.path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._count = 0

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        probs = prediction["probs"].float().cpu()
        preds = prediction["pred"].cpu().tolist()
        targets = prediction["target"].cpu().tolist() if "target" in prediction else None
        names = getattr(trainer.datamodule, "predict_names", None)
        if self._count == 0:
            header = ["index", *(["file"] if names else []), "label"]
            header += [f"prob_{k}" for k in range(probs.shape[1])]
            self._writer.writerow(header + (["true_label"] if targets is not None else []))
        for i, (row_probs, pred) in enumerate(zip(probs.tolist(), preds, strict=True)):
            index = self._count + i
            row = [index, *([names[index]] if names else []), pred, *(f"{p:.7g}" for p in row_probs)]
            self._writer.writerow(row + ([targets[i]] if targets is not None else []))
        self._count += len(preds)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()
        print(f"Wrote {self._count} predictions to {self.path}", flush=True)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._close()
