"""The Lightning side of training: loss, metrics, optimizer and schedule around a `ConvNet`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningModule
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from convlens.data import FEEDBACK_LOADER
from convlens.model import ConvNet


class Classifier(LightningModule):
    def __init__(
        self,
        net: ConvNet,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        scheduler_interval: str = "step",
        channels_last: bool = False,
    ):
        super().__init__()
        # Only plain values go into checkpoints, so they load with torch.load(weights_only=True).
        # Not logged as params: the run params are chosen in conf (run_params in train.yaml).
        self.save_hyperparameters(
            {
                "architecture": net.architecture,
                "scheduler_interval": scheduler_interval,
                "channels_last": channels_last,
            },
            logger=False,
        )
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.feedback_acc = MulticlassAccuracy(num_classes=10, average="micro")
        self.val_acc_best = MaxMetric()
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, batch):
        images, labels = batch
        logits = self(images)
        return F.cross_entropy(logits, labels), logits.argmax(dim=1), labels

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # The hot loop: no metric object and no `self.log` on the steps Lightning does not send
        # to the loggers; together they cost more per step than Adam's update of this network.
        # Epoch totals accumulate in one small tensor (no host sync) and are logged once, in
        # `on_train_epoch_end`, under the same names as before.
        loss, preds, labels = self._step(batch)
        with torch.no_grad():
            self._train_totals[0].add_(loss.detach(), alpha=len(labels))
            self._train_totals[1].add_((preds == labels).sum())
            self._train_totals[2].add_(len(labels))
        if self._logging_this_step():
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
            for name, rate in self._learning_rates().items():
                self.log(name, rate, on_step=True, on_epoch=False)
        return loss

    def _learning_rates(self) -> dict[str, float]:
        """The rates this step trains with, named as Lightning's `LearningRateMonitor` names
        them (`lr-Adam`, or `lr-Adam/pg<i>` with several parameter groups). Logged with the
        loss, they reach the tracking store in the same write instead of one more per step."""
        rates = {}
        for optimizer in self.trainer.optimizers:
            name = f"lr-{type(optimizer).__name__}"
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                rates[name if len(groups) == 1 else f"{name}/pg{i + 1}"] = float(group["lr"])
        return rates

    def _logging_this_step(self) -> bool:
        """Whether Lightning sends this step's metrics to the loggers (every
        `log_every_n_steps`); values logged on the other steps would be thrown away."""
        connector = getattr(self.trainer, "_logger_connector", None)
        return True if connector is None else bool(connector.should_update_logs)

    def on_train_start(self) -> None:
        self.val_acc_best.reset()
        self._reset_train_totals()  # a run resumed mid-epoch does not start that epoch again

    def on_train_epoch_start(self) -> None:
        self._reset_train_totals()

    def _reset_train_totals(self) -> None:
        # loss sum (weighted by batch size), correct predictions, images
        self._train_totals = torch.zeros(3, dtype=torch.float64, device=self.device)

    def on_train_epoch_end(self) -> None:
        loss_sum, correct, count = self._train_totals
        count = count.clamp(min=1)
        self.log("train/loss", (loss_sum / count).float(), sync_dist=True)
        self.log("train/acc", (correct / count).float(), sync_dist=True, prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, preds, labels = self._step(batch)
        self.val_acc(preds, labels)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        # Names without Lightning's "/dataloader_idx_<i>": with the feedback hold-out as a
        # second test loader (`MNISTDataModule.test_dataloader`), test/acc keeps its name.
        loss, preds, labels = self._step(batch)
        if dataloader_idx == FEEDBACK_LOADER:
            self.feedback_acc(preds, labels)
            self.log("feedback/acc", self.feedback_acc, on_epoch=True, add_dataloader_idx=False)
            return
        self.test_acc(preds, labels)
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, add_dataloader_idx=False)
        self.log("test/acc", self.test_acc, on_epoch=True, add_dataloader_idx=False)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.device.type == "cpu":
            skip_cuda_graph_check(optimizer)
        if self.scheduler_factory is None:
            return optimizer
        kwargs = {}
        # Schedules such as OneCycleLR need the run's length, which only the trainer knows.
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer=optimizer, **kwargs)
        interval = self.hparams.scheduler_interval
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }


def skip_cuda_graph_check(optimizer: torch.optim.Optimizer) -> None:
    """Drop a CUDA-graph safety check from every `optimizer.step()` of a CPU run.

    The check asks `torch.cuda.is_available()`, which Lightning turns into an NVML query
    (it sets PYTORCH_NVML_BASED_CUDA_CHECK=1); on a CUDA build of torch without a usable GPU
    that query is not cached and costs about 0.2 ms per step, 2% of a training step here.
    A CPU run captures no CUDA graph, so the check can only ever pass.
    """
    if hasattr(optimizer, "_accelerator_graph_capture_health_check"):
        optimizer._accelerator_graph_capture_health_check = lambda: None


def net_from_checkpoint(path: str) -> ConvNet:
    """Rebuild the bare network from a Lightning checkpoint without unpickling objects."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    net = ConvNet(**checkpoint["hyper_parameters"]["architecture"])
    state = {
        key.removeprefix("net."): value.contiguous()
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("net.")
    }
    net.load_state_dict(state)
    return net.eval()
