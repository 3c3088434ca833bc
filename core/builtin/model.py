"""The built-in tiny CLIP: an open_clip ``CLIP`` (ViT 32x32/8, 4+4 layers, width 128) pretrained by
``mergetune.core.builtin.pretrain`` on the procedural "<colour> <shape>" images of ``mergetune.core.builtin.render``.

Backbone name: ``{"model": "tiny-clip", "pretrained": "builtin"}``. Preprocessing: 32x32 RGB, open_clip's
OpenAI CLIP mean/std (``IMAGE_MEAN``/``IMAGE_STD``), i.e. ``open_clip.image_transform(32, ...)``.
Tokenizer: the real CLIP BPE tokenizer (``open_clip.tokenizer.SimpleTokenizer``, its vocabulary ships
inside the open_clip package; works offline), context length 77.

Shipped file (``tiny_clip.safetensors``, 3.34 MB):
- all tensors in fp16 (``build_tiny_clip`` loads them into an fp32 model; the validation numbers below
  were measured with exactly these rounded weights);
- a trimmed token embedding: pretraining only ever sees the tokens of the caption templates, the 96
  class names and the special tokens, so ``token_embedding.weight`` is stored for those rows only
  (``token_embedding.rows`` = their ids) and the full 49408 x 128 embedding is rebuilt at load with all
  other rows zero. The pretraining run keeps those rows at exactly zero too (zero init, no gradient,
  no weight decay on them), so the shipped model is the trained model up to fp16 rounding. An unknown
  word still tokenizes (real tokenizer path) and only contributes its positional embedding.
- JSON metadata in the safetensors header: ``config`` (``TINY_CLIP_CONFIG``), ``command``, ``seed``,
  ``steps``, ``validation`` (the numbers of ``python -m mergetune.core.builtin.pretrain --check``).

Reproduce (800 steps; 28 min wall on the shared 2-core CPU it was made on, where other jobs were
running; a few minutes on an idle machine)::

    .venv/bin/python -m mergetune.core.builtin.pretrain --out core/builtin/tiny_clip.safetensors

(defaults: --steps 800 --seed 0 --batch-size 128 --lr 0.001 --hue-jitter 0.15 --pool 320 --threads 2
--final-logit-scale 50). Measured validation numbers: see ``core/builtin/pretrain.py``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

MODEL_NAME = "tiny-clip"
PRETRAINED = "builtin"
WEIGHTS_PATH = Path(__file__).with_name("tiny_clip.safetensors")
IMAGE_SIZE = 32
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
SOT_TOKEN = 49406
EOT_TOKEN = 49407
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip OPENAI_DATASET_MEAN
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)  # open_clip OPENAI_DATASET_STD

TINY_CLIP_CONFIG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {
        "context_length": CONTEXT_LENGTH,
        "vocab_size": VOCAB_SIZE,
        "width": 128,
        "heads": 4,
        "layers": 4,
    },
}


def register_open_clip_config() -> None:
    """Make ``open_clip.create_model("tiny-clip")`` work (random init; weights via ``load_weights_into``)."""
    from open_clip import factory

    factory._MODEL_CONFIGS[MODEL_NAME] = copy.deepcopy(TINY_CLIP_CONFIG)


def get_tokenizer():
    """The real CLIP BPE tokenizer (bundled with open_clip), context length 77."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


def new_tiny_clip():
    """A randomly initialised tiny CLIP (open_clip ``CLIP``), fp32, eval mode."""
    from open_clip.model import CLIP

    cfg = copy.deepcopy(TINY_CLIP_CONFIG)
    model = CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])
    return model.eval()


def pack_state_dict(model, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Shipped tensors: fp16, token embedding trimmed to ``rows`` (default: its non-zero rows)."""
    sd = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    emb = sd.pop("token_embedding.weight")
    if rows is None:
        rows = torch.nonzero(emb.abs().sum(dim=1) > 0).flatten()
    rows = torch.as_tensor(rows, dtype=torch.int64).sort().values
    out = {k: v.to(torch.float16).contiguous() for k, v in sd.items() if v.is_floating_point()}
    out.update({k: v.contiguous() for k, v in sd.items() if not v.is_floating_point()})
    out["token_embedding.weight"] = emb[rows].to(torch.float16).contiguous()
    out["token_embedding.rows"] = rows.contiguous()
    return out


def unpack_state_dict(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of ``pack_state_dict``: full-size fp32 state dict (unused embedding rows zero)."""
    tensors = dict(tensors)
    rows = tensors.pop("token_embedding.rows").to(torch.int64)
    small = tensors.pop("token_embedding.weight").to(torch.float32)
    full = torch.zeros(VOCAB_SIZE, small.shape[1], dtype=torch.float32)
    full[rows] = small
    sd = {k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in tensors.items()}
    sd["token_embedding.weight"] = full
    return sd


def save_weights(model, path: str | Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    meta = {"config": json.dumps(TINY_CLIP_CONFIG, sort_keys=True), "model": MODEL_NAME}
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    save_file(pack_state_dict(model), str(path), metadata=meta)


def read_metadata(path: str | Path = WEIGHTS_PATH) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_weights_into(model, path: str | Path = WEIGHTS_PATH):
    from safetensors.torch import load_file

    model.load_state_dict(unpack_state_dict(load_file(str(path))), strict=True)
    return model


def build_tiny_clip(load_weights: bool = True, path: str | Path | None = None):
    """The tiny CLIP (open_clip ``CLIP``, fp32, eval). With ``load_weights`` the shipped weights are
    loaded (``FileNotFoundError`` naming the file when it is absent; mergetune.core.model.backbone maps it to
    ``BackboneError(code="weights_missing")``)."""
    model = new_tiny_clip()
    if load_weights:
        p = Path(path) if path is not None else WEIGHTS_PATH
        if not p.is_file():
            raise FileNotFoundError(f"built-in tiny CLIP weights not found: {p}")
        load_weights_into(model, p)
    return model


def weights_sha256(path: str | Path | None = None) -> str:
    """sha256 hex of the shipped weights file (the backbone identity)."""
    p = Path(path) if path is not None else WEIGHTS_PATH
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def preprocess_array(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] -> normalised float tensor [N, 3, 32, 32] (the test transform, batched)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std
