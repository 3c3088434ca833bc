"""The worker's side of inputs by reference: an ``s3://`` dataset opens as the API registered it and its
images come through the input cache; ``s3://`` weights are fetched, verified and built as a local file."""

from __future__ import annotations

import hashlib
import io

import pytest
import s3_support as s3
import torch

from mergetune.common.remote import inputs_for
from mergetune.common.settings import Settings
from mergetune.core.config import BackboneSpec
from mergetune.core.data import base_to_novel
from mergetune.core.errors import BackboneError, DatasetError
from mergetune.worker.backbones import get_backbone
from mergetune.worker.remote_inputs import local_weights, open_dataset_row


@pytest.fixture(scope="module")
def endpoint():
    with s3.moto_server() as url:
        yield url


@pytest.fixture
def settings(tmp_path, endpoint):
    return Settings(
        HOME=tmp_path / "home", S3_ENDPOINT_URL=endpoint, INPUT_CACHE_MAX_BYTES=1 << 20, **s3.CREDENTIALS
    )


def test_a_bucket_dataset_reads_its_images_through_the_cache(settings, endpoint):
    files = s3.eurosat_files()
    s3.put_tree(s3.client(endpoint), "data", "w/eurosat", files)
    ds = open_dataset_row(settings, "coop", "s3://data/w/eurosat", coop_name=None, options=None)
    assert ds.name == "EuroSAT" and ds.num_classes == 6
    assert len(ds.splits["train"]) == 24 and ds.listing_sha256
    task = base_to_novel(ds, shots=2, seed=1)
    rec = ds.splits["test"][0]
    rel = rec.key.split("/", 1)[1]
    from PIL import Image

    expected = Image.open(io.BytesIO(files[rel])).convert("RGB")
    assert ds.load_image(rec.key).tobytes() == expected.tobytes()
    cached = list((settings.INPUT_CACHE_DIR / "objects").iterdir())
    assert len(cached) == 1 and cached[0].read_bytes() == files[rel]
    for r in task.train:
        ds.load_image(r.key)
    assert len(list((settings.INPUT_CACHE_DIR / "objects").iterdir())) == 1 + len(task.train)
    # the registered hash is what the worker computes again
    again = open_dataset_row(settings, "coop", "s3://data/w/eurosat", coop_name=None, options=None)
    assert again.split_sha256() == ds.split_sha256()


def test_an_image_the_split_file_names_but_the_bucket_lacks(settings, endpoint):
    files = s3.eurosat_files()
    missing = next(k for k in files if k.endswith(".png") and "_test0" in k)
    del files[missing]
    s3.put_tree(s3.client(endpoint), "data", "holes/eurosat", files)
    ds = open_dataset_row(settings, "coop", "s3://data/holes/eurosat", coop_name=None, options=None)
    (rec,) = [r for r in ds.splits["test"] if r.key.endswith(missing)]
    with pytest.raises(DatasetError) as e:
        ds.load_image(rec.key)
    assert (e.value.code, e.value.param) == ("not_found", "path") and "2750/" in e.value.message


def test_a_bucket_that_went_away_is_the_datasets_fault(settings):
    with pytest.raises(DatasetError) as e:
        open_dataset_row(settings, "coop", "s3://gone-bucket/eurosat", coop_name=None, options=None)
    assert e.value.code == "not_found" and e.value.param == "path"


def _openai_weights() -> bytes:
    src = get_backbone(BackboneSpec(model="tiny-test", pretrained="random:7"), "cpu")[0]
    sd = {k: (v.half() if v.is_floating_point() else v).clone() for k, v in src.model.state_dict().items()}
    sd.update(
        input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408)
    )
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def test_weights_by_reference_are_fetched_verified_and_built(settings, endpoint):
    data = _openai_weights()
    sha = hashlib.sha256(data).hexdigest()
    c = s3.client(endpoint)
    s3.put_tree(c, "models", "", {})
    c.put_object(Bucket="models", Key="clip/tiny-openai.pt", Body=data, Metadata={"sha256": sha})
    spec = BackboneSpec(model="tiny-test", pretrained="s3://models/clip/tiny-openai.pt")
    with local_weights(settings, spec) as local:
        assert local.pretrained == str(settings.INPUT_CACHE_DIR / "objects" / f"sha256-{sha}.pt")
        bb, _ = get_backbone(local, "cpu")
    assert bb.weights_format == "openai_state_dict" and bb.activation == "quick_gelu"

    c.put_object(Bucket="models", Key="clip/lying.pt", Body=data, Metadata={"sha256": "0" * 64})
    with (
        pytest.raises(BackboneError) as e,
        local_weights(settings, spec.model_copy(update={"pretrained": "s3://models/clip/lying.pt"})),
    ):
        pass
    assert e.value.code == "weights_invalid" and e.value.param == "backbone.pretrained"
    assert not (settings.INPUT_CACHE_DIR / "objects" / f"sha256-{'0' * 64}.pt").exists()

    with (
        pytest.raises(BackboneError) as e,
        local_weights(settings, spec.model_copy(update={"pretrained": "s3://models/nope.pt"})),
    ):
        pass
    assert e.value.code == "weights_missing"
    assert inputs_for(settings).cache is not None
