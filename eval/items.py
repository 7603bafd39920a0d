"""What a benchmark is made of: ``EvalItem`` (one question with its reference) and ``Benchmark`` (a named list).

Every loader (FaceXBench JSON, the built-in benchmark from data_gen records) produces these, and every runner,
scorer and report reads them, so the kinds of task live in one place:

* ``mc``: multiple choice; ``options`` and the correct ``answer_letter``.
* ``attribute``: a short answer about one attribute (``attribute``: expression, gender, age_group, age, count,
  same_person) with the reference in ``reference``; scored by accuracy / macro-F1, MAE for age.
* ``open``: free text, scored by a judge model or the keyword rubric against ``reference`` and ``keywords``.
* ``tool``: the model is offered the face tools; scored on the tool chosen (``expected_tools``), the arguments
  (validated by the registry's argument models) and whether the final answer agrees with what the tools returned.
"""

from __future__ import annotations

import random

import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Kind = Literal["mc", "attribute", "open", "tool"]
ATTRIBUTES = ("expression", "gender", "age_group", "age", "count", "same_person")
# the form a question asks its answer in ("Answer with a number."): scored as its own column
AnswerForm = Literal["number", "word", "yes_no", "letter", "free"]
SHORT_FORMS = ("number", "word", "yes_no", "letter")
LETTERS = string.ascii_uppercase


class BenchmarkError(ValueError):
    """A benchmark file or folder that cannot be read; the message says which and why."""


class EvalItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="unique within the benchmark, stable across runs (cache key)")
    kind: Kind
    question: str
    images: list[str] = Field(default_factory=list, description="image file paths, in order")
    category: str = "general"
    sub_category: str = "general"
    dataset: str = "builtin"
    # multiple choice
    options: list[str] = Field(default_factory=list)
    answer_letter: str | None = None
    # attribute / open
    attribute: str | None = None
    reference: Any = None  # the attribute's value, an age range [low, high], or the reference answer text
    keywords: list[str] = Field(default_factory=list, description="open QA rubric: words a good answer contains")
    # tool use
    expected_tools: list[str] = Field(default_factory=list, description="any of these is the right first tool")
    # prompt pieces (FaceXBench): a task description and an answer-format instruction
    context: str = ""  # text-only material shown before the question (the tool-retrieval API catalogue)
    prepend_text: str = ""
    postpend_text: str = ""
    # fairness and grounding
    groups: dict[str, str] = Field(default_factory=dict, description="demographic group per axis, from labels")
    evidence: list[dict] = Field(default_factory=list, description="labels (data_gen Label dicts) for grounding")
    analysis: dict | None = Field(default=None, description="the record's FaceAnalysis (JSON), reused by tools")
    reference_source: str = Field(default="human", description="'human', 'transform' or the model's name")
    answer_form: AnswerForm | None = Field(default=None, description="the form the question asks for (a number, "
                                           "one word, yes/no, an option letter); multiple choice: letter")
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> EvalItem:
        if self.kind == "mc":
            if self.answer_form is None:
                self.answer_form = "letter"
            if not 2 <= len(self.options) <= len(LETTERS):
                raise ValueError(f"item {self.id}: a multiple-choice item needs 2+ options, got {len(self.options)}")
            if self.answer_letter is None or self.answer_letter not in LETTERS[: len(self.options)]:
                raise ValueError(f"item {self.id}: the correct option {self.answer_letter!r} is not one of "
                                 f"{LETTERS[: len(self.options)]}")
        if self.kind == "attribute" and self.attribute not in ATTRIBUTES:
            raise ValueError(f"item {self.id}: attribute must be one of {ATTRIBUTES}, got {self.attribute!r}")
        if self.kind == "tool" and not self.expected_tools:
            raise ValueError(f"item {self.id}: a tool item needs expected_tools")
        return self

    @property
    def num_images_label(self) -> str:
        """FaceXBench's grouping by number of images: zero, single, multiple."""
        n = len(self.images) if not self.meta.get("text_only") else 0
        return "zero" if n == 0 else "single" if n == 1 else "multiple"

    @property
    def correct_option(self) -> str | None:
        if self.kind != "mc" or self.answer_letter is None:
            return None
        return self.options[LETTERS.index(self.answer_letter)]


class Benchmark(BaseModel):
    name: str
    items: list[EvalItem]
    source: str = ""
    notes: list[str] = Field(default_factory=list, description="what the report should say about the loading")
    counts: dict[str, int] = Field(default_factory=dict, description="items read, quirks and items left out")

    @model_validator(mode="after")
    def _unique(self) -> Benchmark:
        seen: set[str] = set()
        for it in self.items:
            if it.id in seen:
                raise ValueError(f"benchmark {self.name}: duplicate item id {it.id!r}")
            seen.add(it.id)
        return self

    def limit(self, n: int | None) -> Benchmark:
        """A seeded sample of ``n`` items of each category, kept in benchmark order (every category is covered).

        Not the first ``n``: a benchmark's files are often sorted (UTKFace by age), so the first items would all
        be children. Not every k-th either: categories built round-robin over classes (FER2013's 7 expressions)
        alias with the stride (20 of 350 evenly spaced items hit 2 of the 7 classes). The sample depends only on
        the category's name and items, so runs with the same ``n`` answer the same items (and share the cache).
        """
        if n is None:
            return self
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(self.items):
            groups.setdefault(f"{it.kind}:{it.category}", []).append(i)
        keep: set[int] = set()
        for key, idx in groups.items():
            rng = random.Random(f"limit:{key}:{len(idx)}")
            keep.update(idx if len(idx) <= n else rng.sample(idx, n))
        return self.model_copy(update={"items": [it for i, it in enumerate(self.items) if i in keep]})

    def check_images(self) -> None:
        missing = [p for it in self.items if not it.meta.get("text_only") for p in it.images if not Path(p).is_file()]
        if missing:
            raise BenchmarkError(f"{len(missing)} image file(s) of benchmark {self.name} are missing, "
                                 f"e.g. {missing[0]}")
