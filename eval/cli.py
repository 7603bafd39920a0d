"""``facellm eval``: a model (an OpenAI-compatible endpoint, or FaceLLM in-process) and the baselines on a
benchmark, with the report written to ``--out``. ``add_parser(subparsers)`` plugs it into the main CLI; also
runnable alone: ``python -m facellm.eval.cli --benchmark builtin --local --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .evaluate import BASELINES
from .facexbench import SETTINGS, FaceXBenchWarning


def _csv(choices: tuple[str, ...], allow_none: bool = False):
    def parse(text: str) -> list[str]:
        out = [s.strip().lower() for s in text.split(",") if s.strip()]
        if allow_none and out == ["none"]:
            return []
        bad = [s for s in out if s not in choices]
        if bad or not out:
            raise argparse.ArgumentTypeError(f"unknown value(s) {bad or text!r}; choose from {', '.join(choices)}")
        return list(dict.fromkeys(out))

    return parse


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def default_builtin_dir() -> Path:
    from facellm.tools.assets import home

    return home() / "data" / "builtin-benchmark"


def load_benchmark(spec: str, data: str | None, *, progress: bool = True):
    """``builtin`` (data_gen records: ``--data DIR``, else the default folder, generated on first use) or a
    FaceXBench-format path / cached HF dataset id."""
    from .builtin import load_builtin
    from .facexbench import load_facexbench

    if spec != "builtin":
        return load_facexbench(spec)
    folder = Path(data) if data else default_builtin_dir()
    if not (folder / "shards").is_dir():
        if data:
            raise ValueError(f"{folder} holds no data_gen records (no shards/): run `facellm data generate "
                             f"--out {folder}` first, or leave out --data to use the default folder")
        from facellm.data_gen.pipeline import GenerateConfig, generate

        print(f"building the offline records for the built-in benchmark in {folder} (once) ...", file=sys.stderr)
        generate(GenerateConfig(out=folder, progress=progress, export_hf=False))
    return load_builtin(folder)


def _model_responders(args: argparse.Namespace, baselines: list[str]):
    """The model under test, and the same model without image input when that baseline is asked for."""
    from .responders import EndpointResponder, LocalResponder

    out = []
    if args.endpoint:
        main = EndpointResponder(args.endpoint, args.model_name, max_tokens=args.max_tokens, api_key=args.api_key)
        out.append(main)
        if "no_image" in baselines:
            out.append(EndpointResponder(args.endpoint, main.model, with_images=False, max_tokens=args.max_tokens,
                                         api_key=args.api_key))
        return main.name, out, []
    from facellm.default_model import default_model_dir, is_trained, load_default_model
    from facellm.modeling import FaceLLMForConditionalGeneration

    if args.model:
        model = FaceLLMForConditionalGeneration.from_pretrained(args.model)
        folder = Path(args.model)
    else:
        model = load_default_model()
        folder = default_model_dir()
    weights = folder / "model.safetensors"
    ident = f"{folder.resolve()}:{weights.stat().st_mtime_ns if weights.is_file() else 0}"
    name = args.model_name or ("facellm-default" if not args.model else folder.name)
    notes = [] if is_trained(folder) else [f"{name} holds an untrained initialisation of the new modules (no "
                                           "trained weights ship yet): its numbers are a floor, not a result."]
    out.append(LocalResponder(model, name=name, identity=ident, max_new_tokens=args.max_tokens))
    if "no_image" in baselines:
        out.append(LocalResponder(model, name=name, identity=ident, with_images=False,
                                  max_new_tokens=args.max_tokens))
    for other in args.compare or []:  # more model folders in the same run, e.g. the untrained initialisation
        label, sep, path = other.partition("=")
        label, other = (label, path) if sep and not Path(other).exists() else ("", other)
        if other == "untrained":
            from facellm.default_model import prepare_untrained_model

            other = prepare_untrained_model()
        folder = Path(other)
        weights = folder / "model.safetensors"
        other_name = folder.name if folder.name not in ("model", "final") else f"{folder.parent.name}-{folder.name}"
        other_name = label or other_name
        if not is_trained(folder):
            other_name += " (untrained)"
        out.append(LocalResponder(FaceLLMForConditionalGeneration.from_pretrained(folder), name=other_name,
                                  identity=f"{folder.resolve()}:{weights.stat().st_mtime_ns if weights.is_file() else 0}",
                                  max_new_tokens=args.max_tokens))
    return name, out, notes


def cmd_eval(args: argparse.Namespace) -> None:
    from .answers import Judge
    from .evaluate import RunConfig, baseline_responders, evaluate

    if bool(args.endpoint) == bool(args.local):
        raise ValueError("choose the model to evaluate: --endpoint URL or --local [--model DIR]")
    if args.model and not args.local:
        raise ValueError("--model DIR is for --local (for an endpoint, --model-name picks the served model)")
    with warnings.catch_warnings(record=True) as caught:  # one line per item (Python would show one per place)
        warnings.simplefilter("always", FaceXBenchWarning)
        bench = load_benchmark(args.benchmark, args.data, progress=not args.quiet)
    for w in caught:
        if issubclass(w.category, FaceXBenchWarning):
            print(f"warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    bench = bench.limit(args.limit)
    judge = Judge(args.judge, args.judge_model) if args.judge else None
    main_name, models, notes = _model_responders(args, args.baselines)
    responders = baseline_responders(args.baselines, bench) + models
    if args.concurrency is None:  # an in-process model answers one request at a time anyway
        args.concurrency = 8 if args.endpoint else 1
    result = evaluate(bench, responders, args.out, judge=judge, main_model=main_name, notes=notes,
                      config=RunConfig(settings=args.settings, concurrency=args.concurrency,
                                       progress=not args.quiet, cache=args.cache))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "summary_data"}, indent=2))
    else:
        from .report import summary_table

        for setting in args.settings:
            print(f"\n[{setting}]\n" + summary_table(result["summary_data"], setting))
        print(f"\nreport: {result['summary']}\nresults: {result['results']}\nplots: "
              + ", ".join(str(Path(args.out) / p) for p in result["plots"]))


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``facellm eval ...``"""
    e = subparsers.add_parser("eval", help="evaluate a model and baselines on a face VQA benchmark, with a report",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--benchmark", required=True, metavar="builtin|PATH",
                   help="'builtin' (held-out data_gen records) or a FaceXBench-format folder / JSON file / "
                        "cached Hugging Face dataset id")
    e.add_argument("--data", default=None, metavar="DIR",
                   help="data_gen output folder for the builtin benchmark (default: built once under $FACELLM_HOME)")
    who = e.add_mutually_exclusive_group()
    who.add_argument("--endpoint", default=None, metavar="URL", help="OpenAI-compatible server, e.g. "
                     "http://127.0.0.1:8000/v1")
    who.add_argument("--local", action="store_true", help="run FaceLLM in this process")
    e.add_argument("--model", default=None, metavar="DIR", help="with --local: model folder (default: the default "
                   "model)")
    e.add_argument("--compare", action="append", default=None, metavar="[NAME=]DIR",
                   help="with --local: another model folder to evaluate in the same run (repeatable; "
                   "'untrained' = the default architecture's untrained initialisation; NAME= sets its name in "
                   "the report)")
    e.add_argument("--model-name", default=None, help="endpoint: the served model id (default: the first listed); "
                   "local: the name shown in the report")
    e.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"), help=argparse.SUPPRESS)
    e.add_argument("--judge", default=None, metavar="URL", help="OpenAI-compatible judge for open questions "
                   "(default: the keyword rubric)")
    e.add_argument("--judge-model", default=None, help="the judge's model id (default: the first listed)")
    e.add_argument("--baselines", type=_csv(BASELINES, allow_none=True), default=list(BASELINES),
                   help=f"comma-separated, or 'none' (default: {','.join(BASELINES)})")
    e.add_argument("--settings", type=_csv(SETTINGS), default=["zero_shot"],
                   help=f"prompt settings, comma-separated: {','.join(SETTINGS)} (default: zero_shot)")
    e.add_argument("--limit", type=_positive, default=None, metavar="N", help="at most N items per category")
    e.add_argument("--concurrency", type=_positive, default=None,
                   help="parallel requests (default: 8 for an endpoint, 1 in-process)")
    e.add_argument("--max-tokens", type=_positive, default=96, help="answer length limit (default 96)")
    e.add_argument("--cache", default=None, metavar="FILE", help="response cache (default: OUT/cache.sqlite)")
    e.add_argument("--out", required=True, metavar="DIR", help="report folder")
    e.add_argument("--json", action="store_true", help="print the report paths as JSON")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_eval)
    return e


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="facellm")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"facellm: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("facellm: error: interrupted (answers so far are cached: run the same command to resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
