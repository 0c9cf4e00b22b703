"""The MNIST data module: splits, uint8 tensors in memory, batches, a clear missing-data error."""

import torch

from convlens.data import MNISTDataModule, one_per_digit
from tests.conftest import run_train


def datamodule(root, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(root=str(root), download=False, **kwargs)
    dm.setup()
    return dm


def test_splits_are_55k_train_5k_val_10k_test(mnist_root):
    dm = datamodule(mnist_root)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55_000, 5_000, 10_000)


def test_splits_are_held_as_uint8_tensors(mnist_root):
    dm = datamodule(mnist_root)
    assert dm.train_set.images.dtype == torch.uint8
    assert dm.train_set.images.shape == (55_000, 28, 28)


def test_split_is_seeded(mnist_root):
    a, b = datamodule(mnist_root), datamodule(mnist_root)
    assert torch.equal(a.val_set.labels, b.val_set.labels)
    assert not torch.equal(a.val_set.labels, datamodule(mnist_root, split_seed=7).val_set.labels)


def test_subset_limits_only_the_training_split(mnist_root):
    dm = datamodule(mnist_root, subset=1000)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1000, 5_000, 10_000)


def test_split_recipes_count_the_examples_setup_gives(mnist_root):
    dm = datamodule(mnist_root, subset=3000, val_subset=700, test_subset=900)
    examples = {split: recipe["examples"] for split, recipe in dm.split_recipes().items()}
    sizes = {"train": len(dm.train_set), "validation": len(dm.val_set), "test": len(dm.test_set)}
    assert examples == sizes == {"train": 3000, "validation": 700, "test": 900}


def test_dataset_digests_change_with_what_picks_each_splits_examples(mnist_root):
    from convlens.run_record import dataset_digests

    base = {"_target_": "convlens.data.MNISTDataModule", "root": str(mnist_root), "subset": 2000}
    digests = dataset_digests(base)

    def changed(**overrides) -> set[str]:
        other = dataset_digests({**base, **overrides})
        return {split for split, digest in other.items() if digest != digests[split]}

    assert set(digests) == {"train", "validation", "test"}
    assert changed(subset=500) == changed(augment=True) == {"train"}
    assert changed(val_subset=100) == {"validation"}
    assert changed(test_subset=100) == {"test"}
    assert changed(split_seed=7) == changed(val_size=1000) == {"train", "validation"}
    assert changed(batch_size=32, eval_batch_size=10, num_workers=2, download=False) == set()


def test_batches_come_out_normalized_nchw(mnist_root):
    dm = datamodule(mnist_root, batch_size=32)
    images, labels = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert images.shape == (32, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (32,)
    assert -0.5 < images.min() < -0.4  # (0 - mean) / std


def test_fixed_digits_are_one_of_each_class(mnist_root):
    dm = datamodule(mnist_root)
    idx = one_per_digit(dm.test_set.labels)
    assert dm.test_set.labels[idx].tolist() == list(range(10))


def test_missing_data_without_download_is_a_one_line_error(tmp_path):
    empty = tmp_path / "nowhere"
    # A proxy on a closed port makes any download attempt fail at once, online or not.
    blocked = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    result = run_train(tmp_path, f"data.root={empty}", "data.download=true", env=blocked)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith(f"error: MNIST not found in {empty}/MNIST/raw")
    assert "CONVLENS_DATA_DIR" in lines[-1]
    assert not (tmp_path / "mlflow.db").exists(), "no MLflow run is started without data"
