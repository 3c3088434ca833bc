"""Zero-shot templates (ALGORITHM.md section 7) and the CoOp dataset names with their aliases."""

from __future__ import annotations

DEFAULT_TEMPLATE = "a photo of a {}."

TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "a photo of a {}, a type of texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
}

# canonical name -> default folder under the data root (CoOp's DATASETS.md)
DEFAULT_DIRS: dict[str, str] = {
    "Caltech101": "caltech-101",
    "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars",
    "OxfordFlowers": "oxford_flowers",
    "Food101": "food-101",
    "FGVCAircraft": "fgvc_aircraft",
    "SUN397": "sun397",
    "DescribableTextures": "dtd",
    "EuroSAT": "eurosat",
    "UCF101": "ucf101",
    "ImageNet": "imagenet",
    "ImageNetV2": "imagenetv2",
    "ImageNetSketch": "imagenet-sketch",
    "ImageNetA": "imagenet-adversarial",
    "ImageNetR": "imagenet-rendition",
}

_ALIASES: dict[str, str] = {}
for _canon, _dir in DEFAULT_DIRS.items():
    for _a in (_canon, _dir, _dir.replace("-", "_"), _dir.replace("-", "").replace("_", "")):
        _ALIASES[_a.lower()] = _canon
_ALIASES.update(
    {
        "dtd": "DescribableTextures",
        "describable_textures": "DescribableTextures",
        "pets": "OxfordPets",
        "flowers": "OxfordFlowers",
        "cars": "StanfordCars",
        "aircraft": "FGVCAircraft",
        "imagenet_a": "ImageNetA",
        "imagenet-a": "ImageNetA",
        "imagenet_r": "ImageNetR",
        "imagenet-r": "ImageNetR",
        "imagenet_v2": "ImageNetV2",
        "imagenet-v2": "ImageNetV2",
        "imagenet_sketch": "ImageNetSketch",
    }
)


def canonical_name(name: str) -> str | None:
    """CoOp dataset class name for a name or folder alias ("oxford_pets" -> "OxfordPets"), else None."""
    return _ALIASES.get(name.strip().lower())


def template_for(name: str | None) -> str:
    canon = canonical_name(name) if name else None
    return TEMPLATES.get(canon or "", DEFAULT_TEMPLATE)
