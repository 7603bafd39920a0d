"""FaceLLMProcessor: message formats, token layout, label masking, padding, face selection, bad inputs."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_facellm import analysis, ask, tiny_model

from facellm.processor import IGNORE_INDEX, FaceLLMProcessor, ImageInputError
from facellm.tools.image_io import ImageLoadError
from facellm.tools.photos import photo


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tiny_proc"))


@pytest.fixture(scope="module")
def proc(model):
    return model.processor


def test_labels_cover_only_assistant_turns(proc):
    conv = ask("astronaut", "Describe the image.", "a smiling woman") + [
        {"role": "user", "content": "How old does face 2 look?"},
        {"role": "assistant", "content": "six people"},
    ]
    batch = proc(conv, analyses=[analysis("astronaut")])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    keep = labels != IGNORE_INDEX
    assert torch.equal(labels[keep], ids[keep])
    tok = proc.tokenizer
    assert tok.decode(ids[keep]) == "a smiling woman<|im_end|>six people<|im_end|>"
    # the whole sequence is exactly the chat template's rendering of the expanded conversation
    text = tok.decode(ids)
    # FaceLLM's template: the default system prompt first, then ChatML turns
    assert text.startswith("<|im_start|>system\nYou are FaceLLM") and "<|im_start|>user\n<image>" in text
    assert text.endswith("six people<|im_end|>\n")
    assert "Face 1 (middle): <face>" in text
    # spans of labelled tokens == the assistant turns: two runs
    runs = torch.diff(keep.int()).abs().sum().item()
    assert runs == 4


def test_token_layout_and_face_selection(proc, model):
    batch = proc(ask("group", "Describe the image."), analyses=[analysis("group")])
    text = proc.tokenizer.decode(batch["input_ids"][0])
    t = model.config.tokens_per_face
    assert text.count("<image>") == 64 and text.count("<face>") == 4 * t
    a = analysis("group")
    assert a.num_faces == 6
    kept_scores = sorted(f.score for f in a.faces)[-4:]
    kept = [f for f in a.faces if f.score in kept_scores]
    # faces keep the left-to-right order and their markers number them from 1
    for i, f in enumerate(kept, start=1):
        assert f"Face {i} (" in text
    assert "Face 5" not in text and "(6 faces found; the 4 most confident are shown)" in text
    # region points of face 1 lie around its box on the grid (stride 8 at 64 px, 1280 px wide photo)
    pts = batch["region_points"][0, 0][batch["region_point_mask"][0, 0]]
    box = batch["face_boxes"][0, 0]
    assert (pts[:, 0].min() > box[0] - 1) and (pts[:, 0].max() < box[2] + 1)
    g = batch["face_geometry"][0, 0].view(-1, 3)
    assert g[:, 0].abs().max() < 1.0 and g[:, 1].abs().max() < 1.0 and g.abs().sum() > 0


def test_image_part_formats_agree(proc, tmp_path):
    path = photo("astronaut")
    raw = path.read_bytes()
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    pil = Image.open(path)
    a = [analysis("astronaut")]
    variants = [
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "hi"}]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(path)}}, "hi"]}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": "file://" + str(path)}, "hi"]}],
        [{"role": "user", "content": [{"type": "image", "image": pil}, {"type": "text", "text": "hi"}]}],
    ]
    outs = [proc(v, analyses=a) for v in variants]
    outs.append(proc([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}],
                     images=[np.asarray(pil.convert("RGB"))], analyses=a))
    for o in outs[1:]:
        assert torch.equal(o["input_ids"], outs[0]["input_ids"])
        assert torch.equal(o["pixel_values"], outs[0]["pixel_values"])
    # the tools run when no analysis is given, and their result comes back for reuse
    fresh = proc(variants[0])
    assert fresh.analyses[0].num_faces == 1 and torch.equal(fresh["region_points"], outs[0]["region_points"])


def test_batching_padding_and_several_images(proc):
    convs = [ask("astronaut", "Describe the image."),
             [{"role": "user", "content": [{"type": "image", "image": str(photo("astronaut"))},
                                           {"type": "text", "text": "and"},
                                           {"type": "image", "image": str(photo("group"))},
                                           {"type": "text", "text": "Describe the image."}]}]]
    an = [analysis("astronaut"), analysis("astronaut"), analysis("group")]
    right = proc(convs, analyses=an)
    left = proc(convs, analyses=an, add_generation_prompt=True)
    assert right["pixel_values"].shape[0] == 3 and right["face_mask"].shape == (3, 4)
    assert right["attention_mask"][0, -1] == 0 and right["attention_mask"][0, 0] == 1
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1
    pad = proc.tokenizer.pad_token_id
    assert (right["input_ids"][right["attention_mask"] == 0] == pad).all()
    text = proc.tokenizer.decode(left["input_ids"][1][left["attention_mask"][1] == 1])
    assert text.endswith("<|im_start|>assistant\n") and text.count("<image>") == 128
    user = text.index("<|im_start|>user")
    assert text.index("Face 1 (middle)") < text.index("and", user) < text.index("Face 4 (right)")


def test_bad_inputs_fail_clearly(proc, tmp_path):
    with pytest.raises(ImageInputError, match="remote image URLs are not fetched"):
        proc([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}]}])
    with pytest.raises(ImageInputError, match="data URI"):
        proc([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError):
        proc([{"role": "user", "content": [{"type": "image", "image": str(bad)}]}])
    with pytest.raises(ImageLoadError, match="no such file"):
        proc([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": str(tmp_path / "x.jpg")}}]}])
    with pytest.raises(ValueError, match="reserved tokens"):
        proc([{"role": "user", "content": "look at <image> here"}])
    with pytest.raises(ImageInputError, match="no image"):
        proc([{"role": "user", "content": [{"type": "image"}]}])
    with pytest.raises(ImageInputError, match="not referenced"):
        proc([{"role": "user", "content": "hi"}], images=[np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(ValueError, match="content part type"):
        proc([{"role": "user", "content": [{"type": "audio", "audio": "x"}]}])
    with pytest.raises(ValueError, match="analyses given"):
        proc(ask("astronaut", "hi"), analyses=[])
    with pytest.raises(ValueError, match="over the limit of 50"):
        proc(ask("astronaut", "hi"), analyses=[analysis("astronaut")], max_length=50)


def test_processor_save_load(proc, tmp_path):
    proc.save_pretrained(tmp_path)
    again = FaceLLMProcessor.from_pretrained(tmp_path)
    assert again.settings == proc.settings
    assert (again.image_token_id, again.face_token_id) == (proc.image_token_id, proc.face_token_id)
    a = proc(ask("group", "Describe the image.", "six people"), analyses=[analysis("group")])
    b = again(ask("group", "Describe the image.", "six people"), analyses=[analysis("group")])
    assert all(torch.equal(a[k], b[k]) for k in a.keys())
    with pytest.raises(FileNotFoundError):
        FaceLLMProcessor.from_pretrained(tmp_path / "nothing")


def test_tools_and_tool_turns_use_the_shared_template(proc):
    from facellm.toolcall import parse_tool_calls, render_chatml
    from facellm.tools.registry import openai_tools

    tools = openai_tools(["detect"])
    conv = [{"role": "user", "content": [{"type": "image", "image": str(photo("astronaut"))},
                                         {"type": "text", "text": "How many faces?"}]},
            {"role": "assistant", "content": None,
             "tool_calls": [{"type": "function", "function": {"name": "detect", "arguments": {"image": "image_1"}}}]},
            {"role": "tool", "tool_call_id": "c1", "content": '{"num_faces": 1}'},
            {"role": "assistant", "content": "One face."}]
    batch = proc(conv, tools=tools)
    text = proc.tokenizer.decode(batch["input_ids"][0])
    plain = [m if m["role"] != "user" else {"role": "user", "content": "<image>\nHow many faces?"} for m in conv]
    expected = render_chatml(plain, tools)
    # the same text as the shared renderer once the image's placeholder span is folded back to one <image>
    start, end = text.index("<image>"), text.index("\nHow many faces?")
    assert text[:start] + "<image>" + text[end:] == expected
    assert '"name": "detect"' in text and "<tools>" in text and "<tool_response>" in text
    assert text.count("<|im_start|>assistant") == 2 and expected.count("<|im_start|>assistant") == 2
    labelled = proc.tokenizer.decode(batch["labels"][0][batch["labels"][0] != -100])
    # both assistant turns are learned (the call and the answer), the tool's response is not
    assert "<tool_call>" in labelled and "One face." in labelled and "num_faces" not in labelled
    assert parse_tool_calls(labelled.split("<|im_end|>")[0]).tool_calls[0].name == "detect"
