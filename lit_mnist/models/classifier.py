"""The one LightningModule every tutorial model shares: its input, loss, metrics, logging and optimizer."""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from lit_mnist.errors import LitMNISTError

#: Mean and standard deviation of the 60,000 MNIST training pixels scaled to [0, 1].
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

#: Optimizers whose fused kernels run on the CPU and on CUDA; the model picks
#: ``fused=True`` for them where it can (``MNISTClassifier.build_optimizer``).
FUSED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD)
FUSED_DEVICES = {"cpu", "cuda"}

#: Training steps whose metric inputs wait on the device before torchmetrics takes them in one update.
TRAIN_METRICS_EVERY = 100


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
    torchmetrics accuracy, the ``train/``, ``val/`` and ``test/`` logging and the optimizer. It runs
    Lightning's ordinary loop: one ``training_step`` per batch, automatic optimization, so every
    callback hook, ``gradient_clip_val``, ``accumulate_grad_batches`` and the schedulers work as
    Lightning documents them. The model owns its input: ``forward`` takes stored pixels and turns
    them into the network's input with ``prepare_input`` (the one place that does, used by
    training, ``predict``, ``predict_proba``, export and ``serve`` alike), so a checkpoint carries
    everything needed to feed its model. Networks whose outputs are not logits override
    ``compute_loss`` and ``probabilities``. Each split's logged loss and accuracy are torchmetrics'
    values over every sample of the epoch, batches weighted by their size; a training step only
    keeps its loss and outputs on the device, and torchmetrics takes them every
    ``TRAIN_METRICS_EVERY`` steps and after the epoch's last batch, before any callback can read
    the epoch's values.

    Args:
        net: The network, a plain ``nn.Module`` from images to logits (the subclasses build it).
        optimizer: The optimizer as a callable of the parameters; from a config,
            ``model.init_args.optimizer`` with a ``class_path`` such as ``torch.optim.RMSprop`` and
            its ``init_args``. Adam, AdamW and SGD with ``fused`` left unset are fused where
            that can run (``build_optimizer``).
        lr_scheduler: An optional learning-rate scheduler as a callable of the optimizer
            (``model.init_args.lr_scheduler``); Lightning steps it once per epoch.
        num_classes: Number of classes the metrics count.
        compile: Compile the network with ``torch.compile`` (``nn.Module.compile``, in place, so
            checkpoints keep their keys) when Lightning configures the model: ``true`` for the
            default backend (inductor), or a backend's name such as ``aot_eager`` or ``eager``
            (``torch.compiler.list_backends()``; they trace the same graphs and skip code
            generation, for quick checks). Off by default: the first steps pay for compilation,
            and on small CPU models it rarely pays back.
        standardize: Subtract the MNIST training set's mean pixel and divide by its standard
            deviation after scaling pixels to [0, 1] (``prepare_input``).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        num_classes: int = 10,
        compile: bool | str = False,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(compile, str) and compile not in torch.compiler.list_backends(exclude_tags=()):
            backends = ", ".join(["aot_eager", "eager", *torch.compiler.list_backends()])
            raise LitMNISTError(
                f"model.compile is {compile!r}, not a torch.compile backend: use true, false or one of "
                f"{backends}."
            )
        self.save_hyperparameters(ignore=["net"])
        for key in ("optimizer", "lr_scheduler"):
            if key in self.hparams:
                self.hparams[key] = _describe(self.hparams[key])
        self.net = net
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.compile_net = compile
        self.standardize = standardize
        self.example_input_array = torch.zeros(1, 1, 28, 28)
        self.metrics = nn.ModuleDict()
        for split in ("train", "val", "test"):
            # NaN imputed with NaN: the batch-size weights count (torchmetrics 1.9 drops them under
            # nan_strategy="disable") and a NaN loss still reaches the divergence check.
            self.metrics[f"{split}_loss"] = MeanMetric(nan_strategy=float("nan"))
            self.metrics[f"{split}_acc"] = MulticlassAccuracy(
                num_classes, average="micro", validate_args=False
            )
        self._logged_this_epoch: set[str] = set()
        self._train_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def configure_model(self) -> None:
        if self.compile_net is True:
            self.net.compile()
        elif self.compile_net:
            self.net.compile(backend=self.compile_net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's outputs for stored pixels ``x`` (see ``prepare_input``)."""
        return self.net(self.prepare_input(x))

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """The network's input from stored pixels: the one input transform of this model.

        uint8 pixels (0…255, as MNIST stores them) become float32 in [0, 1]; floating-point
        inputs are taken as already in [0, 1] (or, for models of other inputs, as features) and
        kept. With ``standardize`` they are then standardized with the MNIST training set's mean
        and standard deviation. The shape is left as it is: ``[B, 1, 28, 28]`` for MNIST.
        """
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255)
        if self.standardize:
            x = (x - MNIST_MEAN) / MNIST_STD
        return x

    def compute_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits ``outputs`` against the class labels ``targets``."""
        return F.cross_entropy(outputs, targets)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[B, num_classes]`` from the network's outputs (softmax of logits)."""
        return outputs.softmax(dim=-1)

    def _forward_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's loss, the network's outputs and the targets."""
        x, y = batch[0], batch[1]
        outputs = self(x)
        return self.compute_loss(outputs, y), outputs, y

    def _step(self, batch: Any, split: str) -> torch.Tensor:
        """An evaluation batch: updates the split's metrics and returns its class probabilities."""
        loss, outputs, targets = self._forward_loss(batch)
        probs = self.probabilities(outputs.detach())
        self._update_metrics(split, loss.detach(), probs, targets, len(targets))
        self._log_metrics(split)
        return probs

    def _update_metrics(
        self,
        split: str,
        losses: torch.Tensor,
        probs: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor | int,
    ) -> None:
        """Add batch mean losses (weighted by the batches' sizes) and predictions to the split's metrics."""
        self.metrics[f"{split}_loss"].update(losses, weight=weights)
        self.metrics[f"{split}_acc"].update(probs, targets)

    def _log_metrics(self, split: str) -> None:
        """Log the split's metrics, once per epoch (from its first step)."""
        # Lightning computes a logged Metric over all of its updates at the end of the epoch, so
        # logging it once per epoch is enough and saves the per-call cost of self.log at every step.
        if split in self._logged_this_epoch:
            return
        self._logged_this_epoch.add(split)
        for name in ("loss", "acc"):
            self.log(
                f"{split}/{name}",
                self.metrics[f"{split}_{name}"],
                on_step=False,
                on_epoch=True,
                prog_bar=split != "test",
            )

    def _update_train_metrics(self) -> None:
        """Hand the training batches kept since the last call to torchmetrics, in one update per metric.

        Their class probabilities are computed here, over all of them at once, in the precision
        context of the training step (so under ``bf16-mixed`` they are float32, as they would be in it).
        """
        if not self._train_batches:
            return
        losses, outputs, targets = zip(*self._train_batches, strict=True)
        self._train_batches.clear()
        sizes = torch.tensor([len(t) for t in targets], dtype=torch.float32, device=losses[0].device)
        with self.trainer.precision_plugin.train_step_context():
            probs = self.probabilities(torch.cat(outputs))
        self._update_metrics("train", torch.stack(losses), probs, torch.cat(targets), sizes)

    def _last_train_batch(self, batch_idx: int) -> bool:
        """Whether the training epoch (or fit) ends after this batch, or may, when a stop was asked for."""
        trainer = self.trainer
        return (
            trainer.is_last_batch
            or batch_idx + 1 >= trainer.num_training_batches
            or trainer.should_stop
            or 0 <= trainer.max_steps <= trainer.global_step
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The metrics get the kept batches before anything can read them: the progress bar and the
        # other callbacks read the epoch's values in their on_train_epoch_end, which runs before ours.
        if len(self._train_batches) >= TRAIN_METRICS_EVERY or self._last_train_batch(batch_idx):
            self._update_train_metrics()

    def on_train_epoch_start(self) -> None:
        self._logged_this_epoch.discard("train")
        self._train_batches.clear()

    def on_test_epoch_start(self) -> None:
        self._logged_this_epoch.discard("test")

    def on_validation_epoch_start(self) -> None:
        self._logged_this_epoch.discard("val")
        if self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self._update_train_metrics()
            self._stop_if_diverged()

    def on_train_epoch_end(self) -> None:
        self._update_train_metrics()
        self._stop_if_diverged()

    def _stop_if_diverged(self) -> None:
        """Stop fit once the epoch's training loss is NaN or infinite, before a checkpoint is written.

        Runs where checkpoints are saved next (validation end, or epoch end without validation),
        so the last checkpoint on disk keeps the last good weights.
        """
        train_loss = self.metrics["train_loss"]
        if train_loss.update_count == 0:
            return
        loss = train_loss.compute()
        if torch.isfinite(loss):
            return
        rates = [group["lr"] for opt in self.trainer.optimizers for group in opt.param_groups]
        lr = rates[0] if rates else None
        hint = f" ({lr:g}); try e.g. {lr / 100:g}" if isinstance(lr, float) else ""
        raise LitMNISTError(
            f"Training stopped in epoch {self.current_epoch + 1}: the training loss became {loss.item()}. "
            f"The learning rate is probably too high{hint} "
            "(--model.init_args.optimizer.init_args.lr). Checkpoints of earlier epochs are kept."
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The batch's loss; its metric inputs are kept on the device until ``_update_train_metrics``."""
        loss, outputs, targets = self._forward_loss(batch)
        self._train_batches.append((loss.detach(), outputs.detach(), targets))
        self._log_metrics("train")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The batch's detached class probabilities, for callbacks' ``on_validation_batch_end``."""
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The batch's detached class probabilities, for callbacks' ``on_test_batch_end``."""
        return self._step(batch, "test")

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
        ``x`` is a tensor or numpy array ``[N, H, W]``, ``[N, 1, H, W]`` or one image ``[H, W]``
        of uint8 pixels (0…255) or floats in [0, 1]; ``prepare_input`` turns them into the
        network's input exactly as in training. Other models take
        ``[N, *example_input_array.shape[1:]]`` as it is. Runs in evaluation mode without
        gradients and leaves the model in the mode it was in.

        Raises:
            ValueError: ``x`` has another shape, or floating-point pixels outside [0, 1]; the
                message says what is expected.
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
            if x.dtype != torch.uint8:
                x = x.to(torch.float32)
                if x.numel() and not (float(x.min()) >= 0 and float(x.max()) <= 1):
                    raise ValueError(
                        "expected uint8 pixels (0…255) or floating-point pixels in [0, 1], got floats "
                        f"from {float(x.min()):g} to {float(x.max()):g}"
                    )
            return x.to(self.device)
        if x.ndim != len(item) + 1 or tuple(x.shape[1:]) != item:
            expected = ", ".join(map(str, item))
            raise ValueError(f"expected inputs of shape [N, {expected}], got {list(x.shape)}")
        return x.to(self.device, torch.float32)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """``optimizer`` built for the parameters, with its implementation chosen for where they are.

        Adam, AdamW and SGD whose ``fused`` argument is left unset (``None``) get ``fused=True``
        (one kernel per update; ``docs/porting.md``, row 13) when every parameter is on the CPU
        or a CUDA GPU, unless the trainer clips gradients under mixed precision: Lightning
        refuses to clip for an optimizer that unscales its gradients itself, as fused ones do.
        Elsewhere (XLA, MPS) they keep PyTorch's default implementation. A ``fused`` set in the
        config is kept, and ``fused: true`` where it cannot run stops with one sentence.
        """
        optimizer = self.optimizer(self.parameters())
        fused = optimizer.defaults.get("fused", False)
        obstacle = self._fused_obstacle()
        if fused and obstacle:
            raise LitMNISTError(
                f"model.init_args.optimizer.init_args.fused is true, but {obstacle}: leave fused unset "
                "(the model then picks the implementation) or set it to false."
            )
        devices = {p.device.type for p in self.parameters()}
        wanted = (
            fused is None
            and type(optimizer) in FUSED_OPTIMIZERS
            and devices <= FUSED_DEVICES
            and not obstacle
            and not optimizer.defaults.get("foreach")
            and not optimizer.defaults.get("differentiable")
        )
        if not wanted:
            return optimizer
        # The same optimizer with the same settings, fused: its defaults hold its constructor's arguments.
        accepted = inspect.signature(type(optimizer)).parameters
        settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
        return type(optimizer)(self.parameters(), **{**settings, "fused": True})

    def _fused_obstacle(self) -> str | None:
        """Why a fused optimizer cannot run in this fit, or ``None``."""
        if any(p.device.type == "xla" for p in self.parameters()):
            return "PyTorch has no fused optimizer kernels on XLA devices (TPU)"
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer
            return None
        if trainer.gradient_clip_val and isinstance(trainer.precision_plugin, MixedPrecision):
            return (
                f"Lightning does not clip gradients (trainer.gradient_clip_val {trainer.gradient_clip_val}) "
                f"for a fused optimizer under precision {trainer.precision}"
            )
        return None

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        if self.lr_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}
