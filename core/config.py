"""Typed, frozen configuration shared by the core, the worker and the REST API.

Importable without torch: the API validates requests with these same models.
Defaults are the reference configuration of MergeTune (ALGORITHM.md section 2).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LossType(StrEnum):
    cosine = "cosine"
    l2 = "l2"


class Method(StrEnum):
    coop = "coop"
    kgcoop = "kgcoop"
    linear_head = "linear_head"
    mma = "mma"  # Multi-Modal Adapter (ALGORITHM.md section 6c)


class Precision(StrEnum):
    auto = "auto"  # AMP (fp16 autocast) on CUDA, fp32 on CPU
    fp32 = "fp32"
    amp = "amp"


class ClassTokenPosition(StrEnum):
    end = "end"
    middle = "middle"
    front = "front"


class Protocol(StrEnum):
    """Which classes a prompt checkpoint was trained on (ALGORITHM.md section 6b)."""

    base2novel = "base2novel"  # the base half (first ceil(n/2) sorted classes); evaluated on base and novel
    all = "all"  # every class of the dataset; evaluated on all classes (and any extra datasets)


class FeatureMode(StrEnum):
    """How image features of the frozen encoder are produced during training.

    ``exact`` (the default) is the reference's data pipeline. ``bank`` with ``bank_views`` >= epochs is
    equivalent in distribution (every epoch sees its own fresh view of every image); ``bank`` with fewer
    views and ``none`` are approximations (ALGORITHM.md section 2b)."""

    bank = "bank"  # V augmented views per image, encoded once (fp16); image i uses view (o_i + epoch) mod V
    exact = "exact"  # fresh augmentation of every image every epoch, image encoder run once per batch
    none = "none"  # no augmentation: test transform, features encoded once for the whole job


class CropKind(StrEnum):
    random_resized_crop = "random_resized_crop"  # CoOp/Dassl: area scale range, aspect 3/4..4/3
    shift = "shift"  # the whole image, translated by up to ``max_shift`` of its side (reflect padding)


class TrainTransformSpec(BaseModel):
    """The training augmentation a dataset kind carries (recorded in report.json and the manifest).
    The output size, mean and std come from the backbone (224 and CLIP's mean/std for ViT-B/16)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    crop: CropKind
    scale: tuple[float, float] | None = None  # random_resized_crop only
    max_shift: float = Field(default=0.0, ge=0.0, le=0.5)  # shift only, fraction of the side
    flip: bool = True  # random horizontal flip (p = 0.5)
    interpolation: str = "bicubic"
    normalize: str = "clip mean/std"


#: CoOp / Dassl (configs/datasets + trainers/coop): INPUT.TRANSFORMS random_resized_crop, random_flip,
#: normalize; INTERPOLATION bicubic; RandomResizedCrop's default scale (0.08, 1); CLIP mean/std.
REFERENCE_TRANSFORM = TrainTransformSpec(
    name="coop_reference", crop=CropKind.random_resized_crop, scale=(0.08, 1.0), flip=True
)
#: 32-pixel images (the built-in set): a random-resized crop keeps 8 % of the area at worst and cuts
#: most of a 10-20 pixel shape away, and colour is half of every class name. Measured (tiny-clip,
#: downstream domain, 100 epochs, exact mode, seeds 1-3; docs/BENCHMARKS.md, feature modes): a horizontal flip keeps
#: the demo's HM (31.4 / 31.6 / 31.2 vs 31.8 / 31.2 / 31.1 without augmentation) while shifts (reflect
#: padding) cost base accuracy: 2 pixels HM 31.5 / 31.2 / 30.4, 4 pixels 30.1 at seed 1. All eight shapes
#: are mirror-symmetric, so a flip never changes a class.
SMALL_IMAGE_TRANSFORM = TrainTransformSpec(
    name="small_image_flip", crop=CropKind.shift, max_shift=0.0, flip=True
)


def train_transform_for(kind: DatasetKind | str) -> TrainTransformSpec:
    """The training transform of a dataset kind: the reference's for CoOp layouts, ImageNet and image
    folders, the small-image one for the built-in 32-pixel set."""
    return SMALL_IMAGE_TRANSFORM if DatasetKind(kind) == DatasetKind.builtin else REFERENCE_TRANSFORM


class DatasetKind(StrEnum):
    coop = "coop"
    imagefolder = "imagefolder"
    builtin = "builtin"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


class BackboneSpec(_Frozen):
    """Which CLIP to load. ``pretrained`` is an open_clip tag (loaded only from the local cache),
    a local file path, ``builtin`` (the bundled tiny CLIP), or ``random`` / ``random:<seed>``."""

    model: str = Field(default="ViT-B-16", min_length=1, max_length=128)
    pretrained: str = Field(default="openai", min_length=1, max_length=1024)


class Hyperparameters(_Frozen):
    """MergeTune hyperparameters for prompt jobs (coop / kgcoop checkpoints)."""

    w_zs: float = Field(default=10.0, ge=0.0, le=1e4, description="W: weight of the zero-shot surrogate")
    loss_type: LossType = LossType.cosine
    w_lmc: float = Field(default=1.0, ge=0.0, le=1e4, description="W_LMC: weight of the path term")
    num_samples: int = Field(default=5, ge=1, le=64, description="K: path samples t_k=(k-1/2)/K")
    path_term: bool = True
    epochs: int = Field(default=100, ge=1, le=1000)
    lr: float = Field(default=0.002, gt=0.0, le=10.0)
    batch_size: int = Field(default=128, ge=1, le=4096)
    shots: int = Field(default=16, ge=1, le=10000)
    seed: int = Field(default=1, ge=0, le=2**31 - 1)
    precision: Precision = Precision.auto
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0, le=1.0)
    warmup_epochs: int = Field(default=1, ge=0, le=1000)
    warmup_lr: float = Field(default=1e-5, ge=0.0, le=10.0)
    # exact by default: the reference's pipeline (a fresh augmentation of every image every epoch), and
    # per epoch no slower than a bank of ``epochs`` views (bench/feature_modes.py, docs/BENCHMARKS.md, feature modes).
    feature_mode: FeatureMode = FeatureMode.exact
    # Only read in bank mode: views per image. V >= epochs gives every epoch its own view (faithful);
    # fewer views reuse each view every V epochs (an approximation).
    bank_views: int = Field(default=2, ge=1, le=1000)
    curve_step: float = Field(default=0.1, gt=0.0, le=0.5)


class HeadHyperparameters(_Frozen):
    """MergeTune hyperparameters for linear-head jobs (ALGORITHM.md section 3)."""

    # |W - W_zs|_F^2 sums over all C x D entries of a tau-scaled head, so useful weights are small: on the
    # built-in data 1e-4..1e-3 trades in-distribution for shifted accuracy; 1.0 snaps back to zero-shot.
    lam: float = Field(default=1e-3, ge=0.0, le=1e4, description="lambda: weight of |W - W_zs|_F^2")
    w_lmc: float = Field(default=1.0, ge=0.0, le=1e4)
    num_samples: int = Field(default=5, ge=1, le=64)
    path_term: bool = True
    epochs: int = Field(default=20, ge=1, le=1000)
    lr: float = Field(default=0.01, gt=0.0, le=10.0)
    batch_size: int = Field(default=256, ge=1, le=65536)
    shots: int = Field(default=16, ge=1, le=10000)
    seed: int = Field(default=1, ge=0, le=2**31 - 1)
    precision: Precision = Precision.auto
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    curve_step: float = Field(default=0.1, gt=0.0, le=0.5)


class MMAHyperparameters(_Frozen):
    """MergeTune for MMA adapters (ALGORITHM.md section 6c); defaults are the reference's MMA_LMC config:
    W_LMC 10, K 5, 5 epochs, batch 16, SGD lr 0.0015 (momentum 0.9, weight decay 5e-4), cosine, no
    warm-up. ``adapter_scale`` is not stored in MMA's files (its configs use 0.001)."""

    w_lmc: float = Field(default=10.0, ge=0.0, le=1e4, description="W_LMC: weight of the path term")
    num_samples: int = Field(default=5, ge=1, le=64, description="K: path samples t_k=(k-1/2)/K")
    path_term: bool = True
    epochs: int = Field(default=5, ge=1, le=1000)
    lr: float = Field(default=0.0015, gt=0.0, le=10.0)
    batch_size: int = Field(default=16, ge=1, le=4096)
    shots: int = Field(default=16, ge=1, le=10000)
    seed: int = Field(default=1, ge=0, le=2**31 - 1)
    precision: Precision = Precision.auto
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0, le=1.0)
    warmup_epochs: int = Field(default=0, ge=0, le=1000)
    warmup_lr: float = Field(default=1e-5, ge=0.0, le=10.0)
    adapter_scale: float = Field(default=0.001, gt=0.0, le=10.0)
    #: MMA's gradient-scale layers (adapter gradients divided by ``adapter_scale``, so SGD at lr 0.0015
    #: takes steps 1000x larger). MMA's own trainer has them; the reference's MMA_LMC runs on a CLIP
    #: without them, so MergeTune for MMA defaults to False. Stage 1 (``train_mma_stage1``) uses True.
    gradient_scale: bool = False
    #: False (the reference): the path mixes the unnormalised adapted text features with the normalised
    #: zero-shot ones, so the effective mix is not t_k. True: both ends normalised (the nominal t_k).
    normalise_endpoints: bool = False
    #: exact: a fresh augmentation per image per epoch (the reference); none: test-transform images, their
    #: frozen lower-block outputs computed once for the whole job.
    feature_mode: FeatureMode = FeatureMode.exact
    curve_step: float = Field(default=0.1, gt=0.0, le=0.5)

    @field_validator("feature_mode")
    @classmethod
    def _modes(cls, v: FeatureMode) -> FeatureMode:
        if FeatureMode(v) == FeatureMode.bank:
            raise ValueError("MMA jobs take feature_mode 'exact' or 'none'")
        return v


class PromptLearnerSpec(_Frozen):
    n_ctx: int = Field(default=4, ge=1, le=64)
    csc: bool = False
    class_token_position: ClassTokenPosition = ClassTokenPosition.end
    ctx_init: str | None = "a photo of a"

    @field_validator("ctx_init")
    @classmethod
    def _strip(cls, v: str | None) -> str | None:
        return v.strip() if v else None


class PromptOptions(_Frozen):
    """How a prompt checkpoint assembles its prompts, as the job body's ``prompt`` gives it.

    ``class_token_position`` (CoOp's ``TRAINER.COOP.CLASS_TOKEN_POSITION``) is not stored in CoOp's files;
    unset here means: the value given at upload, else ``end``."""

    class_token_position: ClassTokenPosition | None = None


def class_count_problem(
    *,
    csc: bool,
    n_ctx_cls: int | None,
    protocol: Protocol,
    dataset_name: str,
    num_classes: int,
    n_base: int,
) -> str | None:
    """Why a class-specific context cannot be used with a dataset under ``protocol`` (None: it can).

    A CSC context has one row per class it was trained on: the base half under ``base2novel``, every
    class under ``all``. Generic contexts fit any class list."""
    if not csc or n_ctx_cls is None:
        return None
    want = n_base if protocol == Protocol.base2novel else num_classes
    if n_ctx_cls == want:
        return None
    split = (
        f"the base split is the first {n_base}"
        if protocol == Protocol.base2novel
        else "protocol 'all' uses every class"
    )
    hint = ""
    if protocol == Protocol.base2novel and n_ctx_cls == num_classes:
        hint = "; it covers every class: use protocol 'all'"
    elif protocol == Protocol.all and n_ctx_cls == n_base:
        hint = "; it covers the base half: use protocol 'base2novel'"
    return (
        f"CSC checkpoint has {n_ctx_cls} class contexts; dataset {dataset_name!r} has {num_classes} classes "
        f"and {split}{hint}"
    )


#: Architectures a job may name: open_clip 3.3.0's models with the standard CLIP text tower (those a prompt
#: learner can drive; ``tests/core/test_backbone_checks.py`` regenerates this from open_clip's registry),
#: plus the tiny test/built-in models. The API checks job bodies against it without importing open_clip.
OPEN_CLIP_MODELS: frozenset[str] = frozenset(
    """
    convnext_base convnext_base_w convnext_base_w_320 convnext_large convnext_large_d convnext_large_d_320
    convnext_small convnext_tiny convnext_xlarge convnext_xxlarge convnext_xxlarge_320 EVA01-g-14
    EVA01-g-14-plus EVA02-B-16 EVA02-E-14 EVA02-E-14-plus EVA02-L-14 EVA02-L-14-336 MobileCLIP2-B
    MobileCLIP2-L-14 MobileCLIP2-S0 MobileCLIP2-S2 MobileCLIP2-S3 MobileCLIP2-S4 MobileCLIP-B MobileCLIP-S1
    MobileCLIP-S2 PE-Core-B-16 PE-Core-bigG-14-448 PE-Core-L-14-336 PE-Core-S-16-384 PE-Core-T-16-384 RN50
    RN50-quickgelu RN50x4 RN50x4-quickgelu RN50x16 RN50x16-quickgelu RN50x64 RN50x64-quickgelu RN101
    RN101-quickgelu swin_base_patch4_window7_224 ViT-B-16 ViT-B-16-plus ViT-B-16-plus-240 ViT-B-16-quickgelu
    ViT-B-32 ViT-B-32-256 ViT-B-32-plus-256 ViT-B-32-quickgelu ViT-bigG-14 ViT-bigG-14-quickgelu ViT-e-14
    ViT-g-14 ViT-H-14 ViT-H-14-378 ViT-H-14-378-quickgelu ViT-H-14-quickgelu ViT-H-16 ViT-L-14 ViT-L-14-280
    ViT-L-14-336 ViT-L-14-336-quickgelu ViT-L-14-quickgelu ViT-L-16 ViT-L-16-320 ViT-M-16 ViT-M-16-alt
    ViT-M-32 ViT-M-32-alt ViT-S-16 ViT-S-16-alt ViT-S-32 ViT-S-32-alt vit_medium_patch16_gap_256
    vit_relpos_medium_patch16_cls_224 ViTamin-B ViTamin-B-LTT ViTamin-L ViTamin-L2 ViTamin-L2-256
    ViTamin-L2-336 ViTamin-L2-384 ViTamin-L-256 ViTamin-L-336 ViTamin-L-384 ViTamin-S ViTamin-S-LTT
    ViTamin-XL-256 ViTamin-XL-336 ViTamin-XL-384
    """.split()
)
TINY_MODELS: frozenset[str] = frozenset({"tiny-test", "tiny-clip"})
KNOWN_MODELS: frozenset[str] = OPEN_CLIP_MODELS | TINY_MODELS

#: The text width (a prompt context's width) of every model in KNOWN_MODELS, by width: a context of
#: another width is refused when the job is created (``tests/core/model/test_text_widths.py`` checks
#: the table against open_clip's configs and the tiny models).
TEXT_WIDTHS: dict[str, int] = {
    **dict.fromkeys("tiny-test".split(), 64),
    **dict.fromkeys("tiny-clip".split(), 128),
    **dict.fromkeys("ViT-S-16-alt ViT-S-32-alt".split(), 256),
    **dict.fromkeys("ViT-M-16-alt ViT-M-32-alt ViT-S-16 ViT-S-32 ViTamin-S".split(), 384),
    **dict.fromkeys(
        """
        convnext_base convnext_small convnext_tiny EVA02-B-16 MobileCLIP-B MobileCLIP-S1 MobileCLIP-S2
        MobileCLIP2-B MobileCLIP2-S0 MobileCLIP2-S2 PE-Core-S-16-384 PE-Core-T-16-384 RN101 RN101-quickgelu
        RN50 RN50-quickgelu ViT-B-16 ViT-B-16-quickgelu ViT-B-32 ViT-B-32-256 ViT-B-32-quickgelu ViT-M-16
        ViT-M-32 vit_medium_patch16_gap_256 vit_relpos_medium_patch16_cls_224 ViTamin-B
        """.split(),
        512,
    ),
    **dict.fromkeys(
        """
        convnext_base_w convnext_base_w_320 RN50x4 RN50x4-quickgelu swin_base_patch4_window7_224
        ViT-B-16-plus ViT-B-16-plus-240 ViT-B-32-plus-256
        """.split(),
        640,
    ),
    **dict.fromkeys(
        """
        convnext_large convnext_large_d convnext_large_d_320 EVA01-g-14 EVA02-L-14 EVA02-L-14-336
        MobileCLIP2-L-14 MobileCLIP2-S3 MobileCLIP2-S4 RN50x16 RN50x16-quickgelu ViT-L-14 ViT-L-14-280
        ViT-L-14-336 ViT-L-14-336-quickgelu ViT-L-14-quickgelu ViT-L-16 ViT-L-16-320 ViTamin-B-LTT ViTamin-L
        ViTamin-L-256 ViTamin-L-336 ViTamin-L-384 ViTamin-S-LTT
        """.split(),
        768,
    ),
    **dict.fromkeys(
        """
        convnext_xlarge convnext_xxlarge convnext_xxlarge_320 EVA01-g-14-plus EVA02-E-14 PE-Core-B-16
        PE-Core-L-14-336 RN50x64 RN50x64-quickgelu ViT-g-14 ViT-H-14 ViT-H-14-378 ViT-H-14-378-quickgelu
        ViT-H-14-quickgelu ViT-H-16 ViTamin-L2 ViTamin-L2-256 ViTamin-L2-336 ViTamin-L2-384
        """.split(),
        1024,
    ),
    **dict.fromkeys("ViTamin-XL-256 ViTamin-XL-336 ViTamin-XL-384".split(), 1152),
    **dict.fromkeys(
        """
        EVA02-E-14-plus PE-Core-bigG-14-448 ViT-bigG-14 ViT-bigG-14-quickgelu ViT-e-14
        """.split(),
        1280,
    ),
}


def path_points(num_samples: int) -> list[float]:
    """t_k = (k - 1/2) / K for k = 1..K (midpoints of K equal bins of [0, 1])."""
    return [(k - 0.5) / num_samples for k in range(1, num_samples + 1)]


def alphas(step: float = 0.1) -> list[float]:
    """0, step, ..., 1 (inclusive), rounded so that 0.1 * 3 prints as 0.3."""
    n = round(1.0 / step)
    return [round(i / n, 10) for i in range(n + 1)]
