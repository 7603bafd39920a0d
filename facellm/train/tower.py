"""Stage kind "tower": teach the vision tower faces before the LM ever sees it.

The ImageNet tower's mid-level features (EfficientNet-Lite0 stage5) know textures, not faces: a language model
reading them cannot tell a 20-year-old from a 60-year-old however long it trains. This stage fine-tunes the
tower on the training split's *human* labels (perceived age, perceived gender, FER expression class) through a
small head that pools each labelled face's cells of the feature map -- the same cells the region encoder later
reads. The head is thrown away; the tuned tower is saved into the stage's model folder (``vision_tuned`` in the
config holds its weights' hash, so cached features of the ImageNet tower are never reused) and the later
stages train the region encoder, projector and LM on it with the tower frozen (and its features cached).

Only records' ``human`` labels are read (never a tool's estimate), only from the ``train`` split; the
``validation`` split's faces are the stage's held-out check (age MAE, gender and expression accuracy in
``metrics.csv``). Like the LM stages it checkpoints every ``save_every`` steps and on Ctrl-C / SIGTERM, and the
same command continues it.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from facellm.attribute_tokens import AGE_SCALE, EXPRESSIONS, AttributeHead  # noqa: F401 (re-exported)

LABEL_KEYS = ("age", "gender", "expression")
TOWER_FIELDS = ["step", "epoch", "loss", "lr", "elapsed_s", "eval_age_mae", "eval_gender_acc", "eval_expression_acc"]


@dataclass
class FaceTarget:
    """One labelled face: where it is and what people said about it (None: not labelled)."""

    image: str
    sha256: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in the image's pixels
    split: str
    age: float | None = None
    gender: int | None = None  # 0 male, 1 female (perceived, as annotated)
    expression: int | None = None  # index into EXPRESSIONS


def _label_value(name: str, value):
    if name == "age":
        if isinstance(value, (list, tuple)) and len(value) == 2:
            return (float(value[0]) + float(value[1])) / 2
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if name == "gender":
        return {"male": 0, "man": 0, "female": 1, "woman": 1}.get(str(value).lower())
    if name == "expression":
        v = str(value).lower()
        return EXPRESSIONS.index(v) if v in EXPRESSIONS else None
    return None


def face_targets(folders: list[str], snapshot: dict[str, int] | None) -> list[FaceTarget]:
    """Every (image, face) with a human age, gender or expression label in the train / validation records,
    once each (an image's labels repeat across styles)."""
    from .data import _shards

    seen: set[tuple[str, int]] = set()
    out: list[FaceTarget] = []
    for folder in folders:
        folder = Path(folder).expanduser()
        for shard in _shards(folder):
            if snapshot is not None and str(shard) not in snapshot:
                continue
            limit = snapshot[str(shard)] if snapshot is not None else None
            with shard.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if limit is not None and n > limit:
                        break
                    # cheap filters before parsing: a test record is never read, and labels repeat per style
                    if '"split":"test"' in line or '"kind":"human"' not in line:
                        continue
                    rec = json.loads(line)
                    if rec.get("split") not in ("train", "validation"):
                        continue
                    if len((rec.get("meta") or {}).get("images") or []) > 1:
                        continue  # pair records: their labels are the first image's, already read elsewhere
                    faces = {f["id"]: f for f in (rec.get("faces") or {}).get("faces") or []}
                    by_face: dict[int, dict] = {}
                    for lb in rec.get("labels") or []:
                        if lb.get("kind") != "human" or lb.get("face_id") not in faces:
                            continue
                        v = _label_value(lb["name"], lb["value"])
                        if v is not None:
                            by_face.setdefault(lb["face_id"], {})[lb["name"]] = v
                    sha = rec["image"]["sha256"]
                    for fid, labels in by_face.items():
                        if (sha, fid) in seen:
                            continue
                        seen.add((sha, fid))
                        b = faces[fid]["box"]
                        img = Path(rec["image"]["path"])
                        out.append(FaceTarget(image=str(img if img.is_absolute() else folder / img), sha256=sha,
                                              box=(b["x1"], b["y1"], b["x2"], b["y2"]), split=rec["split"],
                                              **labels))
    return out


def face_masks(vis, boxes: list[tuple[float, float, float, float]], grid: tuple[int, int], stride: int
               ) -> torch.Tensor:
    """(B, H, W) 1 on the cells whose centre lies in the face's box (the nearest cell for a tiny face)."""
    gh, gw = grid
    ys = torch.arange(gh, dtype=torch.float64) + 0.5
    xs = torch.arange(gw, dtype=torch.float64) + 0.5
    masks = torch.zeros(len(boxes), gh, gw)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        (gx1, gy1), (gx2, gy2) = vis.to_grid(torch.tensor([[x1, y1], [x2, y2]], dtype=torch.float64), i,
                                            stride).tolist()
        m = ((ys[:, None] >= gy1) & (ys[:, None] <= gy2) & (xs[None, :] >= gx1) & (xs[None, :] <= gx2))
        if not m.any():
            cy = min(max(int((gy1 + gy2) / 2), 0), gh - 1)
            cx = min(max(int((gx1 + gx2) / 2), 0), gw - 1)
            m[cy, cx] = True
        masks[i] = m.float()
    return masks


def mirror_half(pixels: torch.Tensor, masks: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded half of the batch mirrored left-right, image and face mask together (age, gender and
    expression do not change in a mirror; ~2.6 passes over ~10k faces overfit without it). Seeded by the
    step, so a resumed run mirrors the same faces."""
    flip = torch.rand(pixels.shape[0], generator=torch.Generator().manual_seed(seed)) < 0.5
    if not flip.any():
        return pixels, masks
    pixels, masks = pixels.clone(), masks.clone()
    pixels[flip] = pixels[flip].flip(-1)
    masks[flip] = masks[flip].flip(-1)
    return pixels, masks


def attribute_loss(out, targets: list[FaceTarget]) -> torch.Tensor:
    age, gender, expr = (t.float() for t in out)
    loss = age.new_zeros(())
    idx = [i for i, t in enumerate(targets) if t.age is not None]
    if idx:
        want = torch.tensor([targets[i].age / AGE_SCALE for i in idx])
        loss = loss + F.smooth_l1_loss(age[idx], want)
    idx = [i for i, t in enumerate(targets) if t.gender is not None]
    if idx:
        loss = loss + F.cross_entropy(gender[idx], torch.tensor([targets[i].gender for i in idx]))
    idx = [i for i, t in enumerate(targets) if t.expression is not None]
    if idx:
        loss = loss + F.cross_entropy(expr[idx], torch.tensor([targets[i].expression for i in idx]))
    return loss


def tower_sha(tower: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(tower.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def face_batch(tower, targets: list[FaceTarget]) -> tuple[torch.Tensor, torch.Tensor]:
    """The targets' images as the tower's input, and each face's cell mask on its feature grid."""
    from PIL import Image

    from facellm.vision.base import preprocess_images

    images = []
    for t in targets:
        with Image.open(t.image) as im:
            images.append(im.convert("RGB"))
    vis = preprocess_images(images, tower.preprocess_config)
    grid = tower.grid_size(tuple(vis.pixel_values.shape[-2:]))
    return vis.pixel_values, face_masks(vis, [t.box for t in targets], grid, tower.stride)


@torch.no_grad()
def evaluate_attributes(tower, head, held: list[FaceTarget], autocast=None, batch: int = 64) -> dict[str, float]:
    """Held-out age MAE (years), gender and expression accuracy of tower + head on the faces that have each."""
    import contextlib

    tower.eval()
    head.eval()
    err, g_ok, g_n, e_ok, e_n = [], 0, 0, 0, 0
    for i in range(0, len(held), batch):
        part = held[i:i + batch]
        pixels, masks = face_batch(tower, part)
        with autocast() if autocast else contextlib.nullcontext():
            age, gender, expr = (t.float() for t in head(tower(pixels).feature_map, masks))
        for j, t in enumerate(part):
            if t.age is not None:
                err.append(abs(age[j].item() * AGE_SCALE - t.age))
            if t.gender is not None:
                g_n += 1
                g_ok += int(gender[j].argmax().item() == t.gender)
            if t.expression is not None:
                e_n += 1
                e_ok += int(expr[j].argmax().item() == t.expression)
    out = {}
    if err:
        out["eval_age_mae"] = round(float(np.mean(err)), 3)
    if g_n:
        out["eval_gender_acc"] = round(g_ok / g_n, 4)
    if e_n:
        out["eval_expression_acc"] = round(e_ok / e_n, 4)
    return out


class TowerStage:
    """Runs one ``kind = "tower"`` stage for a ``Trainer`` (which owns the run folder, data and Ctrl-C)."""

    def __init__(self, trainer, stage, folder: Path, previous: Path | None) -> None:
        self.trainer, self.stage, self.folder, self.previous = trainer, stage, folder, previous

    def evaluate(self, model, head, held: list[FaceTarget]) -> dict[str, float]:
        return evaluate_attributes(model.vision_tower, head, held, self.trainer.accelerator.autocast)

    def run(self) -> None:
        from transformers import get_scheduler

        from .trainer import TrainInterrupted, TrainError, _MetricsCSV, build_model

        tr, stage, folder = self.trainer, self.stage, self.folder
        model = build_model(tr.recipe, stage, self.previous)
        tower = model.vision_tower
        snapshot = json.loads((tr.out / "data.json").read_text()) if (tr.out / "data.json").is_file() else None
        if snapshot is None:
            tr._examples()  # writes the run's data snapshot
            snapshot = json.loads((tr.out / "data.json").read_text())
        t0 = time.perf_counter()
        targets = face_targets(tr.data, snapshot)
        train = [t for t in targets if t.split == "train"]
        held = [t for t in targets if t.split == "validation"][: max(stage.eval_items, 1)]
        if not train:
            raise TrainError(f"stage {stage.name!r}: no face in the train records has a human age, gender or "
                             "expression label to tune the tower on")
        counts = {k: sum(getattr(t, k) is not None for t in train) for k in LABEL_KEYS}
        tr._log(f"stage {stage.name}: {len(train)} labelled train faces ({counts}), {len(held)} held-out, "
                f"read in {time.perf_counter() - t0:.0f} s")
        head = AttributeHead(tower.hidden_size)
        params = [{"params": [p for p in tower.parameters() if p.requires_grad], "lr": stage.lr},
                  {"params": head.parameters(), "lr": stage.lr_parts.get("head", stage.lr * 2)}]
        optimizer = torch.optim.AdamW(params, weight_decay=stage.weight_decay)
        total = stage.max_steps or max(1, int(stage.epochs * len(train) / stage.batch_size))
        sched_name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[stage.schedule]
        scheduler = get_scheduler(sched_name, optimizer, num_warmup_steps=int(stage.warmup_ratio * total),
                                  num_training_steps=total)
        ckpt_dir = folder / "checkpoints"
        step, elapsed = 0, 0.0
        found = sorted(ckpt_dir.glob("step-*/state.json")) if ckpt_dir.is_dir() else []
        if found:
            last = found[-1].parent
            tower.load_state_dict(load_file(str(last / "tower.safetensors")))
            head.load_state_dict(load_file(str(last / "head.safetensors")))
            optimizer.load_state_dict(torch.load(last / "optimizer.pt", weights_only=False))
            scheduler.load_state_dict(torch.load(last / "scheduler.pt", weights_only=False))
            st = json.loads(found[-1].read_text())
            step, elapsed = st["step"], st["elapsed_s"]
            tr._log(f"stage {stage.name}: resumed from {last.name} (step {step})")
        elif (folder / "metrics.csv").exists():
            (folder / "metrics.csv").unlink()
        folder.mkdir(parents=True, exist_ok=True)
        metrics = _MetricsCSV(folder / "metrics.csv", step, TOWER_FIELDS)
        tr._log(f"stage {stage.name}: {total} steps of {stage.batch_size} faces; training the vision tower "
                f"up to its feature ({sum(v.numel() for v in tower.feature_state_dict().values()) / 1e6:.2f}M) + a "
                f"{sum(p.numel() for p in head.parameters()) / 1e6:.2f}M attribute head; precision "
                f"{tr.precision.label}")

        def order(epoch: int) -> list[int]:
            idx = list(range(len(train)))
            random.Random(tr.recipe.seed * 1000 + epoch).shuffle(idx)
            return idx

        t_start = time.perf_counter() - elapsed
        t_saved, loss_avg = time.perf_counter(), None
        while step < total:
            lo = step * stage.batch_size
            epoch, pos = divmod(lo, len(train))
            idx = order(epoch)
            batch = [train[idx[(pos + k) % len(train)]] for k in range(stage.batch_size)]
            tower.train()
            head.train()
            pixels, masks = face_batch(tower, batch)
            pixels, masks = mirror_half(pixels, masks, tr.recipe.seed * 1_000_003 + step)
            with tr.accelerator.autocast():
                out = head(tower(pixels).feature_map, masks)
            loss = attribute_loss(out, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if stage.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for g in params for p in g["params"]], stage.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            loss_avg = loss.item() if loss_avg is None else 0.9 * loss_avg + 0.1 * loss.item()
            row = {"step": step, "epoch": round(step * stage.batch_size / len(train), 4), "loss": round(loss.item(), 5),
                   "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.perf_counter() - t_start, 1)}
            if stage.eval_every and step % stage.eval_every == 0 or step == total:
                row.update(self.evaluate(model, head, held))
            metrics.write(row)
            if stage.log_every and step % stage.log_every == 0 or step == total or "eval_age_mae" in row:
                rate = (time.perf_counter() - t_start) / step
                tr._log(f"[{stage.name}] step {step}/{total} loss {loss_avg:.3f} | {stage.batch_size / rate:.1f} "
                        f"faces/s | stage ETA {(total - step) * rate / 60:.1f} min"
                        + "".join(f" | {k[5:]} {v}" for k, v in row.items() if k.startswith("eval_")))
            due = time.perf_counter() - t_saved > stage.save_minutes * 60
            if step % stage.save_every == 0 or step == total or due or tr._stop:
                self._save(ckpt_dir, step, time.perf_counter() - t_start, tower, head, optimizer, scheduler)
                t_saved = time.perf_counter()
            if tr._stop and step < total:
                tr._log(f"stopped at step {step}/{total} of stage {stage.name} (checkpoint written): run the same "
                        "command again to continue")
                raise TrainInterrupted()
        final = self.evaluate(model, head, [t for t in targets if t.split == "validation"])
        tmp = folder / ".final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.config.freeze_vision = True  # later stages read it frozen (and cache its features)
        model.config.vision_tuned = tower_sha(tower)
        model.eval().save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp / "attribute_head.safetensors"))
        (tmp / "training.json").write_text(json.dumps({
            "recipe": tr.recipe.name, "stage": stage.name, "kind": "tower", "steps": step,
            "faces_seen": step * stage.batch_size, "train_faces": len(train), "label_counts": counts,
            "wall_time_s": round(time.perf_counter() - t_start, 1), "precision": tr.precision.label,
            "held_out": final}, indent=1))
        tmp.rename(folder / "final")
        tr._log(f"stage {stage.name}: {step} steps in {(time.perf_counter() - t_start) / 60:.1f} min; held-out "
                f"{final} -> {folder / 'final'}")

    @staticmethod
    def _save(ckpt_dir: Path, step: int, elapsed: float, tower, head, optimizer, scheduler) -> None:
        tmp = ckpt_dir / f".tmp-step-{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous() for k, v in tower.state_dict().items()}, str(tmp / "tower.safetensors"))
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(tmp / "head.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "elapsed_s": elapsed}))
        dest = ckpt_dir / f"step-{step:06d}"
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        for old in sorted(ckpt_dir.glob("step-*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
