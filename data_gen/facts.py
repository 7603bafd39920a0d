"""A record's labels as facts the generators may state, each with its provenance.

For each concept the human annotation wins over a model estimate (``prefer_human``); the generators phrase a
model estimate as an estimate ("appears", "the model estimates", a probability) and a human label as an
annotation. Concepts with two names (a dataset's ``gender`` vs the model's ``perceived_gender``) are read
through ``ALIASES``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import Label

# concept -> label names that express it, human names first
ALIASES = {
    "gender": ("gender", "apparent_gender", "perceived_gender"),
    "age": ("age", "age_range", "apparent_age_range", "perceived_age_range", "perceived_age"),
}
GENDER_WORDS = {"female": "female", "woman": "female", "f": "female", "male": "male", "man": "male", "m": "male"}


@dataclass
class Fact:
    name: str
    value: object
    source: str
    kind: str
    probability: float | None = None

    @property
    def is_estimate(self) -> bool:
        return self.kind == "model"


def _fact(lb: Label) -> Fact:
    return Fact(lb.name, lb.value, lb.source, lb.kind, lb.probability)


class Facts:
    def __init__(self, labels: list[Label]) -> None:
        self.labels = labels
        self.image: dict[str, list[Fact]] = {}
        self.faces: dict[int, dict[str, list[Fact]]] = {}
        for lb in labels:
            bucket = self.image if lb.face_id is None else self.faces.setdefault(lb.face_id, {})
            bucket.setdefault(lb.name, []).append(_fact(lb))
        # human first within each name
        for bucket in [self.image, *self.faces.values()]:
            for facts in bucket.values():
                facts.sort(key=lambda f: {"human": 0, "transform": 1, "model": 2}[f.kind])

    def get(self, name: str, face_id: int | None = None, *, kind: str | None = None) -> Fact | None:
        bucket = self.image if face_id is None else self.faces.get(face_id, {})
        for f in bucket.get(name, []):
            if kind is None or f.kind == kind:
                return f
        return None

    def concept(self, concept: str, face_id: int | None = None) -> Fact | None:
        """The best fact for a concept with aliases (human first), e.g. ``concept("gender", 1)``."""
        for name in ALIASES.get(concept, (concept,)):
            f = self.get(name, face_id, kind="human")
            if f is not None:
                return f
        for name in ALIASES.get(concept, (concept,)):
            f = self.get(name, face_id)
            if f is not None:
                return f
        return None

    def num_faces(self) -> Fact | None:
        return self.get("num_faces")

    @property
    def face_ids(self) -> list[int]:
        n = self.get("num_faces", kind="model")
        ids = set(self.faces)
        if n is not None and isinstance(n.value, int):
            ids |= set(range(1, n.value + 1))
        return sorted(ids)

    def transform(self, name: str) -> Fact | None:
        return self.get(name, kind="transform")

    def values(self, name: str) -> set:
        """Every value any label (any face, any provenance) gives ``name``."""
        out = set()
        for lb in self.labels:
            if lb.name == name:
                out.add(tuple(lb.value) if isinstance(lb.value, list) else lb.value)
        return out


def gender_of(value: object) -> str | None:
    return GENDER_WORDS.get(str(value).strip().lower())
