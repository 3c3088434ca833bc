"""Each dataset kind's training transform (the reference's for CoOp layouts / ImageNet / folders, a
small shift for the 32-pixel built-in set), how exact mode applies it, and the default feature mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from core_fakes import FakeImages, Rec
from PIL import Image

from mergetune.core.config import (
    REFERENCE_TRANSFORM,
    SMALL_IMAGE_TRANSFORM,
    BackboneSpec,
    CropKind,
    DatasetKind,
    FeatureMode,
    Hyperparameters,
    train_transform_for,
)
from mergetune.core.data import open_dataset
from mergetune.core.model.backbone import load_backbone
from mergetune.core.model.features import TrainFeatures, _mix, augment, build_train_transform


@pytest.fixture(scope="module")
def bb():
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:5"))


def test_default_is_the_reference_pipeline():
    hp = Hyperparameters()
    assert hp.feature_mode == FeatureMode.exact  # a fresh augmentation of every image every epoch
    assert REFERENCE_TRANSFORM.crop == CropKind.random_resized_crop
    assert REFERENCE_TRANSFORM.scale == (0.08, 1.0) and REFERENCE_TRANSFORM.interpolation == "bicubic"
    assert REFERENCE_TRANSFORM.flip and REFERENCE_TRANSFORM.normalize == "clip mean/std"


def test_each_dataset_kind_carries_its_transform(tmp_path):
    assert train_transform_for(DatasetKind.coop) == REFERENCE_TRANSFORM
    assert train_transform_for("imagefolder") == REFERENCE_TRANSFORM
    ds = open_dataset(DatasetKind.builtin, tmp_path, "", options={"num_classes": 2, "train_per_class": 1})
    assert ds.train_transform == SMALL_IMAGE_TRANSFORM and SMALL_IMAGE_TRANSFORM.crop == CropKind.shift
    assert ds.summary()["train_transform"]["name"] == SMALL_IMAGE_TRANSFORM.name


def test_reference_transform_is_a_random_resized_crop_at_the_backbone_size(bb):
    tf = build_train_transform(REFERENCE_TRANSFORM, bb)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8))
    a = augment(bb, img, 11, tf)
    assert a.shape == (3, bb.image_size, bb.image_size)
    assert torch.equal(a, augment(bb, img, 11, tf))  # seeded
    assert not torch.equal(a, augment(bb, img, 12, tf))
    # the same ops as the backbone's reference transform, drawing the same randomness
    assert torch.allclose(a, augment(bb, img, 11), atol=1e-6)


def test_small_image_transform_keeps_the_whole_image_and_only_moves_or_mirrors_it(bb):
    tf = build_train_transform(SMALL_IMAGE_TRANSFORM, bb)
    img = FakeImages().load_image("3/1")  # 32 x 32, the backbone's size
    base = bb.test_transform(img)
    pad = round(SMALL_IMAGE_TRANSFORM.max_shift * 32)
    padded = torch.nn.functional.pad(base[None], (pad, pad, pad, pad), mode="reflect")[0]
    for seed in range(8):
        out = augment(bb, img, seed, tf)
        # some shift (dy, dx) of the reflect-padded test image, possibly mirrored: the shape and the
        # colours are all there (a random-resized crop would keep as little as 8 % of the area)
        found = any(
            torch.allclose(out, cand[:, dy : dy + 32, dx : dx + 32], atol=1e-6)
            for cand in (padded, padded.flip(-1))
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
        )
        assert found, seed
        assert torch.allclose(out.mean((1, 2)), base.mean((1, 2)), atol=0.15)


def test_exact_mode_reads_each_image_once_and_augments_it_every_epoch(bb):
    src = FakeImages()
    recs = [Rec(f"{c}/{i}", c) for c in range(2) for i in range(4)]
    tf = TrainFeatures(bb, src, recs, mode=FeatureMode.exact, batch_size=8, seed=3)
    first = next(iter(tf.epoch(0)))[0]
    second = next(iter(tf.epoch(1)))[0]
    assert src.loads == 8  # prepared images are cached; later epochs do not read again
    assert not torch.allclose(first, second)
    # the features are those of the dataset transform seeded with (seed, 4, epoch, index)
    order = tf._order(1).tolist()
    i = order[0]
    pix = augment(bb, src.load_image(recs[i].key), _mix(3, 4, 1, i), tf.transform)
    assert torch.allclose(second[0], bb.encode_images(pix[None])[0], atol=1e-5)
