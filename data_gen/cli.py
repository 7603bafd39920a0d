"""``facellm data generate`` and ``facellm data stats``; ``add_parser(subparsers)`` plugs them into the main CLI.

Also runnable alone: ``python -m facellm.data_gen.cli generate --source offline --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .schema import STYLES


def _styles(text: str) -> tuple[str, ...]:
    out = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    bad = [s for s in out if s not in STYLES]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"unknown style(s) {bad or text!r}; choose from {', '.join(STYLES)}")
    return tuple(dict.fromkeys(out))


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def cmd_generate(args: argparse.Namespace) -> None:
    from .adapters import parse_columns
    from .pipeline import GenerateConfig, Generator

    if args.source != "offline" and not args.source.startswith("hf:") and args.path is None:
        raise ValueError(f"--source {args.source} needs --path (the local copy of the dataset)")
    if args.held_out < 0 or args.held_out >= 1:
        raise ValueError("--held-out must be in [0, 1)")
    cfg = GenerateConfig(
        source=args.source, path=args.path, columns=parse_columns(args.columns), styles=args.styles,
        out=Path(args.out), seed=args.seed, per_image=args.per_image, variants=args.variants,
        composites=args.composites, held_out=args.held_out, limit=args.limit, shard_size=args.shard_size,
        gallery=not args.no_gallery, teacher_url=args.teacher_url, teacher_model=args.teacher_model,
        teacher_concurrency=args.teacher_concurrency, workers=args.workers, progress=not args.quiet,
        export_hf=not args.no_export, cache_dir=Path(args.cache) if args.cache else None, part=_part(args.part))
    gen = Generator(cfg)
    try:
        stats = gen.run()
    except KeyboardInterrupt:
        s = gen.stats
        print(f"\ninterrupted: {s.written} new records this run are safe in {cfg.out}; run the same command again "
              "to resume", file=sys.stderr)
        raise SystemExit(130) from None
    s = stats
    summary = {"written": s.written, "units": s.units, "skipped_units (done before)": s.skipped_units,
               "rejected_by_factcheck": s.rejected, "duplicates": s.duplicates, "by_style": s.by_style,
               "records_per_s": round(s.written / s.seconds, 2) if s.seconds else None,
               "tool_ms_per_new_image": round(s.tool_ms / s.analysed, 1) if s.analysed else None}
    if s.teacher_fallbacks:
        summary["teacher_fallbacks"] = s.teacher_fallbacks
    summary["images_per_s"] = round(s.units / s.seconds, 2) if s.seconds else None
    if s.skipped_inputs:
        summary["skipped_inputs (see skipped_inputs.jsonl)"] = s.skipped_inputs
    if s.padded:
        summary["tight_crops_analysed_padded"] = s.padded
    if s.failed_units:
        summary["failed_units (see failed.jsonl)"] = s.failed_units
    print(json.dumps(summary, indent=2) if args.json else
          "\n".join(f"{k}: {v}" for k, v in summary.items()))
    print(f"records: {cfg.out}/shards  (stats: facellm data stats {cfg.out})", file=sys.stderr)


def _part(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m is None or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--part takes I/N with 0 <= I < N, e.g. 0/2; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def cmd_stats(args: argparse.Namespace) -> None:
    from .stats import compute_stats, format_stats, plot_lengths

    st = compute_stats(args.dir)
    if st.records == 0:
        raise ValueError(f"{args.dir} holds no records")
    png = Path(args.plot) if args.plot else Path(args.dir) / "answer_lengths.png"
    plot_lengths(st, png)
    if args.json:
        print(json.dumps({**st.to_dict(), "plot": str(png)}, indent=2))
    else:
        print(format_stats(st))
        print(f"\nanswer-length histogram: {png}")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``data generate`` / ``data stats`` to the main CLI's sub-parsers; handlers are ``args.func``."""
    d = subparsers.add_parser("data", help="instruction data: generate records from face datasets, show stats")
    ds = d.add_subparsers(dest="data_command", required=True)

    g = ds.add_parser("generate", help="build instruction records (sharded JSONL + HF dataset), resumable",
                      description="Images + labels -> FairFaceGPT / FaceInstruct / FaceCaption QA and agent traces. "
                                  "Interrupt at any time and rerun the same command to resume.")
    g.add_argument("--source", default="offline",
                   help="offline | fairface | utkface | celeba | rafdb | affectnet | csv | json | hf:ID_OR_PATH")
    g.add_argument("--path", default=None, help="the dataset's local folder (or table file for csv/json)")
    g.add_argument("--styles", "--style", dest="styles", type=_styles, default=STYLES,
                   help=f"comma-separated, from {','.join(STYLES)} (default: all)")
    g.add_argument("--out", required=True, help="output folder (reuse it to resume)")
    g.add_argument("--limit", type=_positive, default=None, help="at most N images (a seeded sample)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=0,
                   help="processes that run the face tools ahead of generation (pays off with more than 2 "
                        "cores); 0 = in-process")
    g.add_argument("--per-image", type=_positive, default=4, help="items per style per image")
    g.add_argument("--variants", type=int, default=6, help="offline: augmented copies per photo")
    g.add_argument("--composites", type=int, default=4, help="offline: side-by-side images per split")
    g.add_argument("--held-out", type=float, default=0.2, help="share of groups in the test split (no dataset split)")
    g.add_argument("--columns", default=None, help="csv/json/hf: renames, e.g. Sex=gender,Emotion=expression")
    g.add_argument("--cache", default=None, help="folder of tool analyses by image sha256 (default OUT/cache)")
    g.add_argument("--part", default=None, metavar="I/N",
                   help="only part I of N (0-based) of the units, for N parallel runs, each with its own --out")
    g.add_argument("--shard-size", type=_positive, default=2000, help="records per JSONL shard")
    g.add_argument("--teacher-url", default=None, help="OpenAI-compatible endpoint that rewrites the answers")
    g.add_argument("--teacher-model", default=None, help="model name for the teacher endpoint")
    g.add_argument("--teacher-concurrency", type=_positive, default=4)
    g.add_argument("--no-gallery", action="store_true", help="agent traces without the enrolled test gallery")
    g.add_argument("--no-export", action="store_true", help="skip the HF dataset / parquet export at the end")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_generate)

    s = ds.add_parser("stats", help="counts per style / category / split / source, label provenance, plot")
    s.add_argument("dir", help="a `data generate` output folder")
    s.add_argument("--plot", default=None, help="PNG path for the answer-length histogram (default DIR/answer_lengths.png)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="facellm")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["data", *(sys.argv[1:] if argv is None else argv)])
    from facellm.tools.assets import MissingAssetError

    try:
        args.func(args)
        return 0
    except (MissingAssetError, FileNotFoundError, ValueError) as e:
        print(f"facellm: error: {str(e).strip(chr(39))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
