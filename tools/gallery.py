"""A gallery of enrolled people in one SQLite file: enrol photos under a name, then identify faces.

Each enrolled photo becomes one row: the face's 128-d descriptor (see recognizer.py), the photo's SHA-256,
where it came from, the face box and the descriptor model. Identification compares a face with every row
and ranks people by their nearest row; a face farther than the verification threshold from everyone is
"unknown" — the gallery only ever names people enrolled in it.

Robustness: WAL journal, a busy timeout, and every write in one ``BEGIN IMMEDIATE`` transaction, so
several processes can enrol at once; an enrolment computes every descriptor before it writes anything, so
a bad photo fails the whole call and leaves the gallery as it was. A ``schema_version`` table records the
layout; a file from a newer version is refused rather than misread.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from .assets import home
from .image_io import ImageInput, ImageLoadError, LoadedImage, as_loaded
from .recognizer import SOURCE as DESCRIPTOR_SOURCE
from .recognizer import EMBEDDING_DIM, FaceRecognizer, NoFaceError, as_embedding, get_recognizer, main_face
from .schema import Box

SCHEMA_VERSION = 1
MAX_NAME_LENGTH = 100
UNKNOWN = "unknown"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS people (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL UNIQUE,          -- casefolded: 'Alice' and 'alice' are one person
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,                   -- float32 little-endian
    dim INTEGER NOT NULL,
    model TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    face_index INTEGER NOT NULL,            -- 1-based, left to right in that photo
    face_box TEXT NOT NULL,                 -- JSON [x1, y1, x2, y2]
    detector TEXT,
    source TEXT,                            -- the photo's path, or how it was given
    created_at TEXT NOT NULL,
    UNIQUE (image_sha256, face_index, model)
);
CREATE INDEX IF NOT EXISTS embeddings_person ON embeddings(person_id);
"""


class GalleryError(ValueError):
    """A gallery operation was refused; the message says why."""


class FaceChoiceError(GalleryError):
    """Enrolment needs one face of a photo that shows several, or the chosen face does not exist. The fields let a
    front end word the fix in its own terms (the CLI's ``--face N``, Python's ``face_id=N``)."""

    def __init__(self, message: str, *, photo: str, num_faces: int, face_id: int | None) -> None:
        super().__init__(message)
        self.photo, self.num_faces, self.face_id = photo, num_faces, face_id


class Person(BaseModel):
    name: str
    embeddings: int
    created_at: str


class EnrollResult(BaseModel):
    name: str
    added: int = Field(description="photos stored by this call")
    already_enrolled: int = Field(description="photos of this person that were stored before (skipped)")
    total: int = Field(description="photos stored for this person now")
    warnings: list[str] = Field(default_factory=list)


class Match(BaseModel):
    name: str
    distance: float = Field(description="to this person's nearest enrolled photo")
    similarity: float = Field(ge=0.0, le=1.0)
    within_threshold: bool
    photos: int


class IdentifyResult(BaseModel):
    name: str = Field(description="best match within the threshold, else 'unknown' (a model estimate)")
    known: bool
    similarity: float = Field(ge=0.0, le=1.0, description="to the best match; 0 if the gallery is empty")
    threshold: float
    matches: list[Match] = Field(description="nearest enrolled people, best first")
    box: Box | None = Field(default=None, description="the face identified (None when given an embedding)")
    source: str


def validate_name(name: object) -> str:
    """A clean person name (NFC, trimmed) or ``GalleryError``."""
    if not isinstance(name, str):
        raise GalleryError(f"a name must be text, got {type(name).__name__}")
    clean = unicodedata.normalize("NFC", name).strip()
    if not clean:
        raise GalleryError("the name is empty")
    if len(clean) > MAX_NAME_LENGTH:
        raise GalleryError(f"the name is {len(clean)} characters long; the limit is {MAX_NAME_LENGTH}")
    bad = [c for c in clean if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")]
    if bad:
        raise GalleryError(f"the name contains control or invisible characters: {[hex(ord(c)) for c in bad]}")
    if clean.casefold() == UNKNOWN:
        raise GalleryError(f"{UNKNOWN!r} is reserved for faces that match nobody")
    return clean


def default_path() -> Path:
    return home() / "gallery.sqlite"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _flatten(images: tuple) -> list:
    # enroll(name, a, b) and enroll(name, [a, b]) both work; a numpy array is one image, not a list
    if len(images) == 1 and isinstance(images[0], (list, tuple)):
        return list(images[0])
    return list(images)


class Gallery:
    """``Gallery(path)``; the file and its folder are created on first use. Safe across threads and
    processes: each call opens its own short-lived connection."""

    def __init__(self, path: str | os.PathLike | None = None, recognizer: FaceRecognizer | None = None,
                 timeout_s: float = 30.0) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._recognizer = recognizer
        self.timeout_s = timeout_s
        self._init_schema()

    @property
    def recognizer(self) -> FaceRecognizer:
        # loaded on first need: listing or renaming never loads the face models
        if self._recognizer is None:
            self._recognizer = get_recognizer()
        return self._recognizer

    # -- connection and transactions -----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses at most the last commit
        except sqlite3.DatabaseError as e:
            con.close()
            raise GalleryError(f"{self.path} is not a usable gallery database: {e}") from None
        return con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (BEGIN IMMEDIATE) so two writers queue instead of
        deadlocking; rolled back on any error."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"gallery database error at {self.path}: {e}") from e
        finally:
            con.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            yield con
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"gallery database error at {self.path}: {e}") from e
        finally:
            con.close()

    def _init_schema(self) -> None:
        con = self._connect()
        try:
            # WAL lets readers run while one process writes; switching needs a moment alone with the file
            for attempt in range(50):
                try:
                    con.execute("PRAGMA journal_mode = WAL")
                    break
                except sqlite3.OperationalError:
                    time.sleep(0.05 * (attempt + 1))
        except sqlite3.DatabaseError as e:
            raise GalleryError(f"{self.path} is not a usable gallery database: {e}") from None
        finally:
            con.close()
        with self._tx() as con:
            # statement by statement: executescript() would commit our transaction first
            for statement in filter(str.strip, _SCHEMA.split(";")):
                con.execute(statement)
            row = con.execute("SELECT MAX(version) FROM schema_version").fetchone()
            if row[0] is None:
                con.execute("INSERT INTO schema_version VALUES (?, ?)", (SCHEMA_VERSION, _now()))
            elif row[0] > SCHEMA_VERSION:
                raise GalleryError(f"{self.path} uses gallery schema {row[0]}, newer than this FaceLLM "
                                   f"understands ({SCHEMA_VERSION}); upgrade FaceLLM to use it")

    # -- enrolment -----------------------------------------------------------------------------------

    def _describe(self, k: int, image: object) -> str:
        return f"photo {k}" + (f" ({image})" if isinstance(image, (str, os.PathLike)) else "")

    def _embed_for_enrol(self, images: list, face_id: int | None) -> list[tuple[np.ndarray, str, int, Box, str, str]]:
        """(embedding, sha256, face index, box, detector, source) per photo; raises before any write."""
        out = []
        for k, image in enumerate(images, start=1):
            label = self._describe(k, image)
            try:
                img = as_loaded(image)
            except ImageLoadError as e:
                raise GalleryError(f"{label} could not be read: {e}; nothing was enrolled") from e
            dets = self.recognizer.find_faces(img)
            if not dets:
                raise GalleryError(f"no face was found in {label}; nothing was enrolled")
            if face_id is None:
                if len(dets) > 1:
                    raise FaceChoiceError(f"{label} shows {len(dets)} faces; pass face_id=1..{len(dets)} "
                                          "(left to right) to say which one to enrol; nothing was enrolled",
                                          photo=label, num_faces=len(dets), face_id=None)
                index = 1
            elif not 1 <= face_id <= len(dets):
                raise FaceChoiceError(f"{label} has {len(dets)} face(s), so face_id={face_id} does not exist; "
                                      "nothing was enrolled", photo=label, num_faces=len(dets), face_id=face_id)
            else:
                index = face_id
            det = dets[index - 1]
            vec = self.recognizer.embed(img, det)
            src = img.info.path or f"<{type(image).__name__}>"
            out.append((vec, img.info.sha256, index, det.box, det.source, src))
        return out

    def enroll(self, name: str, *images: ImageInput | LoadedImage | Sequence[ImageInput],
               face_id: int | None = None) -> EnrollResult:
        """Enrol one or more photos of one person (``enroll("Ada", "a.jpg", "b.jpg")`` or a list).

        Each photo must show exactly one face, unless ``face_id`` (1-based, left to right) picks one.
        All or nothing: if any photo fails, nothing is stored. A photo already enrolled for this person
        is skipped; one enrolled for someone else is refused.
        """
        clean = validate_name(name)
        photos = _flatten(images)
        if not photos:
            raise GalleryError("no photos were given to enrol")
        rows = self._embed_for_enrol(photos, face_id)
        result = self._store(clean, rows, self.recognizer.source)
        result.warnings = self._consistency_warnings(clean, rows)
        return result

    def _consistency_warnings(self, name: str, rows: list) -> list[str]:
        # a photo unlike all of the person's other photos is often the wrong photo: say so, but store it
        # (one person's photos decades apart can be that far apart too)
        mat, names = self._matrix(self.recognizer.source)
        mine = mat[[n.casefold() == name.casefold() for n in names]]
        out = []
        for k, (vec, sha, *_rest) in enumerate(rows, start=1):
            others = [m for m in mine if not np.array_equal(m.astype(np.float32), vec)]
            if others:
                d = float(np.min(np.linalg.norm(np.stack(others) - vec.astype(np.float64)[None], axis=1)))
                if d > self.recognizer.threshold:
                    out.append(f"photo {k} looks unlike {name}'s other photos (distance {d:.2f} > "
                               f"{self.recognizer.threshold}); check it shows the same person")
        return out

    def enroll_embedding(self, name: str, embedding: np.ndarray | Sequence[float], *, image_sha256: str,
                         face_index: int = 1, box: Box | None = None, source: str | None = None,
                         model: str | None = None) -> EnrollResult:
        """Store an already computed descriptor (e.g. from ``FaceAnalysis.faces[i].embedding``)."""
        clean = validate_name(name)
        vec = as_embedding(embedding)
        row = (vec, image_sha256, face_index, box or Box(x1=0, y1=0, x2=0, y2=0), None, source)
        # no model load just to store a vector: the descriptor's name is a constant
        return self._store(clean, [row], model or DESCRIPTOR_SOURCE)

    def _store(self, name: str, rows: list, model: str) -> EnrollResult:
        now = _now()
        added = skipped = 0
        with self._tx() as con:
            key = name.casefold()
            got = con.execute("SELECT id FROM people WHERE name_key = ?", (key,)).fetchone()
            pid = got[0] if got else con.execute(
                "INSERT INTO people (name, name_key, created_at) VALUES (?, ?, ?)", (name, key, now)).lastrowid
            for vec, sha, index, box, detector, source in rows:
                owner = con.execute(
                    "SELECT p.id, p.name FROM embeddings e JOIN people p ON p.id = e.person_id "
                    "WHERE e.image_sha256 = ? AND e.face_index = ? AND e.model = ?", (sha, index, model)).fetchone()
                if owner is not None:
                    if owner[0] != pid:
                        raise GalleryError(f"that face (photo {sha[:12]}…, face {index}) is already enrolled as "
                                           f"{owner[1]!r}; remove it there first. Nothing was enrolled")
                    skipped += 1
                    continue
                con.execute(
                    "INSERT INTO embeddings (person_id, vector, dim, model, image_sha256, face_index, face_box,"
                    " detector, source, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (pid, np.asarray(vec, dtype="<f4").tobytes(), EMBEDDING_DIM, model, sha, index,
                     json.dumps([round(v, 2) for v in box.as_list()]), detector, source, now))
                added += 1
            total = con.execute("SELECT COUNT(*) FROM embeddings WHERE person_id = ?", (pid,)).fetchone()[0]
        return EnrollResult(name=name, added=added, already_enrolled=skipped, total=total)

    # -- management ----------------------------------------------------------------------------------

    def list(self) -> list[Person]:
        """Everyone enrolled, by name, with how many photos each has."""
        with self._read() as con:
            rows = con.execute(
                "SELECT p.name, COUNT(e.id), p.created_at FROM people p LEFT JOIN embeddings e "
                "ON e.person_id = p.id GROUP BY p.id ORDER BY p.name_key").fetchall()
        return [Person(name=n, embeddings=c, created_at=t) for n, c, t in rows]

    def __contains__(self, name: str) -> bool:
        with self._read() as con:
            return con.execute("SELECT 1 FROM people WHERE name_key = ?",
                               (validate_name(name).casefold(),)).fetchone() is not None

    def rename(self, old: str, new: str) -> None:
        old_c, new_c = validate_name(old), validate_name(new)
        with self._tx() as con:
            got = con.execute("SELECT id FROM people WHERE name_key = ?", (old_c.casefold(),)).fetchone()
            if got is None:
                raise GalleryError(f"nobody named {old_c!r} is enrolled")
            clash = con.execute("SELECT id FROM people WHERE name_key = ?", (new_c.casefold(),)).fetchone()
            if clash is not None and clash[0] != got[0]:
                raise GalleryError(f"{new_c!r} is already enrolled; remove or rename that person first")
            con.execute("UPDATE people SET name = ?, name_key = ? WHERE id = ?", (new_c, new_c.casefold(), got[0]))

    def remove(self, name: str) -> int:
        """Remove a person and all their photos; returns how many photos were removed."""
        clean = validate_name(name)
        with self._tx() as con:
            got = con.execute("SELECT id FROM people WHERE name_key = ?", (clean.casefold(),)).fetchone()
            if got is None:
                raise GalleryError(f"nobody named {clean!r} is enrolled")
            n = con.execute("SELECT COUNT(*) FROM embeddings WHERE person_id = ?", (got[0],)).fetchone()[0]
            con.execute("DELETE FROM people WHERE id = ?", (got[0],))  # embeddings go by ON DELETE CASCADE
        return n

    # -- identification ------------------------------------------------------------------------------

    def _matrix(self, model: str) -> tuple[np.ndarray, list[str]]:
        with self._read() as con:
            rows = con.execute(
                "SELECT p.name, e.vector FROM embeddings e JOIN people p ON p.id = e.person_id "
                "WHERE e.model = ? AND e.dim = ?", (model, EMBEDDING_DIM)).fetchall()
        if not rows:
            return np.zeros((0, EMBEDDING_DIM)), []
        return np.stack([np.frombuffer(v, dtype="<f4") for _, v in rows]).astype(np.float64), [n for n, _ in rows]

    def _rank(self, vec: np.ndarray, top_k: int, box: Box | None) -> IdentifyResult:
        rec = self.recognizer
        mat, names = self._matrix(rec.source)
        best: dict[str, tuple[float, int]] = {}
        if names:
            dists = np.linalg.norm(mat - vec.astype(np.float64)[None], axis=1)
            for n, d in zip(names, dists):
                prev = best.get(n, (np.inf, 0))
                best[n] = (min(prev[0], float(d)), prev[1] + 1)
        ranked = sorted(best.items(), key=lambda kv: kv[1][0])[:max(1, top_k)]
        matches = [Match(name=n, distance=round(d, 6), similarity=round(rec.similarity(d), 6),
                         within_threshold=d <= rec.threshold, photos=c) for n, (d, c) in ranked]
        known = bool(matches) and matches[0].within_threshold
        return IdentifyResult(name=matches[0].name if known else UNKNOWN, known=known,
                              similarity=matches[0].similarity if matches else 0.0, threshold=rec.threshold,
                              matches=matches, box=box, source=rec.source)

    def identify(self, query: ImageInput | LoadedImage | np.ndarray | Sequence[float], top_k: int = 3,
                 face_id: int | None = None) -> IdentifyResult:
        """Who is this? ``query``: an image (its main face as ``verify`` picks it, or ``face_id`` 1-based left
        to right) or a 128-d embedding. ``matches`` holds the ``top_k`` nearest enrolled people."""
        if top_k < 1:
            raise GalleryError("top_k must be at least 1")
        if isinstance(query, (list, tuple)) or (isinstance(query, np.ndarray) and query.ndim == 1):
            return self._rank(as_embedding(query), top_k, None)
        img = as_loaded(query)  # type: ignore[arg-type]
        dets = self.recognizer.find_faces(img)
        if not dets:
            raise NoFaceError("no face was found in the image")
        if face_id is None:
            det = dets[main_face(dets, img.width, img.height)]
        elif 1 <= face_id <= len(dets):
            det = dets[face_id - 1]
        else:
            raise NoFaceError(f"the image has {len(dets)} face(s); face_id={face_id} does not exist")
        return self._rank(self.recognizer.embed(img, det), top_k, det.box)

    def identify_all(self, image: ImageInput | LoadedImage, top_k: int = 3) -> list[IdentifyResult]:
        """Identify every face in the image, left to right."""
        return [self._rank(vec, top_k, det.box) for det, vec in self.recognizer.embed_all(image)]
