"""Training throughput on this CPU: records/hour and tokens/s of the training step, in one run, per setting.

    .venv/bin/python bench/train.py [--data DIR ...] [--records 48] [--rounds 3] [--out bench/results/train.md]

One model (the real recipe's parts: EfficientNet-Lite0 + region encoder + SmolLM2-135M with LoRA, the stage-2
trainables) and one seeded sample of training records; each setting trains on the same records:

    baseline     fp32, the tower run on every image every step, one record per example, 14x14 patch tokens,
                 batch 1 (how the shipped default model was trained)
    +bf16        bf16 autocast (only where the CPU has amx_bf16 / avx512_bf16)
    +cache       the frozen tower's features from the feature cache (warmed in round 0, not timed)
    +pack        records about the same image packed into one conversation (up to --pack)
    +pool2       7x7 pooled patch tokens beside the face tokens
    +batch4      batch 4 of length-grouped examples

A step is the real one: processor, forward, backward, AdamW step. Settings take turns round by round (round 0
is a warm-up), so the machine's noise falls on all of them alike; read the ratios. Tokens/s counts the tokens
the LM actually saw, so packing and pooling lower it while raising records/hour: records/hour is the measure.

Then (``--quality-records``) quality against speed: fresh models (same seed) train on the same QA records with
the baseline and with the faster settings, and each one's held-out loss on the same validation records (one
record per example, fp32) says whether packing / pooling / batching cost anything for what they save.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Setting:
    name: str
    bf16: bool = False
    cache: bool = False
    pack: int = 1
    pool: int = 1
    batch: int = 1
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process' CPU time: steadier than wall time on a crowded machine
    records: int = 0
    tokens: int = 0
    losses: list[float] = field(default_factory=list)


def _settings(bf16_ok: bool, pack: int) -> list[Setting]:
    rows = [Setting("baseline (fp32, tower every step, unpacked, 196 patches, batch 1)")]
    if bf16_ok:
        rows.append(Setting("+bf16", bf16=True))
    b = bf16_ok
    rows += [Setting("+cache" if b else "+cache (fp32)", bf16=b, cache=True),
             Setting("+pack", bf16=b, cache=True, pack=pack),
             Setting("+pool2", bf16=b, cache=True, pack=pack, pool=2),
             Setting("+batch4", bf16=b, cache=True, pack=pack, pool=2, batch=4)]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", action="append", default=None, help="data_gen folder(s) (default: the real recipe's)")
    ap.add_argument("--analysis-cache", action="append", default=None)
    ap.add_argument("--records", type=int, default=48, help="training records per setting and round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    ap.add_argument("--pack", type=int, default=4)
    ap.add_argument("--agent-share", type=float, default=0.1, help="share of agent traces in the sample")
    ap.add_argument("--shards", type=int, default=2, help="read only the first N record shards of each folder")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--quality-records", type=int, default=64,
                    help="then train fresh models on these many QA records per setting and compare held-out loss "
                         "(0: skip)")
    ap.add_argument("--quality-epochs", type=int, default=2)
    ap.add_argument("--held-out", type=int, default=24, help="validation records for the held-out loss")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train.md"))
    args = ap.parse_args()

    from facellm.configuration import FaceLLMConfig
    from facellm.lora import add_lora, apply_trainable, lora_spec
    from facellm.modeling import FaceLLMForConditionalGeneration
    from facellm.train.data import AnalysisCache, load_examples, pack_examples, snapshot_shards
    from facellm.train.features import FeatureCache
    from facellm.train.precision import choose_precision
    from facellm.train.recipe import Recipe
    from facellm.train.trainer import make_batch

    recipe = Recipe.load("real")
    data = args.data or recipe.data
    extra = args.analysis_cache if args.analysis_cache is not None else recipe.analysis_cache
    missing = [d for d in data if not (Path(d).expanduser() / "shards").is_dir()]
    if missing:
        sys.exit(f"no data_gen records in {missing}: pass --data DIR (e.g. ~/.cache/facellm/data/offline)")
    precision = choose_precision("auto", device="cpu")
    bf16_ok = precision.mode == "bf16"
    torch.manual_seed(args.seed)

    snap = snapshot_shards(data)
    firsts: dict[str, int] = {}
    for k in sorted(snap):
        if sum(1 for f in firsts if Path(f).parent == Path(k).parent) < args.shards:
            firsts[k] = snap[k]
    records = load_examples(data, ("train",), snapshot=firsts)
    rng = random.Random(args.seed)
    agent = [e for e in records if e.style == "agent"]
    qa = [e for e in records if e.style != "agent"]
    # whole images' worth of QA records (so packing finds what the real data has per image), plus agent traces
    by_image: dict[str, list] = {}
    for e in qa:
        by_image.setdefault(e.sha256, []).append(e)
    shas = sorted(by_image)
    rng.shuffle(shas)
    n_agent = round(args.records * args.agent_share)
    pool_qa = [e for s in shas for e in by_image[s]]
    need = (args.rounds + 1) * (args.records - n_agent)
    sample_qa = pool_qa[:need]
    sample_agent = rng.sample(agent, min(len(agent), (args.rounds + 1) * n_agent)) if n_agent else []

    stage = next(s for s in recipe.stages if "lora" in s.train)

    def fresh_model(seed: int):
        torch.manual_seed(seed)
        m = FaceLLMForConditionalGeneration(FaceLLMConfig(**recipe.model))
        m.lm = add_lora(m.lm, lora_spec(stage.lora))
        m.config.lora = lora_spec(stage.lora)
        apply_trainable(m, lora_trainable=True)
        m.train()
        return m, torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=args.lr)

    model, opt = fresh_model(args.seed)
    cache = AnalysisCache(model.processor, Path("/tmp/facellm-bench-train/analysis"),
                          [Path(d).expanduser() for d in data], [Path(d).expanduser() for d in extra])
    features = FeatureCache(model)

    def train_on(m, o, records_qa, records_agent, st: Setting) -> tuple[float, float, int, int]:
        """One pass of a setting over these records: (seconds, CPU seconds, records, LM tokens)."""
        m.config.patch_pool = st.pool
        m.processor.settings.patch_pool = st.pool
        image_tokens = math.prod(m.processor.settings.token_grid)
        exs = pack_examples(records_qa, st.pack, int(0.75 * stage.max_length), image_tokens) + records_agent
        if st.batch > 1:  # length grouping: sorted, then batches
            exs.sort(key=lambda e: e.approx_tokens(image_tokens))
        t0, c0 = time.perf_counter(), time.process_time()
        recs = toks = 0
        for i in range(0, len(exs), st.batch):
            b = exs[i:i + st.batch]
            batch = make_batch(m, b, cache, features if st.cache else None, stage.max_length, "cpu")
            if batch is None:
                continue
            ctx = torch.autocast("cpu", dtype=torch.bfloat16) if st.bf16 else contextlib.nullcontext()
            with ctx:
                loss = m(**batch).loss
            loss.backward()
            o.step()
            o.zero_grad(set_to_none=True)
            recs += sum(e.records for e in b)
            toks += int(batch["attention_mask"].sum())
            st.losses.append(loss.item())
        return time.perf_counter() - t0, time.process_time() - c0, recs, toks

    settings = _settings(bf16_ok, args.pack)
    print(f"{len(records)} train records read; sample: {len(sample_qa)} QA/caption + {len(sample_agent)} agent "
          f"traces over {args.rounds} timed rounds; precision available: {precision.label} ({precision.reason}); "
          f"torch threads {torch.get_num_threads()}", flush=True)

    def chunk(lst, r, n):
        return lst[r * n:(r + 1) * n]

    for r in range(args.rounds + 1):
        qa_r = chunk(sample_qa, r, args.records - n_agent)
        ag_r = chunk(sample_agent, r, n_agent)
        for st in settings:
            dt, cpu, recs, toks = train_on(model, opt, qa_r, ag_r, st)
            if r > 0:  # round 0 warms the caches and the kernels
                st.seconds += dt
                st.cpu_seconds += cpu
                st.records += recs
                st.tokens += toks
            print(f"round {r} {st.name:<20.20} {recs:4d} records {toks:6d} tokens {dt:7.1f} s {cpu:7.1f} CPU s"
                  f"{'  (warm-up)' if r == 0 else ''}", flush=True)

    base = settings[0]
    base_rate = base.records / max(base.seconds, 1e-9)
    lines = ["# Training throughput (bench/train.py)", "",
             f"Stage-2 trainables (LoRA r={stage.lora.get('r')}, projector, region encoder); {args.rounds} timed "
             f"rounds of {args.records} records each ({n_agent} agent traces per round), settings in turn; "
             f"precision here: {precision.label} ({precision.reason}); {torch.get_num_threads()} torch threads. "
             "The machine is shared: read the ratios.", "",
             "Wall-clock rates suffer whatever else runs; the CPU-time columns count this process' own CPU seconds "
             "(both threads), which a crowded machine disturbs less.", "",
             "| setting | records/hour | tokens/s | records/h vs baseline | vs previous row | records per CPU-hour "
             "| per CPU-hour vs baseline |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    prev = base_rate
    base_cpu = base.records / max(base.cpu_seconds, 1e-9)
    for st in settings:
        rate = st.records / max(st.seconds, 1e-9)
        crate = st.records / max(st.cpu_seconds, 1e-9)
        lines.append(f"| {st.name} | {rate * 3600:,.0f} | {st.tokens / max(st.seconds, 1e-9):,.0f} | "
                     f"{rate / base_rate:.2f}x | {rate / prev:.2f}x | {crate * 3600:,.0f} | {crate / base_cpu:.2f}x |")
        prev = rate

    # ------------------------------------------------------------ quality: held-out loss after the same records
    if args.quality_records:
        held = load_examples(data, ("validation",), snapshot=firsts)
        held = [e for e in held if e.style != "agent"]
        held = random.Random(args.seed).sample(held, min(args.held_out, len(held)))
        train_qa = pool_qa[need:need + args.quality_records]
        if len(train_qa) < args.quality_records:
            train_qa = pool_qa[:args.quality_records]
        contenders = [settings[0]] + [st for st in settings[1:] if st.name in ("+pack", "+pool2", "+batch4")]
        rows = []
        for st in contenders:
            st = Setting(st.name, st.bf16, st.cache, st.pack, st.pool, st.batch)
            m, o = fresh_model(args.seed)
            spent = spent_cpu = recs_done = 0
            for epoch in range(args.quality_epochs):
                dt, cpu, recs, _ = train_on(m, o, train_qa, [], st)
                spent += dt
                spent_cpu += cpu
                recs_done += recs
            m.eval()
            losses = []
            with torch.no_grad():  # per record, unpacked, fp32: the same yardstick for every setting
                for e in held:
                    batch = make_batch(m, [e], cache, features, stage.max_length, "cpu")
                    if batch is not None:
                        losses.append(m(**batch).loss.item())
            rows.append((st, spent, spent_cpu, recs_done, sum(losses) / max(len(losses), 1)))
            print(f"quality {st.name}: {recs_done} records in {spent:.0f} s, held-out loss "
                  f"{rows[-1][4]:.3f}", flush=True)
        lines += ["", f"## Held-out loss after the same {args.quality_records} records x {args.quality_epochs} "
                  f"epochs (fresh model each, lr {args.lr})", "",
                  f"Held-out loss: {len(held)} validation records, one per example, fp32, the tower's features "
                  "from the cache for all (the cache does not change them beyond fp16 rounding).", "",
                  "| setting | train seconds | CPU seconds | records/hour | held-out loss |", "|---|---:|---:|---:|---:|"]
        for st, spent, spent_cpu, recs_done, hl in rows:
            lines.append(f"| {st.name} | {spent:,.0f} | {spent_cpu:,.0f} | {recs_done / max(spent, 1e-9) * 3600:,.0f} "
                         f"| {hl:.3f} |")
    lines += ["", f"Command: `{' '.join(['.venv/bin/python', 'bench/train.py'] + sys.argv[1:])}`", ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
