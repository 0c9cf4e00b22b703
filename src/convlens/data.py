"""MNIST as uint8 tensors held in memory, served in batches without per-sample work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import MNIST

from convlens import UserError, interrupts
from convlens.augment import Augmentations
from convlens.config import FEEDBACK_HOLDOUT_EVERY
from convlens.preprocessing import normalize


class DataError(UserError):
    """The dataset cannot be found or fetched; the message says where and how to fix it."""


FEEDBACK_LOADER = 1  # the test loader index of the feedback hold-out (`test_dataloader`)

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
        augmentations: dict[str, float] | None = None,
        feedback: bool = False,
        feedback_url: str | None = None,
        feedback_holdout: int = FEEDBACK_HOLDOUT_EVERY,
        feedback_repeat: int = 20,
    ):
        super().__init__()
        # Not logged as params: a run's params are chosen in conf (run_params), and its data
        # is recorded as dataset inputs (convlens.run_record).
        self.save_hyperparameters(logger=False)
        self.train_set = self.val_set = self.test_set = None
        self.feedback_set: TensorImages | None = None  # the feedback hold-out, when there is one
        # Without an explicit `augmentations`, `augment=true` keeps its old meaning: 2 px shifts.
        self.augmentations = Augmentations.of(augmentations or {"shift": 2})
        self._feedback = None

    def prepare_data(self) -> None:
        load_mnist(self.hparams.root, train=True, download=self.hparams.download)
        load_mnist(self.hparams.root, train=False, download=self.hparams.download)
        self.feedback_split()  # an unusable feedback store fails here, before any run exists

    def feedback_split(self):
        """The stored user digits split by sha256 (`convlens.feedback_data`), read once; None
        unless `feedback=true`."""
        if self.hparams.feedback and self._feedback is None:
            from convlens.feedback_data import load_split

            self._feedback = load_split(self.hparams.feedback_url, self.hparams.feedback_holdout)
        return self._feedback

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
        if self.hparams.feedback:
            self.train_set, self.feedback_set = self._with_feedback(self.train_set)
        self.val_set = TensorImages(images[val_idx], labels[val_idx])
        test_images, test_labels = load_mnist(hp.root, train=False, download=False)
        if hp.test_subset:
            test_images, test_labels = test_images[: hp.test_subset], test_labels[: hp.test_subset]
        self.test_set = TensorImages(test_images, test_labels)

    def _with_feedback(self, train: TensorImages) -> tuple[TensorImages, TensorImages | None]:
        """MNIST's training split plus the feedback training part `feedback_repeat` times
        (oversampled: a few hundred digits among 55k would otherwise barely move the
        weights), and the hold-out as its own set."""
        found = self.feedback_split()
        repeat = max(1, int(self.hparams.feedback_repeat))
        images = torch.cat([train.images, found.train.images.repeat(repeat, 1, 1)])
        labels = torch.cat([train.labels, found.train.labels.repeat(repeat)])
        holdout = found.holdout
        return TensorImages(images, labels), (
            TensorImages(holdout.images, holdout.labels) if len(holdout) else None
        )

    def feedback_recipes(self) -> dict[str, dict[str, Any]]:
        """Per feedback part (`feedback-train`, `feedback-holdout`): what decides its
        examples (their sha256s and labels, as a digest; the hold-out rule; the oversampling)
        and how many there are. Empty unless `feedback=true`."""
        found = self.feedback_split()
        if found is None:
            return {}
        from convlens.feedback_data import HOLDOUT, TRAIN

        rule = {"holdout_every": self.hparams.feedback_holdout}
        return {
            TRAIN: {
                **rule,
                "examples_digest": found.train.digest(),
                "repeat": self.hparams.feedback_repeat,
                "examples": len(found.train),
                "source": found.source,
            },
            HOLDOUT: {
                **rule,
                "examples_digest": found.holdout.digest(),
                "examples": len(found.holdout),
                "source": found.source,
            },
        }

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
                **({"augmentations": self.augmentations.describe()} if hp.augment else {}),
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
            worker_init_fn=interrupts.ignore_in_worker,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        images, labels = batch
        images = normalize(images)
        if self.hparams.augment and self.trainer is not None and self.trainer.training:
            images = self.augmentations(images)
        return images, labels

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.hparams.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """MNIST's test set; with a feedback hold-out, that too, second (`FEEDBACK_LOADER`)."""
        test = self._loader(self.test_set, self.hparams.eval_batch_size, shuffle=False)
        if self.feedback_set is None:
            return test
        return [test, self._loader(self.feedback_set, self.hparams.eval_batch_size, shuffle=False)]


def one_per_digit(labels: torch.Tensor) -> list[int]:
    """Indices of the first example of each digit 0-9: the fixed images for feature maps."""
    return [int((labels == digit).nonzero()[0]) for digit in range(10)]
