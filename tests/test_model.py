"""FaceLLM end to end on tiny random parts (Llama / Qwen2 LMs, CLIP / SigLIP towers) and on the default
offline model (EfficientNet-Lite0 + SmolLM2): forward, overfitting, save/load, batch shapes, generation."""

from __future__ import annotations

import json
import time

import pytest
import torch
from tiny_facellm import analysis, ask, tiny_model

from facellm.configuration import FaceLLMConfig
from facellm.modeling import FaceLLMForConditionalGeneration
from facellm.processor import IGNORE_INDEX
from facellm.tools.photos import photo


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


def _batch(model, convs, names, **kw):
    return model.processor(convs, analyses=[analysis(n) for n in names], **kw)


@pytest.mark.parametrize("lm,tower", [("llama", "clip"), ("qwen2", "siglip")])
def test_forward_loss_and_multi_face_multi_image_shapes(root, lm, tower):
    model = tiny_model(root, lm, tower)
    convs = [
        [{"role": "user", "content": [{"type": "image", "image": str(photo("group"))},
                                      {"type": "image", "image": str(photo("astronaut"))},
                                      {"type": "text", "text": "Describe the image."}]},
         {"role": "assistant", "content": "six people"}],
        ask("astronaut", "How old does face 2 look?", "a smiling woman"),
    ]
    batch = _batch(model, convs, ["group", "astronaut", "astronaut"])
    cfg = model.config
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    assert batch["face_mask"].sum(1).tolist() == [4, 1, 1]  # the group's 6 faces capped at max_faces=4
    n_img = (batch["input_ids"] == cfg.image_token_id).sum(1).tolist()
    n_face = (batch["input_ids"] == cfg.face_token_id).sum(1).tolist()
    assert n_img == [2 * 64, 64] and n_face == [5 * cfg.tokens_per_face, cfg.tokens_per_face]
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, model.lm.config.vocab_size)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    with torch.no_grad():  # training's loss_only: logits at the labelled positions only, the same loss
        lean = model(**batch, loss_only=True)
    labelled = int((batch["labels"][:, 1:] != -100).any(0).sum())
    assert lean.logits.shape[1] == labelled < batch["input_ids"].shape[1]
    assert torch.allclose(lean.loss, out.loss.detach(), atol=1e-5)
    out.loss.backward()
    assert model.projector.fc1.weight.grad.abs().sum() > 0
    assert model.region_encoder.type_emb.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.lm.parameters())  # the LM is frozen by default
    tokens = model.encode_images(batch["pixel_values"], **{k: batch[k] for k in ("face_mask", "region_points",
                                                                                  "region_point_mask", "face_geometry")})
    assert [t.shape[0] for t in tokens] == [64 + 4 * cfg.tokens_per_face, 64 + cfg.tokens_per_face,
                                            64 + cfg.tokens_per_face]


def test_loss_falls_when_overfitting(root):
    model = tiny_model(root, "llama", "clip", freeze_lm=False)
    convs = [ask("astronaut", "Describe the image.", "a smiling woman in a space suit"),
             ask("group", "Describe the image.", "six people"),
             ask("group", "How old does face 2 look?", "hello world")]
    batch = _batch(model, convs, ["astronaut", "group", "group"])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(30):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < min(losses[:5]), losses


@pytest.mark.parametrize("lm,tower", [("llama", "clip"), ("qwen2", "siglip")])
def test_save_load_round_trip_identical_logits(root, tmp_path, lm, tower):
    model = tiny_model(root, lm, tower, seed=3).eval()
    with torch.no_grad():  # move the new parameters off their init, as training would
        for p in list(model.region_encoder.parameters()) + list(model.projector.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    batch = _batch(model, [ask("group", "Describe the image.", "six people")], ["group"])
    with torch.no_grad():
        ref = model(**batch).logits
    folder = model.save_pretrained(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "facellm" and cfg["architectures"] == ["FaceLLMForConditionalGeneration"]
    assert {"model.safetensors", "processor_config.json", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "lm").exists()  # the frozen base LM is referenced, not copied
    loaded = FaceLLMForConditionalGeneration.from_pretrained(folder)
    batch2 = loaded.processor([ask("group", "Describe the image.", "six people")], analyses=[analysis("group")])
    assert torch.equal(batch2["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded(**batch2).logits, ref)


def test_full_lm_finetune_saves_lm_folder(root, tmp_path):
    model = tiny_model(root, "qwen2", "clip", freeze_lm=False).eval()
    with torch.no_grad():
        model.lm.get_input_embeddings().weight[5] += 1.0  # the LM itself changed: it must be saved
    batch = _batch(model, [ask("astronaut", "Describe the image.")], ["astronaut"])
    with torch.no_grad():
        ref = model(**batch).logits
    folder = model.save_pretrained(tmp_path / "full")
    assert (folder / "lm" / "config.json").is_file()
    loaded = FaceLLMForConditionalGeneration.from_pretrained(folder)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, ref)


def test_generation_greedy_sampling_stop_and_stream(root):
    model = tiny_model(root, "llama", "clip").eval()
    batch = _batch(model, [ask("astronaut", "Describe the image.")], ["astronaut"], add_generation_prompt=True)
    a = model.generate(**batch, max_new_tokens=8)
    b = model.generate(**batch, max_new_tokens=8)
    assert torch.equal(a, b) and 1 <= a.shape[1] <= 8
    # the KV-cached greedy decode agrees with step-by-step full forwards
    ids, embeds_mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
    assert int(logits.argmax(-1)) == int(a[0, 0])
    torch.manual_seed(0)
    s = model.generate(**batch, max_new_tokens=8, do_sample=True, temperature=1.5, top_p=1.0)
    assert s.shape[0] == 1 and s.shape[1] <= 8
    text = model.chat(ask("astronaut", "Describe the image."), analyses=[analysis("astronaut")], max_new_tokens=8)
    streamed = "".join(model.stream(ask("astronaut", "Describe the image."), analyses=[analysis("astronaut")],
                                    max_new_tokens=8))
    assert streamed.strip() == text
    first = text[:2]
    if first.strip():
        cut = model.chat(ask("astronaut", "Describe the image."), analyses=[analysis("astronaut")],
                         max_new_tokens=8, stop_strings=[first])
        assert first not in cut
    # a left-padded batch gives each row the answer it gets alone
    convs = [ask("astronaut", "Describe the image."), ask("group", "How old does face 2 look? six people")]
    both = _batch(model, convs, ["astronaut", "group"], add_generation_prompt=True)
    assert both["attention_mask"][0, 0] == 0  # left padding
    out = model.generate(**both, max_new_tokens=6)
    alone = model.generate(**_batch(model, [convs[1]], ["group"], add_generation_prompt=True), max_new_tokens=6)
    assert out[1, : alone.shape[1]].tolist() == alone[0].tolist()


def test_without_region_encoder_is_plain_llava(root):
    model = tiny_model(root, "llama", "clip", use_region_encoder=False)
    assert model.region_encoder is None and model.projector.fc1.in_features == 32
    batch = model.processor(ask("group", "Describe the image.", "six people"))  # no face tools run
    assert batch.analyses == [None] and "face_mask" not in batch
    assert int((batch["input_ids"] == model.config.face_token_id).sum()) == 0
    assert torch.isfinite(model(**batch).loss)


def test_mismatched_placeholders_fail_clearly(root):
    model = tiny_model(root, "llama", "clip")
    batch = _batch(model, [ask("astronaut", "Describe the image.")], ["astronaut"])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=batch["input_ids"])
    keep = torch.ones(batch["input_ids"].shape[1], dtype=torch.bool)
    keep[int((batch["input_ids"][0] == model.config.image_token_id).nonzero()[0])] = False  # one patch slot less
    short = {**batch, **{k: batch[k][:, keep] for k in ("input_ids", "attention_mask", "labels")}}
    with pytest.raises(ValueError, match="placeholder tokens"):
        model(**short)


@pytest.fixture(scope="module")
def default_model():
    return FaceLLMForConditionalGeneration(FaceLLMConfig())


def test_default_model_end_to_end(default_model):
    model = default_model
    cfg = model.config
    assert cfg.tokens_per_face == 10 and model.vision_tower.num_tokens() == 196
    assert model.lm.config.hidden_size == 576 and cfg.lm_hidden_size == 576
    t0 = time.perf_counter()
    answer = model.chat((str(photo("astronaut")), "What is in this image?"), max_new_tokens=16)
    elapsed = time.perf_counter() - t0
    assert isinstance(answer, str) and answer
    assert elapsed < 120  # ~5 s on an idle 2-core CPU; generous: the shared test machine is often crowded
    batch = model.processor(ask("astronaut", "What is in this image?", "A woman."))
    assert int((batch["input_ids"] == cfg.image_token_id).sum()) == 196
    assert int((batch["input_ids"] == cfg.face_token_id).sum()) == 10
    labelled = batch["labels"][batch["labels"] != IGNORE_INDEX]
    assert model.tokenizer.decode(labelled) == "A woman.<|im_end|>"
    assert torch.isfinite(model(**batch).loss)


def _tiny_openclip_checkpoint(path, width=32, layers=2, patch=8, image=64, embed=16):
    """A random state dict in OpenCLIP's own layout (visual.conv1, visual.transformer.resblocks.N.attn...)."""
    g = torch.Generator().manual_seed(4)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    sd = {"visual.conv1.weight": r(width, 3, patch, patch), "visual.class_embedding": r(width),
          "visual.positional_embedding": r((image // patch) ** 2 + 1, width), "visual.proj": r(width, embed),
          "logit_scale": torch.ones([])}
    for ln in ("ln_pre", "ln_post"):
        sd[f"visual.{ln}.weight"], sd[f"visual.{ln}.bias"] = 1 + r(width), r(width)
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + r(width), r(width)
        sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = r(3 * width, width), r(3 * width)
        sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = r(width, width), r(width)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = r(4 * width, width), r(4 * width)
        sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = r(width, 4 * width), r(width)
    torch.save(sd, path)
    return path


def test_openclip_tower(root, tmp_path):
    import facellm.vision.openclip as oc
    from tiny_facellm import TINY_REGION, tiny_lm_folder

    ckpt = _tiny_openclip_checkpoint(tmp_path / "open_clip_model.bin")
    oc.OPENCLIP_ARCHS["FaceLLM-tiny"] = oc.OpenClipArch(32, 2, 8, 64, 16, head_width=8)
    try:
        config = FaceLLMConfig(vision={"name": "open_clip:FaceLLM-tiny", "checkpoint": str(ckpt)},
                               lm_name_or_path=str(tiny_lm_folder(root, "qwen2")), **TINY_REGION)
        model = FaceLLMForConditionalGeneration(config).eval()
        assert model.vision_tower.family == "open_clip" and model.vision_tower.num_tokens() == 64
        batch = _batch(model, [ask("group", "Describe the image.", "six people")], ["group"])
        with torch.no_grad():
            ref = model(**batch).logits
        loaded = FaceLLMForConditionalGeneration.from_pretrained(model.save_pretrained(tmp_path / "m"))
        with torch.no_grad():
            assert torch.equal(loaded(**batch).logits, ref)
    finally:
        del oc.OPENCLIP_ARCHS["FaceLLM-tiny"]


def test_patch_pool_shows_fewer_patch_tokens_and_trains(root):
    """patch_pool=2: the LM sees a 4x4 grid instead of the tiny tower's 8x8; face tokens are unchanged."""
    full, pooled = tiny_model(root, "llama", "clip"), tiny_model(root, "llama", "clip", patch_pool=2)
    conv = [ask("group", "Describe the image.", "six people")]
    b_full, b_pool = _batch(full, conv, ["group"]), _batch(pooled, conv, ["group"])
    n = lambda b, tok: int((b["input_ids"] == tok).sum())  # noqa: E731
    assert n(b_full, full.config.image_token_id) == 64 and n(b_pool, pooled.config.image_token_id) == 16
    assert n(b_full, full.config.face_token_id) == n(b_pool, pooled.config.face_token_id) == 4 * 10
    out = pooled(**b_pool)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert pooled.region_encoder.patch_in.weight.grad.abs().sum() > 0
    # pooling happens after the region encoder: the face tokens are the same either way
    fm = {k: b_pool[k] for k in ("face_mask", "region_points", "region_point_mask", "face_geometry")}
    with torch.no_grad():
        t_pool = pooled.encode_images(b_pool["pixel_values"], **fm)[0]
        pooled.config.patch_pool = 1
        t_full = pooled.encode_images(b_pool["pixel_values"], **fm)[0]
    assert t_pool.shape[0] == 16 + 40 and t_full.shape[0] == 64 + 40
    assert torch.allclose(t_pool[16:], t_full[64:], atol=1e-5)  # face tokens do not depend on the pooling
