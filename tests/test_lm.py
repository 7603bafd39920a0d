"""The language model: SmolLM2 converted from its GGUF once, any causal LM through load_lm, clear errors offline."""

from __future__ import annotations

import json
import os

import pytest
import torch

from facellm.lm import (
    DEFAULT_LM,
    MARKER,
    LMNotFoundError,
    chat,
    is_converted,
    load_gguf,
    load_lm,
    prepare_default_lm,
    save_converted,
    smollm2_gguf,
)

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="session")
def default_dir():
    # converts once per machine (~15 s) if the setup step has not already done it; instant afterwards
    return prepare_default_lm()


@pytest.fixture(scope="module")
def smollm(default_dir):
    return load_lm(DEFAULT_LM, dtype="float32")


def test_converted_folder_is_clean(default_dir):
    assert is_converted(default_dir)
    config = json.loads((default_dir / "config.json").read_text())
    assert "quantization_config" not in config  # else a reload re-attaches the GGUF quantizer
    assert config["model_type"] == "llama" and config["tie_word_embeddings"]
    assert (default_dir / "model.safetensors").stat().st_size > 500e6  # fp32, dequantised
    assert not list(default_dir.parent.glob(f".{default_dir.name}.tmp-*"))
    assert prepare_default_lm() == default_dir  # idempotent and cheap


def test_converted_folder_matches_gguf_logits(smollm):
    """The folder holds exactly the GGUF's dequantised weights: identical logits, identical prompt tokens."""
    model, tok = smollm
    gguf_model, gguf_tok = load_gguf(smollm2_gguf())  # ~13 s: the one GGUF load of the test session
    text = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt").input_ids
    assert torch.equal(ids, gguf_tok(text, return_tensors="pt").input_ids)
    with torch.no_grad():
        a = model(ids).logits
        b = gguf_model(ids).logits
    assert torch.equal(a, b)


def test_chat_template_generation(smollm):
    model, tok = smollm
    assert "<|im_start|>assistant" in tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    answer = chat(model, tok, PROMPT, max_new_tokens=16)
    assert "Paris" in answer
    assert model.config.num_hidden_layers == 30 and tok.model_max_length == 8192 and tok.pad_token is not None


def test_bfloat16_load(default_dir):
    model, tok = load_lm(default_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert "Paris" in chat(model, tok, "What is the capital of France? Answer in one word.", max_new_tokens=8)


# ------------------------------------------------------------------ any causal LM, tiny and local
def _tiny_tokenizer():
    """A 300-token byte-level BPE trained on a few words, with a ChatML template: the shape of Qwen2's and
    SmolLM2's tokenizers (transformers picks Qwen2Tokenizer for a qwen2 folder, which needs byte-level BPE)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(["hello world", "what is the capital of France? Paris.", "user assistant system"], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def _tiny_model(kind: str, tok):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
                  eos_token_id=tok.eos_token_id)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))
    return Qwen2ForCausalLM(Qwen2Config(**common))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_tiny_random_lms_load_through_load_lm(tmp_path, kind):
    torch.manual_seed(0)
    tok = _tiny_tokenizer()
    model = _tiny_model(kind, tok).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, ltok = load_lm(tmp_path)
    assert type(loaded).__name__ == ("LlamaForCausalLM" if kind == "llama" else "Qwen2ForCausalLM")
    ids = ltok.apply_chat_template([{"role": "user", "content": "what is the capital of France?"}],
                                   add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    text = "<|im_start|>user\nwhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert ids[0].tolist() == tok(text).input_ids and ltok.decode(ids[0]) == text
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    # batches need a pad token: Qwen2's tokenizer class brings one, otherwise load_lm fills in the EOS
    assert ltok.pad_token == ("<|im_end|>" if kind == "llama" else "<|endoftext|>")
    assert isinstance(chat(loaded, ltok, "hello world", max_new_tokens=4), str)


def test_atomic_save_leaves_nothing_behind_on_failure(tmp_path):
    tok = _tiny_tokenizer()
    model = _tiny_model("llama", tok)
    dest = tmp_path / "lm" / "tiny"

    class BrokenTokenizer:  # fails halfway, after the weights were written, as a killed conversion would
        def save_pretrained(self, _):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_converted(model, BrokenTokenizer(), dest)
    assert not dest.exists() and not list(dest.parent.iterdir())
    # a stale temp folder of a dead process is swept, a half folder without the marker is replaced
    stale = dest.parent / f".{dest.name}.tmp-999999999"
    stale.mkdir()
    dest.mkdir()
    (dest / "config.json").write_text("{}")
    assert not is_converted(dest)
    save_converted(model, tok, dest)
    assert is_converted(dest) and not stale.exists() and (dest / MARKER).is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny"]
    reloaded, _ = load_lm(dest)
    assert torch.equal(reloaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_missing_models_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(LMNotFoundError, match="HF_HUB_OFFLINE"):
        load_lm("nobody-here/no-such-lm-0b")
    with pytest.raises(LMNotFoundError, match="no such file or folder"):
        load_lm(str(tmp_path / "missing"))
    with pytest.raises(LMNotFoundError, match="no config.json"):
        load_lm(tmp_path)
    with pytest.raises(ValueError, match="unknown dtype"):
        load_lm(tmp_path, dtype="float7")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
