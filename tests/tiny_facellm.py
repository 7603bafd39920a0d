"""Tiny, randomly initialised FaceLLM parts built locally for the model tests (not a test module itself).

LMs: tiny Llama (tied embeddings) and Qwen2 (untied) over a 300-token byte-level BPE with a ChatML template;
towers: tiny HF CLIP / SigLIP vision models (64 px, patch 8: an 8 x 8 grid) saved to folders, so that model
folders can reference them by path as real ones do.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from facellm.configuration import FaceLLMConfig
from facellm.modeling import FaceLLMForConditionalGeneration
from facellm.tools.analyze import analyze
from facellm.tools.photos import photo

TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=64,
                patch_size=8)
TINY_REGION = dict(region_dim=32, region_heads=2, region_layers=1, max_faces=4)  # 4: the group photo (6) gets capped
WORDS = ["hello world", "what is the capital of France? Paris.", "user assistant system", "Face left right middle",
         "a smiling woman in a space suit", "six people", "How old does face 2 look?", "Describe the image."]


def tiny_tokenizer(texts=None, vocab_size: int = 300):
    """A byte-level BPE tokenizer with ChatML specials, trained on ``texts`` (default: WORDS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(WORDS if texts is None else texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return tok


def tiny_lm_folder(root: Path, kind: str = "llama", hidden: int = 32) -> Path:
    """Save a tiny random Llama / Qwen2 with the tiny tokenizer into ``root/kind``; returns the folder."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    folder = root / f"{kind}-{hidden}"
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    tok = tiny_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True)) if kind == "llama" else \
        Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_tower_folder(root: Path, kind: str = "clip") -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel

    folder = root / kind
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(1)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)) if kind == "clip" else \
        SiglipVisionModel(SiglipVisionConfig(**TINY_VIT))
    model.save_pretrained(folder)
    return folder


def tiny_config(root: Path, lm: str = "llama", tower: str = "clip", **overrides) -> FaceLLMConfig:
    return FaceLLMConfig(vision={"name": str(tiny_tower_folder(root, tower))},
                         lm_name_or_path=str(tiny_lm_folder(root, lm, overrides.pop("hidden", 32))),
                         **{**TINY_REGION, **overrides})


def tiny_model(root: Path, lm: str = "llama", tower: str = "clip", seed: int = 0,
               **overrides) -> FaceLLMForConditionalGeneration:
    torch.manual_seed(seed)
    return FaceLLMForConditionalGeneration(tiny_config(root, lm, tower, **overrides))


@lru_cache(maxsize=None)
def analysis(name: str, steps: tuple[str, ...] = ("mesh",)):
    """The face tools' result on a bundled photo, computed once per test session."""
    return analyze(photo(name), steps=steps)


def ask(image_name: str, question: str, answer: str | None = None) -> list[dict]:
    msgs = [{"role": "user", "content": [{"type": "image", "image": str(photo(image_name))},
                                         {"type": "text", "text": question}]}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


def teach(model, batches: list, steps: int, hidden: int, out: Path) -> Path:
    """Fit ``model``'s trainable parts to ``batches`` (processor outputs) with Adam; save it to ``out``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster, and much faster on a busy machine
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2 if hidden <= 32 else 3e-3)  # the wider LM needs a gentler step
    model.train()
    for _ in range(steps):
        loss = sum(model(**b).loss for b in batches)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    torch.set_num_threads(threads)
    return model.save_pretrained(out)
