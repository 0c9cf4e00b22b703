"""Every Lightning callback `conf/callbacks/` names: what happens around the training loop.

- `MLflowVisuals`: filters and feature maps per epoch, for the MLflow run page's step slider;
  at the end, some of them as training movies (`convlens.movies`).
- `EmbeddingPCA`: the last hidden layer of a fixed test sample, as a PCA scatter per epoch.
- `CheckpointOnStop`: `last.ckpt` on SIGTERM or Ctrl-C, so `resume=latest` can carry on.
- `ProgressBar`: Lightning's rich bar, redrawn less often.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from convlens.data import TensorImages, one_per_digit
from convlens.embedding import Sample, embedding_layer, pca_image
from convlens.embedding import features as embedding_features
from convlens.model import ConvNet, activations
from convlens.movies import MOVIES_DIR, movie_name, write_gif
from convlens.preprocessing import normalize
from convlens.recovery import LAST
from convlens.tracking import mlflow_logger
from convlens.visuals import feature_map_grid, filter_grid

log = logging.getLogger(__name__)


class PerEpoch(Callback):
    """Logs a picture of the network (`_log`) at step 0, untrained, and after every epoch at
    step k, so the run page's step slider shows it change."""

    def _log(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        raise NotImplementedError

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 0:
            self._log(trainer, pl_module, step=0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, step=trainer.current_epoch + 1)


class MLflowVisuals(PerEpoch):
    """Per epoch: the learned filters and the feature maps of ten fixed test digits.

    Step 0 is the untrained network, step k the network after k epochs, so the run page's
    step slider shows the filters and feature maps taking shape.
    """

    def __init__(
        self, layers: list[str] | None = None, wide: bool = True, movies: list[str] | None = None
    ):
        self.layers = layers
        self.wide = wide  # grids shaped to show whole in MLflow's image cards (`visuals`)
        self.digits: torch.Tensor | None = None
        self.movies = list(movies or [])  # image keys played as GIFs at the end of the run
        self.frames: dict[str, list] = {key: [] for key in self.movies}

    def _keep(self, key: str, image) -> None:
        if key in self.frames:
            self.frames[key].append(image)

    def _log(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        logger = mlflow_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        net: ConvNet = pl_module.net
        layers = self.layers or net.conv_layer_names()
        if self.digits is None:
            test_set: TensorImages = trainer.datamodule.test_set
            self.digits = test_set.images[one_per_digit(test_set.labels)]
        was_training = net.training
        net.eval()
        with torch.inference_mode():
            x = normalize(self.digits).to(pl_module.device)
            maps = activations(net, x, layers)
        net.train(was_training)
        for layer in layers:
            weights = getattr(net, layer).weight.detach().cpu().float().numpy()
            picture = filter_grid(weights, self.wide)
            logger.log_image(picture, key=f"filters/{layer}", step=step)
            self._keep(f"filters/{layer}", picture)
            for digit in range(10):
                grid = feature_map_grid(maps[layer][digit].cpu().float().numpy(), self.wide)
                key = f"feature_maps/{layer}/digit_{digit}"
                logger.log_image(grid, key=key, step=step)
                self._keep(key, grid)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The kept frames as GIFs in the run's `movies/` folder; a tracking server that is
        away costs the movies (logged as a warning), never the run."""
        logger = mlflow_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for key, frames in self.frames.items():
                if not frames:
                    continue
                path = write_gif(frames, Path(tmp) / movie_name(key))
                try:
                    logger.experiment.log_artifact(logger.run_id, str(path), MOVIES_DIR)
                except Exception as error:
                    log.warning("training movie %s not logged: %s", key, error)


class EmbeddingPCA(PerEpoch):
    """Per epoch: the last hidden layer's activations for a fixed sample of test digits
    (`convlens.embedding`), as PCA scatters coloured by label, under one image key.

    Step 0 is the untrained network, so the step slider shows the classes pulling apart."""

    KEY = "embedding/pca"

    def __init__(self) -> None:
        self.sample: Sample | None = None

    def _log(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        logger = mlflow_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        if self.sample is None:
            test_set: TensorImages = trainer.datamodule.test_set
            self.sample = Sample.of(test_set.images, test_set.labels)
        values = embedding_features(pl_module.net, self.sample.images)
        title = f"{len(values)} test digits, {embedding_layer(pl_module.net)}: step {step}"
        logger.log_image(pca_image(values, self.sample.labels, title), key=self.KEY, step=step)


class CheckpointOnStop(Callback):
    """On SIGTERM (as `docker stop` sends) or Ctrl-C, write `last.ckpt` before exiting."""

    def __init__(self, dirpath: str):
        self.dirpath = dirpath

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception) -> None:
        if not isinstance(exception, SIGTERMException | KeyboardInterrupt):
            return
        path = Path(self.dirpath, LAST)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            print(
                f"\nstopped at epoch {trainer.current_epoch}, step {trainer.global_step}; "
                f'checkpoint saved to {path}. Resume with: make train ARGS="resume=latest"',
                flush=True,
            )


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, redrawn every `every_n_steps` training steps.

    The stock bar updates, collects metrics and redraws after every step, about 0.1 ms each:
    1% of a training step of this network. Validation and testing bars are unchanged.
    """

    def __init__(self, every_n_steps: int = 10, **kwargs):
        super().__init__(**kwargs)
        self.every_n_steps = max(1, int(every_n_steps))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        done = batch_idx + 1
        if done % self.every_n_steps == 0 or done == self.total_train_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
