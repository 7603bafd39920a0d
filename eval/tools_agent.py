"""The tools-only agent: answers from what facellm.tools measured, by fixed rules, with no language model.

It is the baseline that says how much the LM adds over its own tools. For a multiple-choice question it
reads the question's topic (counting, smiling, gender, age, expression, head pose, same person, tool
retrieval), computes the tools' value and picks the option that says it; for attribute and open questions it
states the value or a description; on tool-use items it calls the tool the question's words point to and
answers from the tool's result.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from facellm.tools.schema import Face, FaceAnalysis

from .answers import _norm, age_group_of, canonical_expression, canonical_gender
from .items import LETTERS, EvalItem
from .responders import Reply

# question words -> the tool that answers them (first match wins)
TOOL_RULES = (
    (r"\bsame person\b|\bverify\b|\bmatch(es)?\b", "verify"),
    (r"\bwho\b|\bname\b|\bidentify\b|\brecogni[sz]e\b|\benrolled\b", "identify"),
    (r"\bhow many\b|\bcount\b|\bnumber of (faces|people)\b", "detect"),
    (r"\bsmil|\bexpression|\bemotion|\bhappy|\bsad\b|\beyes? (closed|open)|\bmouth\b|\bgaze\b", "expression"),
    (r"\bold\b|\bage\b|\bgender\b|\bwoman\b|\bman\b", "attributes"),
    (r"\bpose\b|\bturned\b|\blooking\b|\bfacing\b|\byaw\b|\bpitch\b|\bhead\b", "pose"),
    (r"\bquality\b|\bblur|\busable\b|\bsharp", "quality"),
    (r"\blandmark|\bkey ?points?\b|\beyes? (position|location)", "landmarks"),
    (r"\bsegment|\bregions?\b|\bhair\b|\bparse", "parse"),
)
_FACE_REF = re.compile(r"\bface (\d+)\b")
_API_TOPICS = {  # tool-retrieval questions: topic words -> API words in the options
    "age": ("age",), "gender": ("gender",), "race": ("race",), "spoof": ("spoof",), "deepfake": ("deepfake",),
    "low-res": ("low_res",), "low resolution": ("low_res",), "high-res": ("high_res",),
    "high resolution": ("high_res",), "celebrit": ("celebrity",), "attribute": ("attribute",),
    "expression": ("expression", "emotion"), "emotion": ("emotion", "expression"), "head": ("head_pose", "pose"),
    "pose": ("pose",), "crowd": ("crowd", "counting"), "count": ("crowd", "counting"),
    "segment": ("segment", "mask"), "pars": ("segment", "parts"), "verif": ("identify", "compare"),
    "identit": ("identify", "embedding"), "recogni": ("identify", "embedding"), "match": ("compare", "identify"),
    "find": ("find", "detect"), "detect": ("find", "detect"), "every face": ("find", "detect"),
}


def choose_tool(question: str, offered: list[str]) -> str:
    q = question.lower()
    for pattern, tool in TOOL_RULES:
        if tool in offered and re.search(pattern, q):
            return tool
    return "analyze" if "analyze" in offered else offered[0]


class ToolsOnlyAgent:
    name = "tools-only"
    with_images = True

    def __init__(self) -> None:
        self._cache: dict[str, FaceAnalysis] = {}
        self._lock = threading.Lock()

    def identity(self) -> str:
        return json.dumps(["tools-only", 3])  # bump when its rules change

    # -- the tools ------------------------------------------------------------------------------
    def analysis(self, item: EvalItem, index: int = 0) -> FaceAnalysis:
        if index == 0 and item.analysis is not None:
            return FaceAnalysis.from_json(json.dumps(item.analysis))
        path = item.images[index]
        with self._lock:
            if path not in self._cache:
                from facellm.tools.analyze import DEFAULT_STEPS, analyze

                self._cache[path] = analyze(path, steps=DEFAULT_STEPS)
            return self._cache[path]

    @staticmethod
    def _face(fa: FaceAnalysis, question: str) -> Face | None:
        if not fa.faces:
            return None
        if (m := _FACE_REF.search(question.lower())) and any(f.id == int(m.group(1)) for f in fa.faces):
            return fa.face(int(m.group(1)))
        return max(fa.faces, key=lambda f: f.box.area)

    @staticmethod
    def facts(face: Face | None) -> dict[str, Any]:
        """The tools' values for one face, in the words the questions use."""
        if face is None:
            return {}
        out: dict[str, Any] = {}
        a = face.attributes
        if a is not None and a.perceived_gender is not None:
            out["gender"] = canonical_gender(a.perceived_gender.value)
        if a is not None and a.perceived_age is not None:
            out["age"] = float(a.perceived_age.value)
            out["age_group"] = age_group_of(out["age"])
        if face.expression is not None:
            out["expression"] = canonical_expression(face.expression.value)
        if face.cues is not None:
            out["smile"] = face.cues.smile.active or out.get("expression") == "happy"
        if face.pose is not None:
            out["pose"] = face.pose.direction
        return out

    # -- answering ------------------------------------------------------------------------------
    def respond(self, item: EvalItem, messages: list[dict], tools: list[dict] | None) -> Reply:
        if item.kind == "tool" and tools:
            return self._tool_turn(item, messages, tools)
        if item.kind == "mc":
            return Reply(content=self._choose(item))
        if item.meta.get("text_only") or not item.images:
            return Reply(content="")
        fa = self.analysis(item)
        if item.kind == "attribute" and item.attribute == "count":
            return Reply(content=str(fa.num_faces))
        if item.kind == "attribute" and item.attribute == "same_person":
            return Reply(content=self._same_person(item, fa))
        f = self.facts(self._face(fa, item.question))
        if item.kind == "attribute":
            value = f.get(item.attribute)
            return Reply(content="" if value is None else (f"{value:.0f}" if item.attribute == "age" else str(value)))
        return Reply(content=describe(fa, f))

    def _choose(self, item: EvalItem) -> str:
        q = item.question.lower()
        opts = item.options
        if item.meta.get("text_only") or not item.images:
            return self._choose_api(item)
        if len(item.images) > 1 and re.search(r"same person|same identity|identit", q):
            return self._choose_identity(item)
        fa = self.analysis(item)
        f = self.facts(self._face(fa, item.question))
        wanted: str | None = None
        if re.search(r"how many|number of", q):
            wanted = str(fa.num_faces)
        elif "smil" in q and "smile" in f:
            wanted = "yes" if f["smile"] else "no"
        elif re.search(r"woman|man|gender|male|female", q) and f.get("gender"):
            wanted = f["gender"]
        elif re.search(r"\bage\b|how old", q) and "age" in f:
            for i, o in enumerate(opts):  # "30-39" style ranges first, then group words
                if (m := re.search(r"(\d+)\s*-\s*(\d+)", o)) and int(m.group(1)) <= f["age"] <= int(m.group(2)) + 0.99:
                    return LETTERS[i]
                if (m := re.search(r"(\d+)\s*\+|more than (\d+)", o)) and f["age"] >= int(m.group(1) or m.group(2)):
                    return LETTERS[i]
            wanted = f["age_group"]
        elif re.search(r"expression|emotion|feel", q) and f.get("expression"):
            wanted = f["expression"]
        elif re.search(r"pose|turned|facing|looking", q) and f.get("pose"):
            wanted = f["pose"]
        if wanted is not None:
            for i, o in enumerate(opts):
                if _norm(o) == _norm(wanted) or canonical_gender(o) == wanted or canonical_expression(o) == wanted:
                    return LETTERS[i]
            words = set(_norm(wanted).split())
            best = max(range(len(opts)), key=lambda i: (len(words & set(_norm(opts[i]).split())), -i))
            if words & set(_norm(opts[best]).split()):
                return LETTERS[best]
        return "A"  # no rule applies: a fixed guess

    def _same_person(self, item: EvalItem, fa: FaceAnalysis) -> str:
        """Two faces side by side in one image (or two images): the recognizer's verdict, yes or no."""
        from facellm.tools.registry import ImageStore, run_tool

        store = ImageStore({f"image_{i + 1}": p for i, p in enumerate(item.images)})
        if len(item.images) > 1:
            args = {"image_a": "image_1", "image_b": "image_2"}
        elif fa.num_faces >= 2:
            first, second = sorted(fa.faces, key=lambda f: f.box.area, reverse=True)[:2]
            a, b = sorted((first.id, second.id))
            args = {"image_a": "image_1", "image_b": "image_1", "face_a": a, "face_b": b}
        else:
            return ""  # one face found: nothing to compare
        try:
            return "yes" if run_tool("verify", args, store)["same_person"] else "no"
        except ValueError:
            return ""

    def _choose_api(self, item: EvalItem) -> str:
        """Tool retrieval: the option whose API calls cover most of the topics the question names."""
        q = item.question.lower()
        wanted = {w for key, words in _API_TOPICS.items() if key in q for w in words}
        scores = [sum(w in o.lower() for w in wanted) - 0.1 * o.count(",") for o in item.options]
        return LETTERS[max(range(len(scores)), key=lambda i: (scores[i], -i))]

    def _choose_identity(self, item: EvalItem) -> str:
        """Same-person questions over several images: verify every pair with the recognizer."""
        from facellm.tools.registry import ImageStore, run_tool

        store = ImageStore({f"image_{i + 1}": p for i, p in enumerate(item.images)})
        n = len(item.images)
        same = set()
        for a in range(n):
            for b in range(a + 1, n):
                try:
                    r = run_tool("verify", {"image_a": f"image_{a + 1}", "image_b": f"image_{b + 1}"}, store)
                except ValueError:
                    continue
                if r["same_person"]:
                    same.add((a + 1, b + 1))
        for i, o in enumerate(item.options):
            nums = [int(x) for x in re.findall(r"\d+", o)]
            if len(nums) == 2 and tuple(sorted(nums)) in same:
                return LETTERS[i]
            if re.fullmatch(r"\s*\d+\s*", o) and "pairs" in item.question.lower() and int(o) == len(same):
                return LETTERS[i]
        return "A"

    def _tool_turn(self, item: EvalItem, messages: list[dict], tools: list[dict]) -> Reply:
        offered = [t["function"]["name"] for t in tools]
        results = [m for m in messages if m["role"] == "tool"]
        if not results:
            tool = choose_tool(item.question, offered)
            if tool == "verify":
                args = {"image_a": "image_1", "image_b": "image_2" if len(item.images) > 1 else "image_1"}
            else:
                args = {"image": "image_1"}
                if (m := _FACE_REF.search(item.question.lower())) and tool not in ("detect",):
                    args["face_id"] = int(m.group(1))
            return Reply(tool_calls=[{"name": tool, "arguments": args}])
        try:
            result = json.loads(results[-1]["content"])
        except (json.JSONDecodeError, TypeError):
            return Reply(content="The tool did not return a readable result.")
        return Reply(content=answer_from_result(result))


def describe(fa: FaceAnalysis, f: dict) -> str:
    """A plain description from the tools' values (estimates said as estimates)."""
    n = fa.num_faces
    if n == 0:
        return "No face was found in this image."
    parts = [f"There {'is one face' if n == 1 else f'are {n} faces'} in this image."]
    if f.get("gender") or f.get("age") is not None:
        who = f"a {f['gender']}" if f.get("gender") else "a person"
        age = f" of about {f['age']:.0f} years" if f.get("age") is not None else ""
        parts.append(f"The {'main ' if n > 1 else ''}face appears to be {who}{age} (model estimates).")
    if f.get("smile"):
        parts.append("The person is smiling.")
    if f.get("expression"):
        parts.append(f"The expression looks {f['expression']}.")
    if f.get("pose"):
        parts.append(f"The head is {f['pose']}.")
    return " ".join(parts)


def answer_from_result(result: dict) -> str:
    """A one-line answer from one tool result (the registry's JSON)."""
    if "error" in result:
        return f"The tool could not answer: {result['error']}"
    if "same_person" in result:
        return ("The two faces appear to be the same person." if result["same_person"]
                else "The two faces appear to be different people.") + f" (distance {result.get('distance')})"
    faces = result.get("faces", [])
    n = result.get("num_faces", len(faces))
    if not faces:
        return "No face was found in this image." if n == 0 else f"There are {n} faces in this image."
    bits = []
    for face in faces:
        b = []
        if "name" in face:
            b.append(f"is {face['name']}" if face.get("known") else "does not match anyone enrolled")
        if "perceived_gender" in face:
            g = canonical_gender(face["perceived_gender"]["value"]) or face["perceived_gender"]["value"]
            b.append(f"appears to be a {g}")
        if "perceived_age" in face:
            b.append(f"looks about {face['perceived_age']['value']} years old")
        if "expression" in face:
            b.append(f"looks {canonical_expression(face['expression']['value']) or face['expression']['value']}")
        if "cues" in face:
            b.append("is smiling" if face["cues"]["smile"]["active"] else "is not smiling")
        if "pose" in face and isinstance(face["pose"], dict):
            b.append(f"has the head {face['pose'].get('direction')}")
        if "quality" in face and isinstance(face["quality"], dict):
            b.append("is usable for recognition" if face["quality"].get("usable") else "is of low quality")
        if b:
            who = "The face" if n == 1 else f"Face {face['face_id']}"
            bits.append(f"{who} {', '.join(b)}.")
    lead = f"There {'is one face' if n == 1 else f'are {n} faces'} in this image."
    return " ".join([lead, *bits])


__all__ = ["ToolsOnlyAgent", "answer_from_result", "choose_tool", "describe"]
