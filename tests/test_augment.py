"""Training augmentations: each one changes a digit the way its name says, and only when on."""

import torch

from convlens.augment import BACKGROUND, Augmentations, affine, dilate, erode, stroke
from convlens.data import MNISTDataModule
from convlens.preprocessing import normalize


def mnist_digits(mnist_root, n: int = 64) -> torch.Tensor:
    dm = MNISTDataModule(root=str(mnist_root), download=False, subset=n)
    dm.setup()
    return normalize(dm.train_set.images)


def ink(images: torch.Tensor) -> torch.Tensor:
    """Total ink per image, in 0-1 pixel units."""
    return (images - BACKGROUND).flatten(1).sum(1)


def bar(column: int = 14) -> torch.Tensor:
    """A normalized 28x28 image with one vertical stroke from row 4 to row 23."""
    image = torch.zeros(1, 1, 28, 28)
    image[0, 0, 4:24, column] = 1.0
    return normalize(image)


def ink_columns(image: torch.Tensor, row: int) -> torch.Tensor:
    return ((image[0, 0, row] - BACKGROUND) > 0.5).nonzero().flatten().float()


def test_dilation_adds_ink_to_every_digit(mnist_root):
    digits = mnist_digits(mnist_root)
    assert (ink(dilate(digits)) > ink(digits) * 1.3).all()


def test_erosion_removes_ink_from_every_digit(mnist_root):
    digits = mnist_digits(mnist_root)
    assert (ink(erode(digits)) < ink(digits) * 0.8).all()


def test_stroke_amount_thickens_or_thins_each_image_its_own_way(mnist_root):
    digits = mnist_digits(mnist_root, 2)
    changed = stroke(digits, torch.tensor([0.5, -0.5]))
    assert ink(changed)[0] > ink(digits)[0]
    assert ink(changed)[1] < ink(digits)[1]
    assert torch.equal(stroke(digits, torch.zeros(2)), digits)


def test_slant_moves_the_top_of_a_stroke_relative_to_its_bottom():
    leaning = affine(bar(), torch.tensor([20.0]), torch.ones(1), torch.zeros(1, 2))
    top, bottom = ink_columns(leaning, 5).mean(), ink_columns(leaning, 22).mean()
    assert top - bottom >= 4  # tan(20 deg) * 17 rows = 6 px: the top leans right


def test_scale_makes_the_digit_taller():
    grown = affine(bar(), torch.zeros(1), torch.tensor([1.2]), torch.zeros(1, 2))
    rows = lambda image: ((image[0, 0] - BACKGROUND) > 0.5).any(1).sum()  # noqa: E731
    assert rows(grown) >= rows(bar()) + 3


def test_shift_moves_the_digit_by_whole_pixels():
    moved = affine(bar(column=14), torch.zeros(1), torch.ones(1), torch.tensor([[3.0, 0.0]]))
    assert ink_columns(moved, 12).tolist() == [17.0]


def test_affine_keeps_the_background_blank():
    blank = normalize(torch.zeros(2, 1, 28, 28))
    moved = affine(blank, torch.tensor([15.0, -15.0]), torch.tensor([0.8, 1.2]), torch.ones(2, 2))
    assert torch.allclose(moved, blank, atol=1e-5)


def test_each_image_of_a_batch_gets_its_own_draw(mnist_root):
    digits = mnist_digits(mnist_root, 2)
    twins = torch.cat([digits[:1], digits[:1]])
    changed = Augmentations(shift=2, scale=0.15, slant=15, stroke=0.5)(
        twins, torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(changed[0], changed[1])


def test_all_off_changes_nothing(mnist_root):
    digits = mnist_digits(mnist_root, 8)
    assert torch.equal(Augmentations()(digits), digits)


def test_augmentations_apply_only_to_training_batches(mnist_root):
    dm = MNISTDataModule(root=str(mnist_root), download=False, subset=8, augment=True)
    dm.setup()
    batch = (dm.train_set.images, dm.train_set.labels)
    images, _ = dm.on_after_batch_transfer(batch, 0)  # no trainer: not training
    assert torch.equal(images, normalize(dm.train_set.images))


def test_the_default_run_trains_with_all_four_augmentations(mnist_root):
    from hydra.utils import instantiate

    from convlens.config import compose

    cfg = compose([f"data.root={mnist_root}"])
    assert cfg.data.augment is True
    datamodule = instantiate(cfg.data)
    expected = Augmentations(shift=2, scale=0.15, slant=15, stroke=0.5)
    assert datamodule.augmentations == expected
    assert datamodule.hparams.augment
