"""MNIST as uint8 tensors held in memory, served in batches without per-sample work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import MNIST

from convlens import UserError
from convlens.preprocessing import normalize


class DataError(UserError):
    """The dataset cannot be found or fetched; the message says where and how to fix it."""


RAW_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def raw_folder(root: str | Path) -> Path:
    """Where torchvision's MNIST keeps the idx files: `<root>/MNIST/raw`."""
    return Path(root) / "MNIST" / "raw"


def idx_length(path: Path) -> int:
    """How many items an idx file holds, read from its header (bytes 4-7, big-endian)."""
    with open(path, "rb") as file:
        return int.from_bytes(file.read(8)[4:8], "big")


class TensorImages(Dataset):
    """(images uint8 N x 28 x 28, labels) fetched a whole batch at a time via `__getitems__`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices)
        return self.images[index], self.labels[index]


def keep_batch(batch):
    """The collate function for `TensorImages`: the batch is already stacked."""
    return batch


def load_mnist(root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The official split as (uint8 images, int64 labels), with a one-line error on failure."""
    try:
        dataset = MNIST(root, train=train, download=download)
    except Exception as error:  # torchvision raises RuntimeError or URLError/OSError here
        where = f"{root}/MNIST/raw"
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        how = "download failed" if download else "download is off (data.download=false)"
        raise DataError(
            f"MNIST not found in {where} and {how}: {reason}. "
            "Point CONVLENS_DATA_DIR (or data.root=...) at the folder that holds MNIST/raw/."
        ) from None
    return dataset.data, dataset.targets


def random_shift(images: torch.Tensor, max_pixels: int, generator=None) -> torch.Tensor:
    """Shift each image of a float NCHW batch by up to `max_pixels`, filling with the minimum."""
    n = images.shape[0]
    shift = torch.randint(-max_pixels, max_pixels + 1, (n, 2), generator=generator)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift.float() * 2 / images.shape[-1]
    grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
    fill = images.amin()
    return F.grid_sample(images - fill, grid, align_corners=False, padding_mode="zeros") + fill


class MNISTDataModule(LightningDataModule):
    """Train/val split of the 60k set (seeded), the official 10k as test."""

    def __init__(
        self,
        root: str = "data",
        download: bool = True,
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        split_seed: int = 42,
        subset: int | None = None,
        val_subset: int | None = None,
        test_subset: int | None = None,
        augment: bool = False,
        num_workers: int = 0,
    ):
        super().__init__()
        # Not logged as params: a run's params are chosen in conf (run_params), and its data
        # is recorded as dataset inputs (convlens.run_record).
        self.save_hyperparameters(logger=False)
        self.train_set = self.val_set = self.test_set = None

    def prepare_data(self) -> None:
        load_mnist(self.hparams.root, train=True, download=self.hparams.download)
        load_mnist(self.hparams.root, train=False, download=self.hparams.download)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        hp = self.hparams
        images, labels = load_mnist(hp.root, train=True, download=False)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(hp.split_seed))
        val_idx, train_idx = order[: hp.val_size], order[hp.val_size :]
        train_idx = train_idx[: hp.subset] if hp.subset else train_idx
        val_idx = val_idx[: hp.val_subset] if hp.val_subset else val_idx
        self.train_set = TensorImages(images[train_idx], labels[train_idx])
        self.val_set = TensorImages(images[val_idx], labels[val_idx])
        test_images, test_labels = load_mnist(hp.root, train=False, download=False)
        if hp.test_subset:
            test_images, test_labels = test_images[: hp.test_subset], test_labels[: hp.test_subset]
        self.test_set = TensorImages(test_images, test_labels)

    def split_recipes(self) -> dict[str, dict[str, Any]]:
        """Per split, what decides its examples as `setup` picks them: the idx files, the
        seeded split of the training file, the caps, and (training only) the augmentation,
        plus how many examples that gives. Batch sizes and workers change how examples are
        served, not which, so they are left out. Reads only the files' 8-byte headers."""
        hp = self.hparams
        raw = raw_folder(hp.root)
        total = idx_length(raw / RAW_FILES["train"][1])
        tests = idx_length(raw / RAW_FILES["test"][1])
        n_val = min(hp.val_size, total)
        n_train = total - n_val
        split = {"files": RAW_FILES["train"], "split_seed": hp.split_seed, "val_size": hp.val_size}
        return {
            "train": {
                **split,
                "subset": hp.subset or None,
                "augment": bool(hp.augment),
                "examples": min(hp.subset or n_train, n_train),
            },
            "validation": {
                **split,
                "val_subset": hp.val_subset or None,
                "examples": min(hp.val_subset or n_val, n_val),
            },
            "test": {
                "files": RAW_FILES["test"],
                "test_subset": hp.test_subset or None,
                "examples": min(hp.test_subset or tests, tests),
            },
        }

    def _per_device(self, batch_size: int) -> int:
        world = self.trainer.world_size if self.trainer is not None else 1
        return max(1, batch_size // world)

    def _loader(self, dataset: TensorImages, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self._per_device(batch_size),
            shuffle=shuffle,
            collate_fn=keep_batch,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        images = normalize(images)
        if self.hparams.augment and self.trainer is not None and self.trainer.training:
            images = random_shift(images, max_pixels=2)
        return images, labels

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.hparams.eval_batch_size, shuffle=False)


def one_per_digit(labels: torch.Tensor) -> list[int]:
    """Indices of the first example of each digit 0-9: the fixed images for feature maps."""
    return [int((labels == digit).nonzero()[0]) for digit in range(10)]
