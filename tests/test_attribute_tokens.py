"""Attribute tokens (facellm.attribute_tokens): the tower's attribute head read as word embeddings after each
face's region tokens: placeholder counts, the embeddings themselves, save / load, and the trainer's stage flag."""

from __future__ import annotations

import json

import pytest
import torch

from facellm.attribute_tokens import (AGE_SCALE, EXPRESSIONS, N_ATTRIBUTE_TOKENS, AttributeHead, AttributeTokens,
                                      attribute_word_ids, box_cells)
from facellm.modeling import FaceLLMForConditionalGeneration
from facellm.train.recipe import Recipe, RecipeError
from tiny_facellm import analysis, ask, tiny_model

# distinct ids of the tiny 300-token vocabulary stand in for the words (it has no single-token " disgust")
TINY_WORDS = {"digits": list(range(40, 50)), "space": [50], "gender": [51, 52], "expression": list(range(53, 60)),
              "aged": [61], "comma": [62]}


def _head_saying(channels: int, age: float, gender: int, expression: int) -> dict[str, torch.Tensor]:
    """A head whose answer is the same for every face: biases only."""
    head = AttributeHead(channels)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.age.bias.fill_(age / AGE_SCALE)
        head.gender.bias[gender] = 5.0
        head.expression.bias[expression] = 5.0
    return head.state_dict()


def test_box_cells_cover_the_box_and_a_tiny_face_gets_its_centre_cell():
    boxes = torch.tensor([[[1.0, 1.0, 3.0, 2.0], [5.2, 5.2, 5.4, 5.4]]])
    m = box_cells(boxes, (8, 8))
    assert m.shape == (1, 2, 8, 8)
    assert m[0, 0].sum() == 2 * 1 and m[0, 0, 1, 1] == 1 and m[0, 0, 1, 2] == 1  # centres 1.5, 2.5 in x; 1.5 in y
    assert m[0, 1].sum() == 1 and m[0, 1, 5, 5] == 1


def test_tokens_are_the_words_the_head_reads(tmp_path):
    emb = torch.nn.Embedding(100, 8)
    tok = AttributeTokens(16, TINY_WORDS)
    tok.head.load_state_dict(_head_saying(16, age=34.2, gender=1, expression=EXPRESSIONS.index("happy")))
    fmap = torch.randn(1, 16, 6, 6)
    out = tok(fmap, torch.tensor([[[0.0, 0.0, 3.0, 3.0]]]), emb)
    assert out.shape == (1, 1, N_ATTRIBUTE_TOKENS, 8)
    w = emb.weight
    # " aged 34, woman, happy"
    for i, word in ((0, 61), (1, 50), (2, 43), (3, 44), (4, 62), (6, 62)):
        assert torch.allclose(out[0, 0, i], w[word]), i
    p = torch.softmax(torch.tensor([0.0, 5.0]), 0)
    assert torch.allclose(out[0, 0, 5], p[0] * w[51] + p[1] * w[52], atol=1e-5)  # mostly " woman"
    q = torch.softmax(torch.tensor([5.0 if i == EXPRESSIONS.index("happy") else 0.0 for i in range(7)]), 0)
    assert torch.allclose(out[0, 0, 7], q @ w[53:60], atol=1e-5)
    # a child of 7: " aged", " ", " " then "7"
    tok.head.load_state_dict(_head_saying(16, age=6.6, gender=0, expression=0))
    out = tok(fmap, torch.tensor([[[0.0, 0.0, 3.0, 3.0]]]), emb)
    assert torch.allclose(out[0, 0, 2], w[50]) and torch.allclose(out[0, 0, 3], w[47])


def test_old_word_ids_without_the_cue_words_are_a_clear_error():
    old = {k: v for k, v in TINY_WORDS.items() if k not in ("aged", "comma")}
    with pytest.raises(ValueError, match="aged"):
        AttributeTokens(16, old)


def test_word_ids_are_single_tokens_or_a_clear_error():
    from tiny_facellm import tiny_tokenizer

    with pytest.raises(ValueError, match="single-token"):
        attribute_word_ids(tiny_tokenizer())
    words = ["0 1 2 3 4 5 6 7 8 9", " man woman angry disgust fear happy neutral sad surprise", " aged ,"] * 50
    ids = attribute_word_ids(tiny_tokenizer(words, vocab_size=400))
    assert len(ids["digits"]) == 10 and len(ids["expression"]) == 7 and len(set(sum(ids.values(), []))) == 22


def test_model_with_attribute_tokens_round_trips(tmp_path):
    model = tiny_model(tmp_path, seed=1)
    model.config.attribute_word_ids = TINY_WORDS
    t = model.config.tokens_per_face
    model.enable_attribute_tokens(_head_saying(model.vision_tower.hidden_size, 52.0, 0, 3))
    assert model.config.face_tokens == t + N_ATTRIBUTE_TOKENS
    batch = model.processor(ask("group", "How many faces?"), analyses=[analysis("group")])
    faces = int(batch["face_mask"].sum())
    assert int((batch["input_ids"] == model.config.face_token_id).sum()) == faces * (t + N_ATTRIBUTE_TOKENS)
    with torch.no_grad():
        embeds = model.get_inputs_embeds(**{k: v for k, v in batch.items() if k not in ("attention_mask", "labels",
                                                                                          "image_sizes")})
        logits = model(**batch).logits
    # each face's last eight placeholders hold " aged", " ", "5", "2", ",", " man"-ish, ",", " happy"-ish
    pos = (batch["input_ids"][0] == model.config.face_token_id).nonzero().squeeze(1).view(faces, -1)
    w = model.lm.get_input_embeddings().weight
    assert torch.allclose(embeds[0, pos[0, t]], w[61]) and torch.allclose(embeds[0, pos[-1, t + 4]], w[62])
    assert torch.allclose(embeds[0, pos[0, t + 2]], w[45]) and torch.allclose(embeds[0, pos[-1, t + 3]], w[42])
    folder = model.save_pretrained(tmp_path / "saved")
    assert json.loads((folder / "config.json").read_text())["attribute_tokens"] is True
    again = FaceLLMForConditionalGeneration.from_pretrained(folder)
    assert again.attribute_tokens is not None and not any(p.requires_grad for p in again.attribute_tokens.parameters())
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, logits, atol=1e-5)


def test_recipe_needs_a_tower_stage_before_attribute_tokens():
    with pytest.raises(RecipeError, match="tower"):
        Recipe.from_dict({"name": "x", "stage": [{"name": "a", "attribute_tokens": True}]})
    r = Recipe.from_dict({"name": "x", "stage": [{"name": "t", "kind": "tower", "train": ["vision_tower"]},
                                                 {"name": "a", "attribute_tokens": True}]})
    assert r.stages[1].attribute_tokens


def test_real_recipe_adds_them_in_its_last_stage():
    r = Recipe.load("real")
    assert r.stages[-1].attribute_tokens and r.stages[0].kind == "tower"
    assert not any(s.attribute_tokens for s in r.stages[:-1])


def test_smollm2_words_are_single_tokens():
    from transformers import AutoTokenizer

    from facellm.lm import default_lm_dir, is_converted

    if not is_converted(default_lm_dir()):
        pytest.skip(f"SmolLM2-135M-Instruct is not converted at {default_lm_dir()}: run ./setup.sh")
    tok = AutoTokenizer.from_pretrained(default_lm_dir())
    ids = attribute_word_ids(tok)
    assert len(set(sum(ids.values(), []))) == 22
    # the layout is the LM's own tokenization of the text it stands for
    text = tok.encode(" aged 65, woman, happy", add_special_tokens=False)
    assert text == [ids["aged"][0], ids["space"][0], ids["digits"][6], ids["digits"][5], ids["comma"][0],
                    ids["gender"][1], ids["comma"][0], ids["expression"][EXPRESSIONS.index("happy")]]


def test_projector_norm_puts_visual_tokens_at_the_word_embedding_scale_and_round_trips(tmp_path):
    from facellm.projector import Projector

    proj = Projector(16, 8, out_rms=0.5)
    y = proj(torch.randn(3, 5, 16) * 100)
    assert torch.allclose(y.pow(2).mean(-1).sqrt(), torch.full((3, 5), 0.5), atol=1e-3)
    # a model built with the flag: the gain starts at the LM's own word-embedding RMS, and is saved with it
    model = tiny_model(tmp_path, seed=2, projector_norm=True)
    rms = model.lm.get_input_embeddings().weight.detach().float().pow(2).mean(-1).sqrt().mean()
    assert torch.allclose(model.projector.gain, rms.expand_as(model.projector.gain), rtol=1e-5)
    batch = model.processor(ask("group", "How many faces?"), analyses=[analysis("group")])
    with torch.no_grad():
        tokens = torch.cat(model.encode_images(batch["pixel_values"], **{k: batch[k] for k in (
            "face_mask", "region_points", "region_point_mask", "face_boxes", "face_geometry")}))
        logits = model(**batch).logits
    assert torch.allclose(tokens.pow(2).mean(-1).sqrt(), rms.expand(len(tokens)), rtol=1e-3)
    again = FaceLLMForConditionalGeneration.from_pretrained(model.save_pretrained(tmp_path / "saved"))
    assert again.projector.gain is not None
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, logits, atol=1e-5)
    # a later stage turns it on in a model saved without it (the trainer, when the recipe asks for it)
    plain = tiny_model(tmp_path, seed=2)
    assert plain.projector.gain is None and not plain.config.projector_norm
    plain.enable_projector_norm()
    assert plain.config.projector_norm and plain.projector.gain.shape == (plain.lm.config.hidden_size,)
