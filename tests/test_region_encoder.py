"""The face-region encoder: it looks where the landmarks are, its output follows them, faces don't leak."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_facellm import analysis, ask, tiny_model

from facellm.configuration import FaceLLMConfig
from facellm.region_encoder import RegionEncoder

FACE_INPUTS = ("face_mask", "region_points", "region_point_mask", "face_geometry", "face_identity",
               "region_masks", "region_mask_valid")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_re")


def _visual(model, batch):
    with torch.no_grad():
        return model.encode_images(batch["pixel_values"], **{k: batch[k] for k in FACE_INPUTS if k in batch})


def _shifted(a, dx: float, dy: float):
    """The same analysis with every landmark (not the box) moved by (dx, dy) pixels."""
    b = a.model_copy(deep=True)
    for f in b.faces:
        f.groups = {k: [(x + dx, y + dy) for x, y in v] for k, v in f.groups.items()}
        f.mesh478.points = [(p[0] + dx, p[1] + dy, *p[2:]) for p in f.mesh478.points]
    return b


def test_bias_peaks_on_each_region(root):
    """The proximity bias of each region token is highest on the grid cell holding the region's landmarks."""
    model = tiny_model(root)
    a = analysis("astronaut")
    batch = model.processor(ask("astronaut", "Describe the image."), analyses=[a])
    enc = model.region_encoder
    bias, mu, _ = enc.token_bias((8, 8), batch["region_points"], batch["region_point_mask"], None, None)
    pts = batch["region_points"][0, 0]
    for r, name in enumerate(model.config.regions):
        valid = batch["region_point_mask"][0, 0, r]
        centre = pts[r][valid].mean(0)
        best = int(bias[0, 0, r].argmax())
        assert (best % 8, best // 8) == (int(centre[0]), int(centre[1])), name
    # the whole-face token reaches further than an eye token
    eye, face = model.config.regions.index("right_eye"), model.config.regions.index("face")
    assert (bias[0, 0, face] > -2).sum() > (bias[0, 0, eye] > -2).sum()
    # subject's right eye is on the image left
    assert mu[0, 0, eye, 0] < mu[0, 0, model.config.regions.index("left_eye"), 0]


def test_output_follows_the_landmarks(root):
    model = tiny_model(root).eval()
    a = analysis("astronaut")
    base = model.processor(ask("astronaut", "Describe the image."), analyses=[a])
    moved = model.processor(ask("astronaut", "Describe the image."), analyses=[_shifted(a, 40, 25)])
    assert torch.equal(base["pixel_values"], moved["pixel_values"])
    v0, v1 = _visual(model, base)[0], _visual(model, moved)[0]
    n = 64
    # face tokens and (through patch -> region attention) the patch tokens both change
    assert (v0[n:] - v1[n:]).abs().max() > 1e-3
    assert (v0[:n] - v1[:n]).abs().max() > 1e-4
    # same landmarks -> same output
    assert torch.equal(v0, _visual(model, model.processor(ask("astronaut", "Describe the image."), analyses=[a]))[0])


def test_output_ignores_landmarks_without_region_encoder(root):
    model = tiny_model(root, use_region_encoder=False).eval()
    a = analysis("astronaut")
    base = model.processor(ask("astronaut", "Describe the image."), analyses=[a])
    moved = model.processor(ask("astronaut", "Describe the image."), analyses=[_shifted(a, 40, 25)])
    assert torch.equal(base["input_ids"], moved["input_ids"])
    assert torch.equal(_visual(model, base)[0], _visual(model, moved)[0])


def test_faces_do_not_leak_across_images_and_padding_is_inert(root):
    """An image's tokens are the same alone or batched with a 4-face image (padded face slots invisible)."""
    model = tiny_model(root).eval()
    alone = model.processor(ask("astronaut", "Describe the image."), analyses=[analysis("astronaut")])
    both = model.processor([ask("group", "Describe the image."), ask("astronaut", "Describe the image.")],
                           analyses=[analysis("group"), analysis("astronaut")])
    assert both["face_mask"].tolist()[1] == [True, False, False, False]
    va = _visual(model, alone)[0]
    vb = _visual(model, both)
    assert vb[1].shape == va.shape and torch.allclose(vb[1], va, atol=1e-5)
    assert vb[0].shape[0] == 64 + 4 * model.config.tokens_per_face


def test_image_without_faces(root):
    model = tiny_model(root).eval()
    blank = np.full((120, 160, 3), 200, np.uint8)
    batch = model.processor([{"role": "user", "content": [{"type": "image", "image": blank},
                                                          {"type": "text", "text": "Describe the image."}]},
                             {"role": "assistant", "content": "hello world"}])
    assert batch.analyses[0].num_faces == 0 and batch["face_mask"].shape == (1, 0)
    assert [t.shape[0] for t in _visual(model, batch)] == [64]
    assert torch.isfinite(model(**batch).loss)


def test_mask_bias_uses_parser_regions(root):
    model = tiny_model(root, bias_type="mask").eval()
    assert "parse" in model.processor.settings.analysis_steps
    a = analysis("astronaut", ("mesh", "parse"))
    batch = model.processor(ask("astronaut", "Describe the image.", "a smiling woman"), analyses=[a])
    masks, valid = batch["region_masks"][0, 0], batch["region_mask_valid"][0, 0]
    regions = model.config.regions
    assert valid[regions.index("mouth")] and valid[regions.index("face")] and not valid[regions.index("jaw")]
    # the face mask covers more cells than the mouth mask, and the mouth lies inside the face
    mouth, face = masks[regions.index("mouth")], masks[regions.index("face")]
    assert (face > 0.5).sum() > (mouth > 0).sum() > 0 and (face[mouth > 0] > 0).all()
    bias, _, _ = model.region_encoder.token_bias((8, 8), batch["region_points"], batch["region_point_mask"],
                                                  batch["region_masks"], batch["region_mask_valid"])
    assert int(bias[0, 0, regions.index("mouth")].argmax()) == int(mouth.flatten().argmax())
    assert torch.isfinite(model(**batch).loss)


def test_identity_token(root):
    model = tiny_model(root, use_identity_token=True).eval()
    assert model.config.tokens_per_face == 11 and "embedding" in model.processor.settings.analysis_steps
    a = analysis("astronaut", ("mesh", "embedding"))
    batch = model.processor(ask("astronaut", "Describe the image."), analyses=[a])
    assert batch["face_identity"].shape == (1, 1, 128) and batch["face_identity"].abs().sum() > 0
    other = a.model_copy(deep=True)
    other.faces[0].embedding = [0.0] * 128
    v0 = _visual(model, batch)[0]
    v1 = _visual(model, model.processor(ask("astronaut", "Describe the image."), analyses=[other]))[0]
    assert (v0 - v1).abs().max() > 1e-4


def test_config_validation():
    with pytest.raises(ValueError, match="unknown region"):
        FaceLLMConfig(regions=["ears"])
    with pytest.raises(ValueError, match="bias_type"):
        FaceLLMConfig(bias_type="gaussian")
    enc = RegionEncoder(FaceLLMConfig(region_dim=32, region_heads=2, max_faces=2), vision_dim=16)
    pts = torch.rand(1, 3, 9, 4, 2) * 4
    with pytest.raises(ValueError, match="face embeddings for 2"):
        enc(torch.randn(1, 16, 16), (4, 4), face_mask=torch.ones(1, 3, dtype=torch.bool), region_points=pts,
            region_point_mask=torch.ones(1, 3, 9, 4, dtype=torch.bool))
