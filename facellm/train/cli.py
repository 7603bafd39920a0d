"""`facellm train` and `facellm merge`."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train FaceLLM with a recipe (stage 1 alignment, stage 2 instruction tuning)")
    t.add_argument("--recipe", default="default", help="built-in recipe (default, real, tiny, gpu-large) or a TOML file")
    t.add_argument("--data", action="append", default=None, metavar="DIR",
                   help="data_gen output folder (repeatable; default: the recipe's `data`)")
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics, the model folder)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (the same command again does too)")
    t.add_argument("--analysis-cache", action="append", default=None, metavar="DIR",
                   help="folder of data_gen tool analyses by image sha256 (data_gen --cache; repeatable; "
                        "default: the recipe's analysis_cache)")
    t.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None,
                   help="override the recipe's mixed_precision (auto: bf16 autocast where the CPU/GPU has it)")
    t.add_argument("--max-steps", type=int, default=None, help="cap every stage at this many steps")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("export", help="a model folder from a run's newest checkpoint (a run stopped before its end)")
    x.add_argument("run", help="run folder (facellm train --out)")
    x.add_argument("out", help="new model folder")
    x.set_defaults(func=cmd_export)

    m = sub.add_parser("merge", help="write a standalone model folder with the LoRA adapter folded into the LM")
    m.add_argument("model", help="model folder with a lora/ adapter")
    m.add_argument("out", help="new folder")
    m.set_defaults(func=cmd_merge)


def cmd_train(args: argparse.Namespace) -> None:
    import sys

    from .recipe import Recipe
    from .trainer import TrainInterrupted, train

    recipe = Recipe.load(args.recipe)
    if args.analysis_cache is not None:
        recipe.analysis_cache = list(args.analysis_cache)
    if args.precision is not None:
        recipe.mixed_precision = args.precision
    try:
        folder = train(recipe, args.out, data=args.data, resume=args.resume, max_steps=args.max_steps,
                       progress=not args.no_progress)
    except TrainInterrupted:
        sys.exit(130)
    print(f"trained model: {folder}  (try: facellm ask --model {folder} PHOTO \"question\")")


def cmd_export(args: argparse.Namespace) -> None:
    from .trainer import export_checkpoint

    print(f"model folder written to {export_checkpoint(args.run, args.out)} (the run continues with the same "
          "train command)")


def cmd_merge(args: argparse.Namespace) -> None:
    from facellm.lora import merge

    print(f"merged model written to {merge(args.model, args.out)}")
