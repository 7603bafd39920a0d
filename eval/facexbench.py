"""FaceXBench-format benchmarks: load the JSON layout and write the prompts of its three settings.

The layout: a folder of JSON files, one per source dataset, each with ``category``, ``sub-category``,
``dataset``, ``num_images`` ("zero" / "single" / "multiple"), ``prepend_text`` (a task description),
``postpend_text`` (the answer-format instruction), for the tool-retrieval file a ``context`` (a catalogue
of face APIs), and ``questions: {id: {image_paths, question_text, options[4], correct_answer_option,
answer}}``. Image paths are relative to the folder that holds the JSON files.

The published files have quirks, all accepted without editing a file: some items' ``answer`` text is not the
text of their ``correct_answer_option`` (the key is what the benchmark's own scoring compares, so the key
scores; each such item is warned about once and counted in the report), option and answer values may be
numbers, files carry extra keys (``question_type``), the tool-retrieval file lists a black placeholder image
for text-only questions, and the JSON files may sit in a ``benchmark/`` folder. An item whose fields cannot
be read, or whose image file is missing, is left out with a warning and counted (never the whole benchmark).

Settings: ``zero_shot`` (question, options, format instruction), ``in_context`` (the task description
first) and ``cot`` (task description, then "think step by step" and a final "Answer: X" line).

FaceXBench is for evaluation only: nothing here feeds training.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .answers import canonical_gender
from .items import LETTERS, Benchmark, BenchmarkError, EvalItem

SETTINGS = ("zero_shot", "in_context", "cot")
COT_TEXT = ("Think step by step about what the image(s) show, then give your final answer on its own last line "
            "as 'Answer: X', where X is the option letter.")
DEFAULT_POSTPEND = "Please answer the question and provide only the correct option letter, e.g., A, B, C, D."
_REQUIRED = ("category", "questions")


class FaceXBenchWarning(UserWarning):
    """An item of a published FaceXBench file that is scored by its key despite a quirk, or left out."""


def _same_text(a: object, b: object) -> bool:
    """Option and answer texts compared as the files write them: numbers and strings, case and spacing aside."""
    return " ".join(str(a).split()).casefold() == " ".join(str(b).split()).casefold()


def _resolve_source(path_or_id: str | os.PathLike) -> Path:
    """A local folder / JSON file, or a Hugging Face dataset id already in the local cache (never downloads)."""
    p = Path(path_or_id).expanduser()
    if p.exists():
        return p
    text = str(path_or_id)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id=text, repo_type="dataset", local_files_only=True))
        except Exception as e:  # offline and not cached, or no such id
            raise BenchmarkError(f"{text!r} is not a local path, and no cached copy of the Hugging Face dataset "
                                 f"{text!r} was found (this runs offline; download it once with "
                                 f"`huggingface-cli download --repo-type dataset {text}`): {e}") from None
    raise BenchmarkError(f"no benchmark at {text!r}: not a file or folder")


def _json_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    # the published repository keeps them under benchmark/; accept that folder or any folder of JSON files
    for cand in (root, root / "benchmark"):
        files = sorted(cand.glob("*.json"))
        if files:
            return files
    raise BenchmarkError(f"{root} holds no FaceXBench JSON files")


def _option_letter(raw: object, options: list[str], where: str) -> str:
    letter = str(raw).strip().strip("()").upper()[:1]
    if letter not in LETTERS[: len(options)]:
        raise BenchmarkError(f"{where}: correct_answer_option {raw!r} is not one of {LETTERS[: len(options)]}")
    return letter


def _asks_race(sub_category: str, question: str) -> bool:
    """A question whose answer would be a race or ethnicity group (FaceXBench's bias_fairness/race items): the
    agent policy's own test, on the file's sub-category and on the question."""
    from facellm.agent.policy import is_race_question

    return is_race_question(sub_category.replace("_", " ")) or is_race_question(question)


def load_file(path: Path, *, base: Path | None = None, counts: dict[str, int] | None = None) -> list[EvalItem]:
    """The items of one FaceXBench JSON file (image paths made absolute against ``base``, default its folder).

    ``counts`` (optional) collects ``key_answer_mismatch`` and ``malformed`` item counts."""
    counts = counts if counts is not None else {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchmarkError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict) or any(k not in data for k in _REQUIRED):
        raise BenchmarkError(f"{path}: not a FaceXBench file (needs the keys {', '.join(_REQUIRED)})")
    questions = data["questions"]
    if not isinstance(questions, dict):
        raise BenchmarkError(f"{path}: 'questions' must be an object of id -> question")
    base = base or path.parent
    num_images = str(data.get("num_images", "")).lower()
    text_only = num_images == "zero"
    items = []
    for qid, q in questions.items():
        where = f"{path.name} question {qid}"
        try:
            options = [str(o) for o in q["options"]]
            images = [str((base / p).resolve()) for p in q.get("image_paths", [])]
            letter = _option_letter(q["correct_answer_option"], options, where)
            question = str(q["question_text"])
        except (KeyError, TypeError, BenchmarkError) as e:
            counts["malformed"] = counts.get("malformed", 0) + 1
            warnings.warn(f"FaceXBench {where}: left out, unreadable ({e})", FaceXBenchWarning, stacklevel=2)
            continue
        keyed = options[LETTERS.index(letter)]
        meta = {"text_only": text_only, "file": path.name, "num_images": num_images or None}
        if "answer" in q and not _same_text(q["answer"], keyed):
            # the benchmark's own scoring compares letters with correct_answer_option: the key scores
            counts["key_answer_mismatch"] = counts.get("key_answer_mismatch", 0) + 1
            meta["key_answer_mismatch"] = str(q["answer"])
            warnings.warn(f"FaceXBench {where}: 'answer' {q['answer']!r} is not the text of the key "
                          f"{letter} ({keyed!r}); scored by the key", FaceXBenchWarning, stacklevel=2)
        sub = str(data.get("sub-category", data.get("sub_category", "general")))
        if _asks_race(sub, question):
            # FaceLLM estimates no race: such items are not asked (policy), counted in the report
            counts["race_not_asked"] = counts.get("race_not_asked", 0) + 1
            continue
        groups = {}
        if data["category"] == "bias_fairness" and len(images) == 1:
            # the single-image fairness questions ask for the group itself: their answer is the person's group
            groups[sub] = (canonical_gender(keyed) or keyed.lower()) if sub == "gender" else keyed
        try:
            items.append(EvalItem(
                id=f"{path.stem}/{qid}", kind="mc", question=question, images=images, category=str(data["category"]),
                sub_category=sub, dataset=str(data.get("dataset", path.stem)), options=options, answer_letter=letter,
                context=str(data.get("context", "") or ""), prepend_text=str(data.get("prepend_text", "") or ""),
                postpend_text=str(data.get("postpend_text", "") or "") or DEFAULT_POSTPEND, groups=groups,
                meta=meta))
        except ValueError as e:  # e.g. fewer than two options
            counts["malformed"] = counts.get("malformed", 0) + 1
            warnings.warn(f"FaceXBench {where}: left out ({e})", FaceXBenchWarning, stacklevel=2)
    return items


def _drop_missing_images(items: list[EvalItem], root: Path, counts: dict[str, int]) -> list[EvalItem]:
    """Items whose image files are all there. No image at all is the wrong folder (an error); a few missing
    files are left out with one warning and counted."""
    needed = [it for it in items if not it.meta.get("text_only") and it.images]
    missing = [it for it in needed if not all(Path(p).is_file() for p in it.images)]
    if needed and len(missing) == len(needed):
        example = next(p for p in missing[0].images if not Path(p).is_file())
        raise BenchmarkError(f"{root}: every image of the benchmark is missing (e.g. {example}): is this the "
                             "folder the JSON files' image_paths are relative to?")
    if missing:
        counts["missing_image"] = len(missing)
        warnings.warn(f"FaceXBench {root}: {len(missing)} item(s) left out because an image file is missing "
                      f"(e.g. {missing[0].id})", FaceXBenchWarning, stacklevel=2)
        gone = {it.id for it in missing}
        items = [it for it in items if it.id not in gone]
    return items


def load_facexbench(path_or_id: str | os.PathLike, *, check_images: bool = True) -> Benchmark:
    """Every question of a FaceXBench-format folder (or one file, or a cached HF dataset id)."""
    root = _resolve_source(path_or_id)
    files = _json_files(root)
    items: list[EvalItem] = []
    counts: dict[str, int] = {}
    for f in files:
        items.extend(load_file(f, counts=counts))
    if not items:
        raise BenchmarkError(f"{root}: the FaceXBench files hold no questions")
    if check_images:
        items = _drop_missing_images(items, root, counts)
    notes = []
    if counts.get("key_answer_mismatch"):
        notes.append(f"{counts['key_answer_mismatch']} FaceXBench item(s) have an 'answer' text that is not their "
                     "key's option text; scored by the key (correct_answer_option), as the benchmark's own scoring "
                     "does.")
    if counts.get("race_not_asked"):
        notes.append(f"{counts['race_not_asked']} FaceXBench item(s) ask for a race or ethnicity group: not asked, "
                     "because FaceLLM does not estimate race (they count neither for nor against a model).")
    if counts.get("malformed") or counts.get("missing_image"):
        notes.append(f"Left out: {counts.get('malformed', 0)} unreadable item(s), {counts.get('missing_image', 0)} "
                     "item(s) with a missing image file.")
    return Benchmark(name=f"facexbench:{root.name}", items=items, source=str(root), notes=notes,
                     counts={"items": len(items), **counts})


def options_text(options: list[str]) -> str:
    return "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))


def mc_prompt(item: EvalItem, setting: str = "zero_shot") -> str:
    """The text of a multiple-choice question in one of ``SETTINGS`` (images are sent separately)."""
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    parts = []
    if item.context:
        parts.append(item.context)
    if setting in ("in_context", "cot") and item.prepend_text:
        parts.append(item.prepend_text)
    parts.append(item.question)
    parts.append(options_text(item.options))
    parts.append(COT_TEXT if setting == "cot" else (item.postpend_text or DEFAULT_POSTPEND))
    return "\n".join(parts)
