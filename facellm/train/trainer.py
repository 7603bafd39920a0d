"""The training loop: one recipe, its stages in order, on ``accelerate`` (one CPU to many GPUs, no code change).

    facellm train --recipe default --data DATA_DIR --out runs/default     # the same command again continues it
    accelerate launch -m facellm.cli train --recipe gpu-large --data ... --out ...   # multi-GPU / FSDP / DeepSpeed

Run folder::

    runs/default/
      recipe.json                 the recipe as run (a resumed run must match it)
      1-align/                    one folder per stage
        checkpoints/step-000025/  trainable weights, optimizer, scheduler, RNG states, data position
        metrics.csv  tb/          loss, lr, tokens/s, held-out loss and answer F1
        final/                    the stage's model folder (save_pretrained)
      2-instruct/ ...
      model -> 2-instruct/final   the finished model folder

Resume (the same command again; ``--resume`` says it explicitly): finished stages are skipped; a run folder
started with another recipe or data is refused. The running stage restarts from its newest complete
checkpoint with the same optimizer, schedule, RNG and data position, so it sees the same examples in the
same order as a run that was never stopped. Checkpoints are written to a temporary folder and renamed, so a
SIGKILL mid-write leaves the previous checkpoint intact. Checkpoints are written every ``save_every`` steps and
at least every ``save_minutes``; Ctrl-C or SIGTERM finishes the step in progress, writes a checkpoint and stops
(exit 130); a second one stops at once (the previous checkpoint stays).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .data import (AnalysisCache, Example, LengthGroupedOrder, MixtureOrder, pack_examples, read_examples,
                   select_splits, snapshot_shards)
from .precision import choose_precision
from .recipe import Recipe, StageRecipe

CKPT_RE = re.compile(r"^step-(\d+)$")


class TrainError(ValueError):
    """The run cannot start or continue as asked (a clear message, nothing overwritten)."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C: the run stopped after writing a checkpoint; the same command continues it."""


# ---------------------------------------------------------------- model per stage
def tower_head(recipe: Recipe, run: Path) -> dict[str, torch.Tensor]:
    """The attribute head the run's tower stage saved (its final folder's attribute_head.safetensors)."""
    for i, st in enumerate(recipe.stages, 1):
        if st.kind == "tower":
            path = run / f"{i}-{st.name}" / "final" / "attribute_head.safetensors"
            if not path.is_file():
                raise TrainError(f"{path} is missing: the tower stage {st.name!r} has not finished")
            return load_file(str(path))
    raise TrainError("attribute tokens read a tower stage's attribute head, and this recipe has no tower stage")


def build_model(recipe: Recipe, stage: StageRecipe, previous: Path | None, run: Path | None = None):
    from facellm.configuration import FaceLLMConfig
    from facellm.lora import add_lora, apply_trainable, is_peft, lora_spec
    from facellm.modeling import FaceLLMForConditionalGeneration

    torch.manual_seed(recipe.seed)
    overrides = {"load_in_4bit": stage.load_in_4bit}
    if previous is None:
        model = FaceLLMForConditionalGeneration(FaceLLMConfig(**{**recipe.model, **overrides}))
    else:
        model = FaceLLMForConditionalGeneration.from_pretrained(previous, trainable=True, **overrides)
    cfg = model.config
    if recipe.model.get("projector_norm") and model.projector.gain is None:  # a run begun before the flag
        model.enable_projector_norm()
    if stage.attribute_tokens and model.attribute_tokens is None:
        if run is None:
            raise TrainError(f"stage {stage.name!r} adds attribute tokens: build_model needs the run folder")
        model.enable_attribute_tokens(tower_head(recipe, run))
    cfg.freeze_lm = "lm" not in stage.train
    cfg.freeze_vision = "vision_tower" not in stage.train
    if "lora" in stage.train and not is_peft(model.lm):
        cfg.lora = lora_spec(stage.lora)
        model.lm = add_lora(model.lm, cfg.lora)
    apply_trainable(model, lora_trainable="lora" in stage.train)
    for part in ("projector", "region_encoder"):  # apply_trainable trains them; a stage may not
        module = getattr(model, part)
        if module is not None and part not in stage.train:
            for p in module.parameters():
                p.requires_grad_(False)
    return model


def part_of(name: str) -> str:
    if "lora_" in name:
        return "lora"
    return name.split(".")[0]


# ---------------------------------------------------------------- checkpoints
@dataclass
class TrainState:
    step: int = 0
    position: int = 0  # examples consumed (global)
    tokens: int = 0
    elapsed_s: float = 0.0
    records: int = 0  # data_gen records trained on (a packed example counts each of its records)


def _checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CKPT_RE.match(p.name))
           and (p / "state.json").is_file()]
    return sorted(out)


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: TrainState, keep: int) -> Path:
    dest = folder / f"step-{state.step:06d}"
    tmp = folder / f".tmp-step-{state.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    save_file(weights, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state.__dict__))  # last: its presence marks a complete one
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    for _, old in _checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def load_checkpoint(path: Path, model, optimizer, scheduler) -> TrainState:
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise TrainError(f"checkpoint {path} has weights this model lacks ({missing[:3]}...): wrong recipe?")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t.to(params[n].dtype))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = torch.load(path / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return TrainState(**json.loads((path / "state.json").read_text()))


# ---------------------------------------------------------------- evaluation during training
def _norm_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style word-overlap F1 between an answer and the reference."""
    p, r = _norm_words(pred), _norm_words(ref)
    if not p or not r:
        return float(p == r)
    common = sum(min(p.count(w), r.count(w)) for w in set(p))
    if not common:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


# ---------------------------------------------------------------- the trainer
class Trainer:
    def __init__(self, recipe: Recipe, out: str | Path, *, data: list[str] | None = None, resume: bool = False,
                 progress: bool = True, max_steps: int | None = None) -> None:
        self.recipe = recipe
        self.out = Path(out).expanduser()
        self.data = [str(Path(d).expanduser()) for d in (data or recipe.data)]
        if not self.data:
            raise TrainError("no training data: give --data DIR (a `facellm data generate` output folder)")
        self.resume = resume
        self.progress = progress
        self.max_steps = max_steps
        self.features = None
        self._plans: dict = {}
        self._check_run_folder()

    def _check_run_folder(self) -> None:
        saved = self.out / "recipe.json"
        want = {"recipe": self.recipe.to_dict(), "data": self.data, "max_steps": self.max_steps}
        if saved.is_file():
            if _run_identity(json.loads(saved.read_text())) != _run_identity(want):
                raise TrainError(f"{self.out} already holds a run started with a different recipe, data or "
                                 "max_steps: continue it with the same ones (--resume), or choose a new --out")
            self.resume = True  # the same command again continues the run
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            saved.write_text(json.dumps(want, indent=1))

    def run(self) -> Path:
        from accelerate import Accelerator

        self.precision = choose_precision(self.recipe.mixed_precision)
        self.accelerator = Accelerator(mixed_precision=self.precision.mode)
        self._log(f"precision: {self.precision.label} ({self.precision.reason})")
        self._stop = False
        with _StopOnCtrlC(self):
            return self._run_stages()

    def _run_stages(self) -> Path:
        previous: Path | None = None
        for i, stage in enumerate(self.recipe.stages, 1):
            folder = self.out / f"{i}-{stage.name}"
            final = folder / "final"
            if (final / "config.json").is_file():
                self._log(f"stage {i} ({stage.name}): done already, {final}")
            elif stage.kind == "tower":
                from .tower import TowerStage

                TowerStage(self, stage, folder, previous).run()
            else:
                self.run_stage(stage, folder, previous)
            previous = final
        link = self.out / "model"
        if self.accelerator.is_main_process:
            if link.is_symlink() or link.exists():
                link.unlink() if link.is_symlink() else shutil.rmtree(link)
            link.symlink_to(previous.relative_to(self.out))
        self._log(f"model folder: {link} -> {previous}")
        return link

    def _plan(self, stage: StageRecipe, image_tokens: int):
        """(train records, held-out records, training examples, order, steps, estimated tokens) of a stage."""
        key = (stage.name, image_tokens)
        if key not in self._plans:
            examples = self._examples()
            records = select_splits(examples, ("train",))  # never "test"
            held = select_splits(examples, ("validation",))  # never packed: its loss stays per record
            if stage.human_attributes_only:
                records = [e for e in records if not e.tool_attribute]
                held = [e for e in held if not e.tool_attribute]
            # the pack limit stays under max_length: the length is an estimate, an example over it is skipped
            train = pack_examples(records, stage.pack, int(0.75 * stage.max_length), image_tokens,
                                  tuple(stage.pack_styles))
            order = MixtureOrder(train, stage.mixture, self.recipe.seed)
            world, micro = self.accelerator.num_processes, stage.batch_size
            if micro * world > 1 and stage.group_by_length:
                order = LengthGroupedOrder(order, [e.approx_tokens(image_tokens) for e in train], micro * world)
            per_step = micro * stage.grad_accum * world
            total = self.max_steps or stage.max_steps or max(1, math.ceil(stage.epochs * order.epoch_len / per_step))
            est = sum(train[order[j]].approx_tokens(image_tokens) for j in range(total * per_step))
            self._plans[key] = (records, held, train, order, total, est)
        return self._plans[key]

    def _examples(self) -> list[Example]:
        """The run's records, read once: the shards' lines as they were when the run started (data.json), so a
        resumed run sees the same records however far data_gen has got since."""
        if getattr(self, "_all", None) is None:
            snap_file = self.out / "data.json"
            if snap_file.is_file():
                snapshot = json.loads(snap_file.read_text())
            else:
                snapshot = snapshot_shards(self.data)
                if self.accelerator.is_main_process:
                    tmp = snap_file.with_suffix(".tmp")
                    tmp.write_text(json.dumps(snapshot, indent=0))
                    tmp.replace(snap_file)
            unfinished = [d for d in self.data if not (Path(d) / "DONE").exists()]
            if unfinished:
                self._log(f"note: data_gen has not finished {unfinished}; this run uses the "
                          f"{sum(snapshot.values())} records written when it started (data.json)")
            t0 = time.perf_counter()
            self._all = read_examples(self.data, snapshot)
            self._log(f"read {len(self._all)} train/validation records in {time.perf_counter() - t0:.0f} s")
        return [copy.copy(e) for e in self._all]

    def _log(self, msg: str) -> None:
        if self.accelerator.is_main_process:
            print(msg, flush=True)

    # ------------------------------------------------------------ one stage
    def run_stage(self, stage: StageRecipe, folder: Path, previous: Path | None) -> None:
        from transformers import get_scheduler

        from facellm.lora import trainable_summary

        acc = self.accelerator
        model = build_model(self.recipe, stage, previous, self.out)
        image_tokens = math.prod(model.processor.settings.token_grid)
        records, held, train, order, total, _ = self._plan(stage, image_tokens)
        world, micro = acc.num_processes, stage.batch_size
        per_step = micro * stage.grad_accum * world
        # for the run's ETA: the later stages' estimated tokens, timed at this stage's seconds per estimated token
        later = self.recipe.stages[self.recipe.stages.index(stage) + 1:]
        later_tokens = sum(self._plan(st, image_tokens)[5] for st in later)
        cache = AnalysisCache(model.processor, self.out / "analysis_cache",
                              [Path(d) for d in self.data], [Path(d) for d in self.recipe.analysis_cache])
        self.features = None
        if self.recipe.feature_cache and model.config.freeze_vision:
            from .features import FeatureCache

            self.features = FeatureCache(model, self.recipe.feature_cache_dir and Path(self.recipe.feature_cache_dir))

        groups: dict[str, list] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                groups.setdefault(part_of(name), []).append(p)
        if not groups:
            raise TrainError(f"stage {stage.name!r} trains nothing: check its `train` list")
        optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": stage.lr_parts.get(part, stage.lr), "name": part} for part, ps in groups.items()],
            weight_decay=stage.weight_decay)
        sched_name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[stage.schedule]
        scheduler = get_scheduler(sched_name, optimizer, num_warmup_steps=int(stage.warmup_ratio * total),
                                  num_training_steps=total)
        model, optimizer = acc.prepare(model, optimizer)
        core = acc.unwrap_model(model)

        ckpt_dir = folder / "checkpoints"
        state = TrainState()
        found = _checkpoints(ckpt_dir)
        if found:
            if not self.resume:
                raise TrainError(f"{folder} has checkpoints: pass --resume to continue")
            state = load_checkpoint(found[-1][1], core, optimizer, scheduler)
            self._log(f"stage {stage.name}: resumed from {found[-1][1].name} (step {state.step}, "
                      f"example {state.position})")
        elif folder.exists() and (folder / "metrics.csv").exists():
            (folder / "metrics.csv").unlink()  # a stage that never reached its first checkpoint starts over
        folder.mkdir(parents=True, exist_ok=True)
        parts = ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in trainable_summary(core).items())
        packed = f" packed into {len(train)} conversations" if len(train) != len(records) else ""
        self._log(f"stage {stage.name}: {len(records)} train records{packed} / {len(held)} held-out records, "
                  f"epoch of {order.epoch_len} examples, {total} steps of {per_step}; training {parts}; device "
                  f"{acc.device}, precision {self.precision.label}; {image_tokens} patch tokens per image; "
                  f"vision features {'cached' if self.features else 'computed every step'}")

        writer = _tensorboard(folder / "tb") if acc.is_main_process else None
        metrics = _MetricsCSV(folder / "metrics.csv", state.step) if acc.is_main_process else None
        bar = None
        if self.progress and acc.is_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=state.step, desc=stage.name, unit="step", dynamic_ncols=True)
        model.train()
        t_start = time.perf_counter() - state.elapsed_s
        t_run = t_saved = time.perf_counter()
        est_done = 0  # estimated tokens of the examples run since this process started the stage
        while state.step < total:
            t0 = time.perf_counter()
            loss_sum, tokens = 0.0, 0
            for k in range(stage.grad_accum):
                lo = state.position + acc.process_index * micro
                batch_ex = [train[order[j]] for j in range(lo, lo + micro)]
                est_done += sum(e.approx_tokens(image_tokens) for e in batch_ex) * world
                state.position += micro * world
                state.records += sum(e.records for e in batch_ex) * world
                batch = self._batch(core, batch_ex, cache, stage)
                if batch is None:
                    continue
                tokens += int(batch["attention_mask"].sum()) * world
                ctx = acc.no_sync(model) if k < stage.grad_accum - 1 else _nullcontext()
                with ctx, acc.autocast():
                    loss = model(**batch, loss_only=True).loss / stage.grad_accum
                acc.backward(loss)
                loss_sum += loss.item()
            if stage.max_grad_norm:
                acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], stage.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens += tokens
            dt = time.perf_counter() - t0
            state.elapsed_s = time.perf_counter() - t_start
            row = {"step": state.step, "epoch": round(state.position / order.epoch_len, 4),
                   "loss": round(loss_sum, 5), "lr": scheduler.get_last_lr()[0],
                   "tokens_per_s": round(tokens / max(dt, 1e-9), 1), "elapsed_s": round(state.elapsed_s, 1)}
            if stage.eval_every and state.step % stage.eval_every == 0 or state.step == total:
                row.update(self.evaluate(core, held, cache, stage))
                model.train()
            if metrics is not None:
                metrics.write(row)
            if writer is not None:
                for key, v in row.items():
                    if key not in ("step",) and isinstance(v, (int, float)):
                        writer.add_scalar(f"{stage.name}/{key}", v, state.step)
            rec_h = state.records / max(state.elapsed_s, 1e-9) * 3600
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=f"{row['tokens_per_s']:.0f}", rec_h=f"{rec_h:.0f}",
                                **({"eval_loss": f"{row['eval_loss']:.3f}"} if "eval_loss" in row else {}))
            if stage.log_every and (state.step % stage.log_every == 0 or state.step == total):
                done_here = state.step - (found[-1][0] if found else 0)
                per_step_s = (time.perf_counter() - t_run) / max(done_here, 1)
                eta = (total - state.step) * per_step_s
                run_eta = eta + later_tokens * (time.perf_counter() - t_run) / max(est_done, 1)
                self._log(f"[{stage.name}] step {state.step}/{total} loss {loss_sum:.3f}"
                          + (f" eval_loss {row['eval_loss']:.3f}" if "eval_loss" in row else "")
                          + f" | {state.records} records, {rec_h:.0f} records/h, {row['tokens_per_s']:.0f} tok/s"
                          f" | stage ETA {eta / 60:.1f} min, run ETA {run_eta / 60:.1f} min")
            due = time.perf_counter() - t_saved > stage.save_minutes * 60
            if state.step % stage.save_every == 0 or state.step == total or due or self._stop:
                acc.wait_for_everyone()
                if acc.is_main_process:
                    save_checkpoint(ckpt_dir, core, optimizer, scheduler, state, stage.keep_checkpoints)
                t_saved = time.perf_counter()
            if self._stop and state.step < total:
                if bar is not None:
                    bar.close()
                self._log(f"stopped at step {state.step}/{total} of stage {stage.name} (checkpoint written): "
                          "run the same command again to continue")
                raise TrainInterrupted()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
        acc.wait_for_everyone()
        if acc.is_main_process:
            tmp = folder / ".final.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            core.eval()
            core.save_pretrained(tmp)
            (tmp / "training.json").write_text(json.dumps({
                "recipe": self.recipe.name, "stage": stage.name, "steps": state.step, "examples": state.position,
                "tokens": state.tokens, "wall_time_s": round(state.elapsed_s, 1), "device": str(acc.device),
                "num_processes": world, "precision": self.precision.label, "data": self.data,
                "train_records": len(records), "train_conversations": len(train), "records_seen": state.records,
                "held_out_records": len(held)}, indent=1))
            tmp.rename(folder / "final")
        feats = f"; tower features: {self.features.hits} from the cache, {self.features.misses} computed" \
            if self.features else ""
        self._log(f"stage {stage.name}: {state.step} steps in {state.elapsed_s / 60:.1f} min -> {folder / 'final'}"
                  f" ({state.records} records; tool analyses: {len(cache.memory) - cache.computed} read, "
                  f"{cache.computed} computed{feats})")

    def _batch(self, model, examples: list[Example], cache: AnalysisCache, stage: StageRecipe):
        return make_batch(model, examples, cache, self.features, stage.max_length, self.accelerator.device,
                          self._log)

    @torch.no_grad()
    def evaluate(self, model, held: list[Example], cache: AnalysisCache, stage: StageRecipe) -> dict:
        """Held-out loss, and word-overlap F1 of greedy answers to short-answer questions."""
        if not held:
            return {}
        model.eval()
        items = random.Random(self.recipe.seed).sample(held, min(stage.eval_items, len(held)))
        losses = []
        for i in range(0, len(items), stage.batch_size):
            batch = self._batch(model, items[i:i + stage.batch_size], cache, stage)
            if batch is not None:
                with self.accelerator.autocast():
                    losses.append(model(**batch, loss_only=True).loss.item())
        f1s = []
        short = [e for e in items if e.answer and len(e.answer.split()) <= 25 and not e.tools][:6]
        for e in short:
            last = max(i for i, m in enumerate(e.messages) if m["role"] == "assistant")
            prompt = e.messages[:last]
            batch = model.processor(prompt, analyses=_analyses(e, cache), add_generation_prompt=True,
                                    return_labels=False)
            out = model.generate(**{k: v.to(self.accelerator.device) for k, v in batch.items()
                                    if isinstance(v, torch.Tensor)}, max_new_tokens=40)
            f1s.append(token_f1(model.processor.decode(out[0]), e.answer))
        row = {"eval_loss": round(float(np.mean(losses)), 5) if losses else float("nan")}
        if f1s:
            row["eval_answer_f1"] = round(float(np.mean(f1s)), 4)
        return row


def make_batch(model, examples: list[Example], cache: AnalysisCache, features, max_length: int, device,
               log=print) -> dict | None:
    """Processor output on the device; examples longer than max_length are dropped (never cut). With a
    ``FeatureCache`` the images' tower features replace their pixels."""
    from facellm.tools.registry import openai_tools

    def process(exs):
        return model.processor([e.messages for e in exs], analyses=[a for e in exs for a in _analyses(e, cache)],
                               tools=[openai_tools(e.tools) if e.tools else None for e in exs],
                               max_length=max_length, pixels=features is None)

    try:
        batch, used = process(examples), examples
    except ValueError as err:
        if "over the limit" not in str(err):
            raise
        keep = []
        for e in examples:
            try:
                process([e])
                keep.append(e)
            except ValueError:
                log(f"skipping {e.id}: longer than max_length {max_length}")
        if not keep:
            return None
        batch, used = process(keep), keep
    out = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "image_sizes"}
    if features is not None:
        items = [img for e in used for img in _images(e)]
        if items:
            out["vision_features"] = features.get(items).to(device)
    return out


def _image_paths(e: Example) -> list[str]:
    out = []
    for m in e.messages:
        if isinstance(m.get("content"), list):
            out += [str(p["image"]) for p in m["content"] if isinstance(p, dict) and p.get("type") == "image"]
    return out


_SHA_OF: dict[str, str] = {}


def _sha_of(path: str) -> str:
    import hashlib

    if path not in _SHA_OF:
        _SHA_OF[path] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _SHA_OF[path]


def _images(e: Example) -> list[tuple[str, str]]:
    """(sha256, path) of every image part of an example, in order (two-photo records have a second image)."""
    return [(e.sha256 if path == e.image else _sha_of(path), path) for path in _image_paths(e)]


def _analyses(e: Example, cache: AnalysisCache) -> list:
    """The tools' analysis for every image part of an example, each from the analysis cache."""
    return [cache.get(e) if path == e.image else cache.get_image(path, sha) for sha, path in _images(e)]


class _StopOnCtrlC:
    """First Ctrl-C (or SIGTERM, e.g. ``kill PID``): checkpoint and stop after the current step; a second one:
    stop at once (the previous checkpoint stays)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.previous: dict = {}

    def _handler(self, signum, frame) -> None:
        import signal

        if self.trainer._stop:  # the second one
            raise KeyboardInterrupt
        self.trainer._stop = True
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"\n{name}: finishing this step and writing a checkpoint ({name} again to stop now)", flush=True)

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                current = signal.getsignal(sig)
                if current is default:  # leave a caller's own handling (or an ignored signal) alone
                    self.previous[sig] = current
                    signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _MetricsCSV:
    FIELDS = ["step", "epoch", "loss", "lr", "tokens_per_s", "elapsed_s", "eval_loss", "eval_answer_f1"]

    def __init__(self, path: Path, resumed_at: int = 0, fields: list[str] | None = None) -> None:
        self.path = path
        if fields:
            self.FIELDS = list(fields)
        if path.is_file():  # resumed: drop rows past the checkpoint we restarted from (they are redone)
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resumed_at]
            tmp = path.with_suffix(".tmp")
            with tmp.open("w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=self.FIELDS)
                w.writeheader()
                w.writerows(rows)
            tmp.replace(path)

    def write(self, row: dict) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.FIELDS})
            fh.flush()
            os.fsync(fh.fileno())


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: the CSV still has everything
        return None
    return SummaryWriter(str(folder))


def _run_identity(run: dict) -> dict:
    """What makes two commands the same run: the recipe without where its default data and tool caches live
    (``run["data"]`` holds the folders actually read, and the run's data snapshot pins their records)."""
    recipe = {k: v for k, v in run["recipe"].items() if k not in ("data", "analysis_cache")}
    return {**run, "recipe": recipe}


def train(recipe: str | Path | Recipe, out: str | Path, **kwargs) -> Path:
    """Run a recipe (a built-in name, a TOML path or a Recipe) into ``out``; returns the model folder."""
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    return Trainer(recipe, out, **kwargs).run()


def export_checkpoint(run: str | Path, out: str | Path) -> Path:
    """A model folder from the unfinished stage's newest checkpoint (to evaluate or ship a run stopped before its
    last step); the run itself is untouched and the same train command still continues it."""
    from .recipe import Recipe

    run, out = Path(run).expanduser(), Path(out).expanduser()
    saved = json.loads((run / "recipe.json").read_text())
    raw = dict(saved["recipe"])
    stages = raw.pop("stages")
    recipe = Recipe.from_dict({**raw, "stage": stages})
    previous = None
    for i, stage in enumerate(recipe.stages, 1):
        folder = run / f"{i}-{stage.name}"
        if (folder / "final" / "config.json").is_file():
            previous = folder / "final"
            continue
        found = _checkpoints(folder / "checkpoints")
        if stage.kind != "lm" or not found:
            break
        step, ckpt = found[-1]
        model = build_model(recipe, stage, previous, run)
        weights = load_file(str(ckpt / "trainable.safetensors"))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in weights.items():
                params[n].copy_(t.to(params[n].dtype))
        state = json.loads((ckpt / "state.json").read_text())
        model.eval().save_pretrained(out)
        (out / "training.json").write_text(json.dumps({
            "recipe": recipe.name, "stage": stage.name, "steps": step, "planned_steps": stage.max_steps,
            "partial": True, "records_seen": state.get("records"), "tokens": state.get("tokens"),
            "wall_time_s": round(state.get("elapsed_s", 0.0), 1), "data": saved["data"]}, indent=1))
        return out
    if previous is None:
        raise TrainError(f"{run}: no finished stage and no checkpoint of an LM stage to export")
    shutil.copytree(previous, out, dirs_exist_ok=True)
    return out
