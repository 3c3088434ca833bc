"""Load a frozen open_clip CLIP backbone without ever touching the network.

``load_backbone(BackboneSpec(model, pretrained))`` accepts

- any open_clip architecture name (``ViT-B-16``, ``RN50``, ...) or a tiny registered config
  (``tiny-test``: random init, seconds to build, used by the tests; ``tiny-clip``: the bundled model
  whose config and weights live in ``core/builtin/model.py``);
- ``pretrained``: an open_clip tag (loaded only when its file is already in the local cache),
  a local weights file (``.pt``/``.bin``/``.safetensors``), ``builtin`` (tiny-clip only), or
  ``random`` / ``random:<seed>``.

The identity of a backbone is the sha256 of its weights file, or ``random:<seed>``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import open_clip
import torch
from open_clip import factory as oc_factory
from PIL import Image
from torchvision import transforms as T

from mergetune.core.checkpoints.weights import is_file_reference, parse_random, resolve_weights
from mergetune.core.config import KNOWN_MODELS, BackboneSpec
from mergetune.core.errors import BackboneError

logger = logging.getLogger(__name__)

#: Tiny configs registered with open_clip under these names (never written to open_clip's files).
#: ``tiny-test`` is random-init only; text width 64 so that tests build and run in well under a second.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-test": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    },
}
BUILTIN_MODEL = "tiny-clip"


@dataclass
class Backbone:
    """A frozen CLIP in eval mode plus what the prompt learner and data pipeline need from it."""

    model: torch.nn.Module
    tokenizer: Callable[..., torch.Tensor]
    name: str
    pretrained: str
    identity: str
    text_width: int
    embed_dim: int
    image_size: int
    logit_scale: float
    device: torch.device
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    #: MLP activation the model was built with: "quick_gelu" (OpenAI CLIP) or "gelu".
    activation: str = "gelu"
    #: How the weights file was read: openai_torchscript | openai_state_dict | state_dict | safetensors |
    #: builtin; None for random init.
    weights_format: str | None = None
    #: Things the user should know about how the backbone was built (the job shows them as warnings).
    warnings: list[str] = field(default_factory=list)
    _train_tf: Callable[[Image.Image], torch.Tensor] | None = field(default=None, repr=False)
    _test_tf: Callable[[Image.Image], torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        normalize = T.Normalize(self.mean, self.std)
        size = self.image_size
        # Dassl/CoOp train augmentation: random_resized_crop (default scale 0.08-1) + random_flip.
        self._train_tf = T.Compose(
            [
                T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                normalize,
            ]
        )
        self._test_tf = T.Compose(
            [
                T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                T.CenterCrop(size),
                T.ToTensor(),
                normalize,
            ]
        )

    def train_transform(self, image: Image.Image) -> torch.Tensor:
        """Random augmentation; draws from torch's global RNG (callers seed it, see mergetune.core.model.features)."""
        assert self._train_tf is not None
        return self._train_tf(image.convert("RGB"))

    def test_transform(self, image: Image.Image) -> torch.Tensor:
        assert self._test_tf is not None
        return self._test_tf(image.convert("RGB"))

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised fp32 image features of a batch of transformed images."""
        pixels = pixels.to(self.device)
        model: Any = self.model  # open_clip CLIP; torch types Module attributes as Tensor | Module
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                feats = model.encode_image(pixels)
        else:
            feats = model.encode_image(pixels)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unnormalised fp32 text features of plain strings (the library's own path)."""
        tokens = self.tokenizer(texts).to(self.device)
        model: Any = self.model  # as in encode_images
        return model.encode_text(tokens).float()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _builtin_module() -> Any:
    try:
        from mergetune.core.builtin import model as builtin_model  # lazy: written by another module owner
    except ImportError as exc:
        raise BackboneError(
            f"the built-in tiny CLIP is not available (core/builtin/model.py could not be imported: {exc})",
            code="weights_missing",
            param="backbone.pretrained",
        ) from exc
    return builtin_model


def _model_config(name: str) -> dict[str, Any]:
    if name in TINY_CONFIGS:
        return copy.deepcopy(TINY_CONFIGS[name])
    if name == BUILTIN_MODEL:
        return copy.deepcopy(dict(_builtin_module().TINY_CLIP_CONFIG))
    if name.startswith(("hf-hub:", "local-dir:")):
        raise BackboneError(
            f"backbone '{name}': hub and directory schemas are not supported; use an architecture name "
            "and a local weights file",
            code="unknown_backbone",
            param="backbone.model",
        )
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise BackboneError(
            f"unknown backbone '{name}' (not an open_clip architecture nor one of "
            f"{sorted([*TINY_CONFIGS, BUILTIN_MODEL])})",
            code="unknown_backbone",
            param="backbone.model",
        )
    return cfg


def _register(name: str, cfg: dict[str, Any]) -> None:
    """Make ``name`` known to open_clip's in-memory registry (its config files are left untouched)."""
    oc_factory._MODEL_CONFIGS[name] = copy.deepcopy(cfg)


def _cached_tag_file(name: str, tag: str, cache_dir: str | None) -> str:
    """Path of the already-downloaded weights of an open_clip pretrained tag, else BackboneError."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise BackboneError(
            f"pretrained '{tag}' is neither a known open_clip tag for '{name}' nor an existing file "
            f"(known tags: {open_clip.list_pretrained_tags_by_model(name)})",
            code="weights_missing",
            param="backbone.pretrained",
        )
    if cfg.get("file"):
        if os.path.isfile(cfg["file"]):
            return cfg["file"]
        raise BackboneError(
            f"weights file missing: {cfg['file']}", code="weights_missing", param="backbone.pretrained"
        )
    wanted: list[str] = []
    hub = cfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        try:
            from huggingface_hub import try_to_load_from_cache

            for fn in names:
                hit = try_to_load_from_cache(repo_id, fn, cache_dir=cache_dir)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
        except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip
            pass
        wanted += [f"hf://{repo_id}/{fn}" for fn in names]
    url = cfg.get("url", "")
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(target):
            return target
        wanted.append(target)
    raise BackboneError(
        f"weights for {name}/{tag} are not in the local cache and are never downloaded at run time; "
        f"place one of these files: {', '.join(wanted)}",
        code="weights_missing",
        param="backbone.pretrained",
    )


def cached_tags(cache_dir: str | None) -> list[str]:
    """``model/tag`` of every open_clip pretrained tag whose weights are already in the local cache (what a
    worker can load for a tag without downloading); only architectures in ``mergetune.core.config.KNOWN_MODELS``."""
    from mergetune.core.config import OPEN_CLIP_MODELS

    out = []
    for name, tag in open_clip.list_pretrained():
        if name not in OPEN_CLIP_MODELS:
            continue
        try:
            _cached_tag_file(name, tag, cache_dir)
        except BackboneError:
            continue
        out.append(f"{name}/{tag}")
    return sorted(out)


#: Keys that OpenAI's CLIP state dicts (and the state dicts of its TorchScript archives) carry besides the
#: parameters; open_clip's own checkpoints never have them.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
OPENAI_FORMATS = frozenset({"openai_torchscript", "openai_state_dict"})


def _is_torchscript(path: str) -> bool:
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_weights(path: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, format) of a weights file. OpenAI's formats are recognised: a TorchScript archive
    (what OpenAI published and open_clip caches for the ``openai`` tag) or a plain state dict with OpenAI's
    extra keys (``input_resolution``, ``context_length``, ``vocab_size``). Plain pickles are read with
    ``weights_only=True``; a TorchScript archive is read by ``torch.jit.load`` (weights under the model
    root are the operator's files, never uploads). Errors never quote the file's content."""
    fmt = "state_dict"
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            return dict(load_file(path, device="cpu")), "safetensors"
        if _is_torchscript(path):
            sd = dict(torch.jit.load(path, map_location="cpu").state_dict())
            fmt = "openai_torchscript"
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
                obj = obj["state_dict"]
            if not isinstance(obj, dict):
                raise TypeError("not a state dict")
            sd = {str(k): v for k, v in obj.items()}
            if sd and all(k.startswith("module.") for k in sd):
                sd = {k[len("module.") :]: v for k, v in sd.items()}
            if any(k in sd for k in OPENAI_EXTRA_KEYS) or (_clip_layout(sd) and _mostly_fp16(sd)):
                fmt = "openai_state_dict"  # with OpenAI's extra ints, or kept in fp16 as OpenAI's code does
    except Exception as exc:  # torch raises many types for a bad file; their text may quote the file
        raise BackboneError(
            f"the weights file could not be read as a state dict, an OpenAI TorchScript archive or "
            f"safetensors ({type(exc).__name__})",
            code="weights_invalid",
            param="backbone.pretrained",
        ) from None
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BackboneError(
            "the weights file holds non-tensor entries", code="weights_invalid", param="backbone.pretrained"
        )
    return sd, fmt


#: Keys every state dict in CLIP's layout has (OpenAI's, CoOp's ``clip_model.state_dict()``, and
#: open_clip's own for models with the standard text tower).
CLIP_LAYOUT_KEYS = ("positional_embedding", "text_projection", "token_embedding.weight", "ln_final.weight")


def _clip_layout(sd: dict[str, Any]) -> bool:
    return all(k in sd for k in CLIP_LAYOUT_KEYS) and any(k.startswith("visual.") for k in sd)


def _mostly_fp16(sd: dict[str, Any]) -> bool:
    """OpenAI's ``build_model`` (and so CoOp's CLIP) converts the weights to fp16; open_clip keeps fp32.
    True when most floating-point values are fp16."""
    sizes = {True: 0, False: 0}
    for v in sd.values():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            sizes[v.dtype == torch.float16] += v.numel()
    return sizes[True] > sizes[False]


def _load_openai_state_dict(model: torch.nn.Module, sd: dict[str, torch.Tensor], name: str) -> None:
    """OpenAI's keys are open_clip's CLIP keys; drop the three extras, load fp32 (OpenAI stores fp16)."""
    sd = {
        k: v.float() if v.is_floating_point() else v
        for k, v in sd.items()
        if k not in OPENAI_EXTRA_KEYS and not k.endswith("attn_mask")  # the causal mask is rebuilt
    }
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    misfit = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or extra or misfit:
        raise BackboneError(
            f"the OpenAI-format weights do not fit '{name}': {len(missing)} of its tensors missing, "
            f"{len(misfit)} with other shapes, {len(extra)} unexpected; name the architecture the file holds",
            code="weights_invalid",
            param="backbone.pretrained",
        )
    model.load_state_dict(sd, strict=True)


def activation_of(model: torch.nn.Module) -> str:
    """ "quick_gelu" when the model's MLPs use QuickGELU (OpenAI CLIP), else "gelu"."""
    from open_clip.transformer import QuickGELU

    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in model.modules()) else "gelu"


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns on the root logger that a model without a pretrained tag is "initialized
    randomly"; here the weights are loaded right after (or random init is what was asked for)."""

    def keep(record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def load_backbone(
    spec: BackboneSpec,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    *,
    model_root: str | os.PathLike[str] | None = None,
    forbidden: Iterable[str | os.PathLike[str]] = (),
) -> Backbone:
    """Build the frozen CLIP described by ``spec`` on ``device``. Never downloads anything.

    With ``model_root`` (the service always passes it), a weights file must be named under it and is
    confined like dataset paths (``mergetune.core.checkpoints.weights.resolve_weights``; never inside ``forbidden``). Without
    it (library use) a path is taken as given. OpenAI-format weights are built with QuickGELU whatever
    the name says (open_clip does so only for its ``openai`` tag and ``-quickgelu`` names); a name
    configured with GELU then gets a note in ``Backbone.warnings``."""
    name, pretrained = spec.model, spec.pretrained
    cfg = _model_config(name)
    text_cfg = cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg or "hf_tokenizer_name" in text_cfg or "multimodal_cfg" in cfg:
        raise BackboneError(
            f"backbone '{name}' has a custom text tower; prompt learning needs the standard CLIP text encoder",
            code="unknown_backbone",
            param="backbone.model",
        )

    seed = parse_random(pretrained)
    weights: str | None = None
    force_quick_gelu = False
    warnings: list[str] = []
    if seed is None:
        if pretrained == "builtin":
            if name != BUILTIN_MODEL:
                raise BackboneError(
                    f"pretrained 'builtin' only exists for model '{BUILTIN_MODEL}'",
                    code="weights_missing",
                    param="backbone.pretrained",
                )
            weights = str(_builtin_module().WEIGHTS_PATH)
            if not os.path.isfile(weights):
                raise BackboneError(
                    f"built-in weights file missing: {weights}",
                    code="weights_missing",
                    param="backbone.pretrained",
                )
        elif model_root is not None and is_file_reference(pretrained):
            weights = str(resolve_weights(model_root, pretrained, forbidden=forbidden))
        elif model_root is None and os.path.isfile(pretrained):
            weights = pretrained
        elif name in TINY_CONFIGS or name == BUILTIN_MODEL:
            raise BackboneError(
                f"'{name}' takes pretrained 'random', 'random:<seed>'"
                + (", 'builtin'" if name == BUILTIN_MODEL else "")
                + f" or a local weights file; '{pretrained}' is none of these",
                code="weights_missing",
                param="backbone.pretrained",
            )
        else:
            weights = _cached_tag_file(name, pretrained, cache_dir)
            force_quick_gelu = bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))

    state_dict: dict[str, torch.Tensor] | None = None
    weights_format: str | None = None
    if weights is not None and pretrained != "builtin":
        state_dict, weights_format = read_weights(weights)
        if weights_format in OPENAI_FORMATS:
            if not force_quick_gelu and not cfg.get("quick_gelu", False):
                kind = "TorchScript archive" if weights_format == "openai_torchscript" else "state dict"
                warnings.append(
                    f"model '{name}' is configured with GELU but the weights are OpenAI CLIP's (an OpenAI "
                    f"{kind}); built with QuickGELU as OpenAI trained it, the same as '{name}-quickgelu' "
                    "or the 'openai' tag would build it"
                )
            force_quick_gelu = True
        elif (
            state_dict is not None
            and not force_quick_gelu
            and not cfg.get("quick_gelu", False)
            and f"{name}-quickgelu" in KNOWN_MODELS
            and _clip_layout(state_dict)
        ):
            # fp32 in CLIP's layout without OpenAI's ints: open_clip's (GELU) or OpenAI's / CoOp's CLIP
            # converted to fp32 (QuickGELU); the file cannot tell. Built as the name says, with a note.
            warnings.append(
                f"the weights are a plain state dict in CLIP's layout (no input_resolution, context_length "
                f"or vocab_size), built with GELU as '{name}' is configured; OpenAI's CLIP and CoOp's "
                f"(torch.save(model.state_dict())) were trained with QuickGELU: if these are theirs, name "
                f"'{name}-quickgelu' instead"
            )
    elif weights is not None:
        weights_format = "builtin"

    reg_name = f"mergetune::{name}"
    _register(reg_name, cfg)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]), _quiet_random_init_warning():
        torch.manual_seed(seed or 0)
        model = open_clip.create_model(
            reg_name,
            pretrained=None,
            device="cpu",
            force_quick_gelu=force_quick_gelu,
            pretrained_text=False,
        )
    if weights is not None:
        try:
            if pretrained == "builtin" and hasattr(_builtin_module(), "load_weights_into"):
                _builtin_module().load_weights_into(model, weights)  # packed fp16, trimmed embedding rows
            elif weights_format in OPENAI_FORMATS:
                assert state_dict is not None
                _load_openai_state_dict(model, state_dict, name)
            else:
                state_dict = None  # open_clip reads the file again with its conversions (timm, old text keys)
                open_clip.load_checkpoint(model, weights, strict=True, weights_only=True)
        except BackboneError:
            raise
        except Exception as exc:  # torch/safetensors raise many types; their text names the file's tensors
            raise BackboneError(
                f"the weights file does not load into '{name}' ({type(exc).__name__}); name the "
                "architecture the file holds",
                code="weights_invalid",
                param="backbone.pretrained",
            ) from None
        state_dict = None
        identity = sha256_file(weights)
    else:
        identity = f"random:{seed}"
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if not hasattr(model, "token_embedding"):
        raise BackboneError(
            f"backbone '{name}' has no standard CLIP text tower",
            code="unknown_backbone",
            param="backbone.model",
        )

    tokenizer = open_clip.get_tokenizer(reg_name)
    image_size = model.visual.image_size
    image_size = int(image_size[0] if isinstance(image_size, tuple | list) else image_size)
    pp = open_clip.get_model_preprocess_cfg(model)
    mean = tuple(pp.get("mean", Backbone.mean))
    std = tuple(pp.get("std", Backbone.std))
    proj = model.text_projection
    embed_dim = proj.out_features if isinstance(proj, torch.nn.Linear) else int(proj.shape[1])
    logger.info("loaded backbone %s (%s) identity=%s on %s", name, pretrained, identity, dev)
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        name=name,
        pretrained=pretrained,
        identity=identity,
        text_width=int(model.token_embedding.weight.shape[1]),
        embed_dim=int(embed_dim),
        image_size=image_size,
        logit_scale=float(model.logit_scale.detach().exp().item()),
        device=dev,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        activation=activation_of(model),
        weights_format=weights_format,
        warnings=warnings,
    )
