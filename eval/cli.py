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

from .evaluate import BASELINES, DEFAULT_BASELINES
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


def default_real_dir() -> Path:
    from facellm.tools.assets import home

    return home() / "data" / "real-benchmark"


def _caps(text: str) -> dict[str, int]:
    out = {}
    for part in text.split(","):
        if part.strip():
            name, sep, n = part.partition("=")
            if not sep or not n.strip().isdigit() or int(n) < 1:
                raise argparse.ArgumentTypeError(f"caps look like CATEGORY=N,...; got {part!r}")
            out[name.strip()] = int(n)
    return out


def real_config(args: argparse.Namespace):
    from .realbench import RealBuildConfig

    if not args.data:
        raise ValueError("--benchmark real needs --data DIR: the folder with the real datasets (utkface/crop_part1, "
                         "fer2013, celeba), e.g. ../shared/data")
    return RealBuildConfig(data=Path(args.data), out=Path(args.bench_dir or default_real_dir()), seed=args.seed,
                           caps=args.caps or {}, categories=args.categories,
                           analysis_cache=Path(args.analysis_cache) if args.analysis_cache else None,
                           train_records=Path(args.train_data) if args.train_data else None,
                           progress=not args.quiet)


def load_benchmark(spec: str, data: str | None, *, progress: bool = True, args: argparse.Namespace | None = None):
    """``builtin`` (data_gen records: ``--data DIR``, else the default folder, generated on first use), ``real``
    (the held-out real datasets: built once into ``--bench-dir``), a built real-benchmark folder, or a
    FaceXBench-format path / cached HF dataset id."""
    from .builtin import load_builtin
    from .facexbench import load_facexbench
    from .realbench import ensure_real_benchmark, is_real_benchmark, load_real_benchmark

    if spec == "real":
        return ensure_real_benchmark(real_config(args), rebuild=bool(args and args.rebuild))
    if spec != "builtin":
        if is_real_benchmark(spec):
            return load_real_benchmark(spec)
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
    short = args.short_tokens
    out.append(LocalResponder(model, name=name, identity=ident, max_new_tokens=args.max_tokens, short_tokens=short))
    if "no_image" in baselines:
        out.append(LocalResponder(model, name=name, identity=ident, with_images=False,
                                  max_new_tokens=args.max_tokens, short_tokens=short))
    if "agent" in baselines:
        from facellm.agent.chat_model import FaceLLMChatModel

        from .agent_responder import AgentResponder

        chat = FaceLLMChatModel(model=model, max_new_tokens=args.max_tokens)
        out.append(AgentResponder(chat, name=f"{name} agent", identity=ident, mode=args.agent_mode))
    compare = list(args.compare or [])
    if "untrained" in baselines and "untrained" not in compare:
        compare.append("untrained")
    for other in compare:  # more model folders in the same run, e.g. the untrained initialisation
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
                                  max_new_tokens=args.max_tokens, short_tokens=short))
    return name, out, notes


def cmd_eval(args: argparse.Namespace) -> None:
    from .answers import Judge
    from .evaluate import RunConfig, baseline_responders, evaluate

    if args.benchmark == "agent":  # held-out agent questions through the agent itself (eval/agent_heldout.py)
        from .agent_heldout import run_cli

        return run_cli(args)
    if args.build_only:
        if args.benchmark != "real":
            raise ValueError("--build-only builds the real benchmark: use it with --benchmark real --data DIR")
        from .realbench import ensure_real_benchmark

        bench = ensure_real_benchmark(real_config(args), rebuild=args.rebuild)
        cats = {}
        for it in bench.items:
            cats[it.category] = cats.get(it.category, 0) + 1
        print(f"real benchmark: {len(bench.items)} items in {args.bench_dir or default_real_dir()} ("
              + ", ".join(f"{k} {v}" for k, v in cats.items()) + ")")
        return
    if not args.out:
        raise ValueError("--out DIR is required: the folder for the report")
    if bool(args.endpoint) == bool(args.local):
        raise ValueError("choose the model to evaluate: --endpoint URL or --local [--model DIR]")
    if args.endpoint and any(b in args.baselines for b in ("untrained", "agent")):
        raise ValueError("the untrained and agent baselines run the model in this process: use --local")
    if args.model and not args.local:
        raise ValueError("--model DIR is for --local (for an endpoint, --model-name picks the served model)")
    with warnings.catch_warnings(record=True) as caught:  # one line per item (Python would show one per place)
        warnings.simplefilter("always", FaceXBenchWarning)
        bench = load_benchmark(args.benchmark, args.data, progress=not args.quiet, args=args)
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
    e.add_argument("--benchmark", required=True, metavar="builtin|real|agent|PATH",
                   help="'builtin' (held-out data_gen records), 'real' (held-out photos of the real datasets in "
                        "--data), 'agent' (held-out agent questions on real photos, asked through the agent with and "
                        "without its rules), a built real-benchmark folder, or a FaceXBench-format folder / JSON "
                        "file / cached Hugging Face dataset id")
    e.add_argument("--data", default=None, metavar="DIR",
                   help="builtin: data_gen output folder (default: built once under $FACELLM_HOME); real: the "
                        "folder with utkface/crop_part1, fer2013 and celeba (e.g. ../shared/data)")
    real = e.add_argument_group("real benchmark (--benchmark real)")
    real.add_argument("--bench-dir", default=None, metavar="DIR",
                      help="where the built benchmark lives (default: $FACELLM_HOME/data/real-benchmark)")
    real.add_argument("--build-only", action="store_true", help="build (or check) the benchmark and stop")
    real.add_argument("--rebuild", action="store_true", help="build again even if --bench-dir holds a build")
    real.add_argument("--caps", type=_caps, default=None, metavar="CAT=N,...",
                      help="items per category (default: age/age_group/gender/expression 350, verification 150, "
                           "counting/open_qa/tool_calling 120)")
    real.add_argument("--categories", type=lambda t: [c.strip() for c in t.split(",") if c.strip()], default=None,
                      metavar="A,B", help="build only these categories (default: all registered)")
    real.add_argument("--seed", type=int, default=0, help="data_gen's split seed (the training data's; default 0)")
    real.add_argument("--analysis-cache", default=None, metavar="DIR",
                      help="face-analysis cache by image hash (data generation's OUT/cache/analysis reuses its work)")
    real.add_argument("--train-data", default=None, metavar="DIR",
                      help="a data_gen output folder: refuse to build if a benchmark photo/identity is in its "
                           "training records")
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
    e.add_argument("--baselines", type=_csv(BASELINES, allow_none=True), default=list(DEFAULT_BASELINES),
                   help=f"comma-separated from {','.join(BASELINES)}, or 'none' (default: "
                        f"{','.join(DEFAULT_BASELINES)}; untrained = the default architecture's untrained "
                        "initialisation, agent = facellm ask --agent with the model, both --local)")
    e.add_argument("--agent-mode", choices=("model_first", "rules_first"), default="model_first",
                   help="the agent baseline's mode (rules_first skips the model's tool choice when the rules "
                        "recognise the question: faster on a CPU)")
    e.add_argument("--settings", type=_csv(SETTINGS), default=["zero_shot"],
                   help=f"prompt settings, comma-separated: {','.join(SETTINGS)} (default: zero_shot)")
    e.add_argument("--limit", type=_positive, default=None, metavar="N", help="at most N items per category")
    e.add_argument("--concurrency", type=_positive, default=None,
                   help="parallel requests (default: 8 for an endpoint, 1 in-process)")
    e.add_argument("--max-tokens", type=_positive, default=96, help="answer length limit (default 96)")
    e.add_argument("--short-tokens", type=_positive, default=16,
                   help="answer length limit of in-process models on questions asking for a short answer (a "
                        "number, a word, yes/no, a letter; default 16)")
    e.add_argument("--cache", default=None, metavar="FILE", help="response cache (default: OUT/cache.sqlite)")
    e.add_argument("--out", default=None, metavar="DIR", help="report folder (required unless --build-only)")
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
