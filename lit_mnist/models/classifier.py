"""The one LightningModule every seed model shares: loss, metrics, logging and the optimizer."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_mnist.errors import LitMNISTError


def _describe(value: Any) -> Any:
    """A callable hyperparameter as plain text, so checkpoints hold only plain data."""
    if value is None or isinstance(value, (str, int, float, bool, dict, list)):
        return value
    func = getattr(value, "func", value)
    name = f"{func.__module__}.{func.__qualname__}" if hasattr(func, "__qualname__") else repr(func)
    keywords = getattr(value, "keywords", None)
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in keywords.items())})" if keywords else name


class MNISTClassifier(L.LightningModule):
    """Trains ``net`` (logits out) with cross-entropy and reports loss and accuracy per split.

    Subclasses only build their network and pass it here; this class owns the loss, the
    torchmetrics accuracy, the ``train/``, ``val/`` and ``test/`` logging and the optimizer.
    The optimizer (and an optional learning-rate scheduler) arrive as callables, the way
    LightningCLI injects them from a config (``model.init_args.optimizer``), so a config can swap
    Adam, RMSprop or SGD and their arguments without touching code.

    Inputs are float images ``[B, 1, 28, 28]`` in [0, 1] (the data module scales them).

    Networks whose outputs are not logits override ``compute_loss`` and ``probabilities``;
    ``optimizer=None`` is for subclasses that update their weights themselves (manual
    optimization), and makes ``configure_optimizers`` return nothing.

    ``steps_per_execution`` is Keras' ``compile`` option of that name: each call Lightning makes
    into ``training_step`` trains on that many batches, one optimizer step per batch, so
    Lightning's per-call cost (hooks, progress tracking, its optimizer closure) is paid once per
    ``steps_per_execution`` batches. The batches, their order and the updates are the same as
    with 1, and so are the weights. The module then uses Lightning's manual optimization and
    its ``dataloader_iter`` training step: the Trainer's ``gradient_clip_val`` and
    ``accumulate_grad_batches`` are not available, ``ReduceLROnPlateau`` is refused, other
    learning-rate schedulers are stepped here at their interval, callbacks'
    ``on_train_batch_start/end`` run once per call (with its last batch), and training metrics
    are updated once per call. As in Keras, where no per-batch callback runs inside one
    execution, the per-step hooks (``on_before_backward``, ``on_after_backward``,
    ``on_before_optimizer_step``) are skipped on one device without a gradient scaler, where
    the steps call ``backward()`` and the optimizer directly.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable | None = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        num_classes: int = 10,
        steps_per_execution: int = 1,
    ) -> None:
        super().__init__()
        if steps_per_execution < 1:
            raise LitMNISTError(f"steps_per_execution must be 1 or more, got {steps_per_execution}.")
        self.save_hyperparameters(ignore=["net"])
        for key in ("optimizer", "lr_scheduler"):
            if key in self.hparams:
                self.hparams[key] = _describe(self.hparams[key])
        self.net = net
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.example_input_array = torch.zeros(1, 1, 28, 28)
        self.metrics = nn.ModuleDict()
        for split in ("train", "val", "test"):
            self.metrics[f"{split}_loss"] = MeanMetric(nan_strategy="disable")
            self.metrics[f"{split}_acc"] = MulticlassAccuracy(
                num_classes, average="micro", validate_args=False
            )
        self._logged_this_epoch: set[str] = set()
        self.steps_per_execution = steps_per_execution
        if steps_per_execution > 1:
            self.automatic_optimization = False
            # Lightning passes its batch iterator to a training_step with a ``dataloader_iter`` argument.
            self.training_step = self._training_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits ``outputs`` against the class labels ``targets``."""
        return F.cross_entropy(outputs, targets)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, num_classes]`` from the network's outputs (softmax of logits)."""
        return outputs.softmax(dim=-1)

    def _step(self, batch: Any, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss and detached class probabilities; updates and logs the split's metrics."""
        x, y = batch[0], batch[1]
        outputs = self(x)
        loss = self.compute_loss(outputs, y)
        probs = self.probabilities(outputs.detach())
        self._update_metrics(split, loss.detach(), probs, y, len(y))
        return loss, probs

    def _update_metrics(
        self, split: str, loss: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor, weight: Any
    ) -> None:
        """Add batches' mean losses (weighted by ``weight``, their sizes) and predictions to the metrics."""
        loss_metric, acc_metric = self.metrics[f"{split}_loss"], self.metrics[f"{split}_acc"]
        loss_metric.update(loss, weight=weight)
        acc_metric.update(probs, targets)
        if split not in self._logged_this_epoch:
            # Lightning computes a logged Metric over all of its updates at the end of the epoch, so
            # logging it once per epoch is enough and saves the per-call cost of self.log at every step.
            self._logged_this_epoch.add(split)
            for name, metric in (("loss", loss_metric), ("acc", acc_metric)):
                self.log(
                    f"{split}/{name}",
                    metric,
                    on_step=False,
                    on_epoch=True,
                    prog_bar=split != "test",
                    batch_size=len(targets),  # unused for a Metric, but needed with dataloader_iter
                )

    def _training_steps(self, dataloader_iter: Iterator) -> None:
        """``training_step`` for ``steps_per_execution`` > 1: up to that many batches, a step each."""
        trainer = self.trainer
        optimizer = self.optimizers()
        # On one device without a gradient scaler, backward() and the optimizer's step() are all
        # that Lightning's wrappers would do, less their per-step hooks; anywhere else (DDP, XLA,
        # float16 loss scaling) every step goes through the wrappers.
        direct = type(trainer.strategy) is SingleDeviceStrategy and (
            getattr(trainer.precision_plugin, "scaler", None) is None
        )
        step_schedulers = [c for c in trainer.lr_scheduler_configs if c.interval == "step"]
        losses, probs, targets = [], [], []
        for batch, _, _ in itertools.islice(dataloader_iter, self.steps_per_execution):
            batch = self._on_before_batch_transfer(trainer.precision_plugin.convert_input(batch))
            x, y = trainer.strategy.batch_to_device(batch)[:2]
            outputs = self(x)
            loss = self.compute_loss(outputs, y)
            optimizer.zero_grad()
            if direct:
                loss.backward()
                optimizer.optimizer.step()
                self._count_optimizer_step()
            else:
                self.manual_backward(loss)
                optimizer.step()
            for config in step_schedulers:
                if trainer.global_step % config.frequency == 0:
                    config.scheduler.step()
            losses.append(loss.detach())
            probs.append(self.probabilities(outputs.detach()))
            targets.append(y)
            if 0 <= trainer.max_steps <= trainer.global_step:
                break
        if not losses:  # an iterator without a length ran out
            return
        sizes = torch.tensor([len(y) for y in targets], device=losses[0].device)
        self._update_metrics("train", torch.stack(losses), torch.cat(probs), torch.cat(targets), sizes)
        if dataloader_iter.done:  # where Lightning steps epoch-interval schedulers: before validation
            for config in trainer.lr_scheduler_configs:
                if config.interval == "epoch" and (self.current_epoch + 1) % config.frequency == 0:
                    config.scheduler.step()

    def _count_optimizer_step(self) -> None:
        """Advance the step counter that Lightning otherwise advances inside ``optimizer.step()``."""
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def on_train_epoch_start(self) -> None:
        self._logged_this_epoch.discard("train")

    def on_test_epoch_start(self) -> None:
        self._logged_this_epoch.discard("test")

    def on_validation_epoch_start(self) -> None:
        self._logged_this_epoch.discard("val")
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._stop_if_diverged()

    def on_train_epoch_end(self) -> None:
        self._stop_if_diverged()

    def on_train_start(self) -> None:
        if self.steps_per_execution > 1 and any(
            isinstance(c.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            for c in self.trainer.lr_scheduler_configs
        ):
            raise LitMNISTError(
                "ReduceLROnPlateau needs steps_per_execution 1 (Lightning steps it from a monitored metric)."
            )

    def _stop_if_diverged(self) -> None:
        """Stop fit once the epoch's training loss is NaN or infinite, before a checkpoint is written.

        Runs where checkpoints are saved next (validation end, or epoch end without validation),
        so the last checkpoint on disk keeps the last good weights.
        """
        train_loss = self.metrics["train_loss"]
        if not train_loss.update_called:
            return
        loss = train_loss.compute()
        if torch.isfinite(loss):
            return
        rates = [group["lr"] for opt in self.trainer.optimizers for group in opt.param_groups]
        lr = rates[0] if rates else getattr(self, "lr", None)
        hint = f" ({lr:g}); try e.g. {lr / 100:g}" if isinstance(lr, float) else ""
        raise LitMNISTError(
            f"Training stopped in epoch {self.current_epoch + 1}: the training loss became {loss.item()}. "
            f"The learning rate is probably too high{hint} "
            "(--model.init_args.optimizer.init_args.lr). Checkpoints of earlier epochs are kept."
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The batch's detached class probabilities, for callbacks' ``on_validation_batch_end``."""
        return self._step(batch, "val")[1]

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The batch's detached class probabilities, for callbacks' ``on_test_batch_end``."""
        return self._step(batch, "test")[1]

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Class probabilities and the predicted class, plus the true label when the batch has one."""
        probs = self.probabilities(self(batch[0]))
        out: dict[str, Any] = {"probs": probs, "pred": probs.argmax(dim=-1)}
        if len(batch) > 1:
            out["target"] = batch[1]
        return out

    def predict_proba(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Class probabilities ``[N, num_classes]`` for a batch of inputs, on the model's device.

        For image models (``example_input_array`` of shape ``[1, 1, H, W]``, 28×28 for MNIST),
        ``x`` is a tensor or numpy array ``[N, H, W]``, ``[N, 1, H, W]`` or one image ``[H, W]``.
        Pixels are read as [0, 255] when ``x`` is uint8 or any value is above 1, else as
        [0, 1], and scaled to [0, 1] as ``MNISTDataModule`` does. They are not standardized:
        for a model trained with ``standardize=True``, standardize the [0, 1] images yourself
        and call the model itself. Other models take ``[N, *example_input_array.shape[1:]]``
        as it is. Runs in evaluation mode without gradients and leaves the model in the mode
        it was in.

        Raises:
            ValueError: ``x`` has another shape; the message names the expected one.
        """
        x = self._model_input(x)
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.probabilities(self(x))
        finally:
            self.train(was_training)

    def predict(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The predicted class ``[N]`` (int64, on the model's device); ``x`` as for ``predict_proba``."""
        return self.predict_proba(x).argmax(dim=-1)

    def _model_input(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(x)
        item = tuple(self.example_input_array.shape[1:])
        if len(item) == 3 and item[0] == 1:
            h, w = item[1:]
            if x.ndim == 2:
                x = x.unsqueeze(0)
            if x.ndim == 3:
                x = x.unsqueeze(1)
            if x.ndim != 4 or tuple(x.shape[1:]) != item:
                raise ValueError(
                    f"expected images of shape [N, {h}, {w}], [N, 1, {h}, {w}] or [{h}, {w}], "
                    f"got {list(x.shape)}"
                )
            scale = x.dtype == torch.uint8 or bool(x.numel() and x.max() > 1)
            x = x.to(self.device, torch.float32)
            return x / 255 if scale else x
        if x.ndim != len(item) + 1 or tuple(x.shape[1:]) != item:
            expected = ", ".join(map(str, item))
            raise ValueError(f"expected inputs of shape [N, {expected}], got {list(x.shape)}")
        return x.to(self.device, torch.float32)

    def configure_optimizers(self) -> Any:
        if self.optimizer is None:
            return None
        optimizer = self.optimizer(self.parameters())
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
