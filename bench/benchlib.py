"""Shared helpers of the benchmark scripts (not part of the service; run with the project's venv).

Everything here measures, it never asserts a time: benchmarks print ratios measured side by side in
one run on one machine, with medians over repeated runs because the machine may be shared.
"""

from __future__ import annotations

import os
import platform
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# Class-name vocabulary for synthetic problems: real English words, 1-3 words per name, so that
# tokenised prompt lengths (and therefore the EOT-trim length) resemble real datasets' class names.
_WORDS = (
    "red green blue golden spotted striped tabby persian siamese maine coon bengal beagle boxer "
    "terrier retriever shepherd poodle husky pug hound setter spaniel mastiff collie airliner glider "
    "biplane fighter jet helicopter rocket tulip daisy orchid lily rose sunflower lotus iris poppy "
    "violet forest river lake highway residential industrial pasture annual crop permanent sea "
    "meadow canyon desert glacier volcano harbor bridge castle church tower temple market kitchen "
    "library station stadium pizza sushi ramen waffle pancake burrito taco lasagna risotto omelette "
    "braided bumpy chequered cracked crystalline dotted fibrous frilly grid honeycombed knitted lacy "
    "marbled meshed paisley pleated porous potholed scaly smeared sprinkled stained woven zigzagged "
    "archery bowling boxing diving fencing juggling knitting rowing skiing surfing typing yoga"
).split()


def classnames(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct deterministic class names of 1-3 words (plus a numeric suffix when needed)."""
    rng = random.Random(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = " ".join(rng.choice(_WORDS) for _ in range(rng.choice((1, 2, 2, 3))))
        if name in seen:
            name = f"{name} {len(names)}"
        seen.add(name)
        names.append(name)
    return names


class RandomImages:
    """Image source of random RGB images (``load_image(key)``), deterministic per key."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seed = seed

    def load_image(self, key: str) -> Image.Image:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + (hash_key(key) & 0xFFFFFFF))
        arr = torch.randint(0, 256, (self.size, self.size, 3), generator=g, dtype=torch.uint8)
        return Image.fromarray(arr.numpy(), "RGB")


def hash_key(key: str) -> int:
    h = 1469598103934665603
    for ch in key.encode():
        h = ((h ^ ch) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


@dataclass
class Rec:
    key: str
    label: int


@dataclass
class SyntheticTask:
    """A base-to-novel task with random images (satisfies mergetune.core.model.features.TaskLike)."""

    base_classnames: list[str]
    novel_classnames: list[str]
    train: list[Rec]
    val: list[Rec]
    test_base: list[Rec]
    test_novel: list[Rec]
    template: str
    dataset: RandomImages
    split_sha256: str = "synthetic"
    extra: dict = field(default_factory=dict)


def synthetic_task(
    n_base: int, shots: int, image_size: int, *, test_per_class: int = 2, seed: int = 0
) -> SyntheticTask:
    names = classnames(2 * n_base, seed)
    base, novel = names[:n_base], names[n_base:]

    def recs(split: str, n_cls: int, per: int, offset: int = 0) -> list[Rec]:
        return [Rec(f"{split}:{offset + c}:{i}", c) for c in range(n_cls) for i in range(per)]

    return SyntheticTask(
        base_classnames=base,
        novel_classnames=novel,
        train=recs("train", n_base, shots),
        val=recs("val", n_base, min(shots, 4)),
        test_base=recs("test", n_base, test_per_class),
        test_novel=recs("test", n_base, test_per_class, offset=n_base),
        template="a photo of a {}.",
        dataset=RandomImages(image_size, seed),
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    sync(device)
    return statistics.median(timed(fn, device) for _ in range(max(1, repeats)))


def pick_threads(choice: str, probe: Callable[[], object] | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads to 1, 2 or (``auto``) whichever of 1/2 runs ``probe`` faster."""
    if choice != "auto":
        n = int(choice)
        torch.set_num_threads(n)
        return n, f"{n} (set by --threads)"
    if probe is None:
        torch.set_num_threads(1)
        return 1, "1 (default)"
    times = {}
    for n in (1, 2):
        if n > (os.cpu_count() or 1):
            continue
        torch.set_num_threads(n)
        times[n] = median_time(probe, torch.device("cpu"), repeats=3)
    best = min(times, key=lambda k: times[k])
    torch.set_num_threads(best)
    detail = ", ".join(f"{k} thread(s): {v * 1e3:.1f} ms" for k, v in times.items())
    return best, f"{best} (probe: {detail})"


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    try:
        load = " load avg {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = ""
    cpu = platform.processor() or platform.machine()
    model = cpu_model()
    return f"CPU only, {os.cpu_count()} cores, {model or cpu}; torch {torch.__version__};{load}"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


# ---------------------------------------------------------------------------------------------------
# launching the service's processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uvicorn_command(port: int, log_level: str = "warning") -> list[str]:
    """``uvicorn --factory mergetune.api.main:create_app`` on 127.0.0.1:``port`` (run it from the repository)."""
    return [
        sys.executable, "-m", "uvicorn", "--factory", "mergetune.api.main:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", log_level,
    ]  # fmt: skip


def worker_command(nodename: str) -> list[str]:
    """``celery -A mergetune.worker.celery_app worker --pool solo -c 1`` on the jobs queue, named ``nodename``."""
    return [
        sys.executable, "-m", "celery", "-A", "mergetune.worker.celery_app", "worker", "--pool", "solo", "-c", "1",
        "-Q", "mergetune", "-n", nodename, "--without-gossip", "--without-mingle", "--loglevel", "INFO",
    ]  # fmt: skip
