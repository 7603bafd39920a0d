"""The SQLite gallery: enrol / list / rename / remove / identify with real photos, and its robustness."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from facellm.tools.gallery import Gallery, GalleryError, default_path, validate_name
from facellm.tools.image_io import load_image
from facellm.tools.photos import photo
from facellm.tools.recognizer import NoFaceError, get_recognizer


@pytest.fixture()
def gallery(tmp_path) -> Gallery:
    return Gallery(tmp_path / "g.sqlite", recognizer=get_recognizer())


def _rows(path) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT person_id, vector, image_sha256 FROM embeddings ORDER BY id").fetchall()
    finally:
        con.close()


def test_round_trip(gallery):
    astronaut = load_image(photo("astronaut"))
    r = gallery.enroll("Eileen", astronaut, astronaut.rgb[:, ::-1].copy())
    assert (r.added, r.total, r.warnings) == (2, 2, [])
    assert gallery.enroll("eileen", photo("astronaut")).already_enrolled == 1  # names are case-blind
    gallery.enroll("Grace", [photo("grace_hopper")])
    assert [(p.name, p.embeddings) for p in gallery.list()] == [("Eileen", 2), ("Grace", 1)]

    res = gallery.identify(photo("grace_hopper"))
    assert res.known and res.name == "Grace" and res.matches[0].distance < 1e-4
    assert [m.name for m in res.matches] == ["Grace", "Eileen"] and not res.matches[1].within_threshold
    assert gallery.identify(astronaut.rgb[:, ::-1].copy(), top_k=1).name == "Eileen"

    gallery.rename("eileen", "Eileen Collins")
    assert gallery.identify(astronaut).name == "Eileen Collins"
    assert "EILEEN COLLINS" in gallery and "Eileen" not in gallery
    assert gallery.remove("Grace") == 1
    assert [p.name for p in gallery.list()] == ["Eileen Collins"]
    assert gallery.identify(photo("grace_hopper")).name == "unknown"


def test_unknown_people_are_unknown(gallery):
    gallery.enroll("Eileen", photo("astronaut"))
    gallery.enroll("Grace", photo("grace_hopper"))
    for query in (photo("tom_hanks"), photo("camera")):
        res = gallery.identify(query)
        assert res.name == "unknown" and not res.known and res.similarity < 0.5
        assert {m.name for m in res.matches} == {"Eileen", "Grace"}  # only ever enrolled people
    empty = Gallery(gallery.path.with_name("empty.sqlite"))
    assert empty.identify(photo("astronaut")).matches == []


def test_group_photos_need_a_face_id(gallery):
    with pytest.raises(GalleryError, match="shows 6 faces; pass face_id"):
        gallery.enroll("Someone", photo("group"))
    with pytest.raises(GalleryError, match="face_id=7 does not exist"):
        gallery.enroll("Someone", photo("group"), face_id=7)
    gallery.enroll("Third", photo("group"), face_id=3)
    names = [r.name for r in gallery.identify_all(photo("group"))]
    assert names == ["unknown", "unknown", "Third", "unknown", "unknown", "unknown"]
    assert gallery.identify(photo("group"), face_id=3).name == "Third"
    with pytest.raises(GalleryError, match="already enrolled as 'Third'"):
        gallery.enroll("Other", photo("group"), face_id=3)
    with pytest.raises(GalleryError, match="no face"):
        gallery.enroll("Mask", photo("mask_white"))
    with pytest.raises(NoFaceError):
        gallery.identify(photo("mask_blue"))


def test_a_photo_of_someone_else_is_flagged(gallery):
    gallery.enroll("Eileen", photo("astronaut"))
    r = gallery.enroll("Eileen", photo("grace_hopper"))
    assert r.added == 1 and len(r.warnings) == 1 and "looks unlike" in r.warnings[0]


@pytest.mark.parametrize("bad", ["", "   ", "x" * 101, "a\nb", "tab\there", "zero\u200bwidth", "Unknown", None])
def test_bad_names_are_refused(gallery, bad):
    with pytest.raises(GalleryError):
        gallery.enroll(bad, photo("astronaut"))
    assert gallery.list() == []


def test_names_are_normalised():
    assert validate_name("  Zoë  ") == "Zoë" == validate_name("Zoe\u0308")
    assert validate_name("李小龍") == "李小龍"


def test_a_bad_photo_fails_the_whole_enrolment_and_loses_nothing(gallery):
    gallery.enroll("Eileen", photo("astronaut"))
    before_list, before_rows = gallery.list(), _rows(gallery.path)
    good = photo("grace_hopper").read_bytes()
    for bad in (good[: len(good) // 3], b"this is not an image", b""):
        with pytest.raises(GalleryError, match="photo 2 could not be read"):
            gallery.enroll("Grace", good, bad)
        with pytest.raises(GalleryError):
            gallery.enroll("Eileen", load_image(photo("astronaut")).rgb[:, ::-1].copy(), bad)
    assert gallery.list() == before_list and _rows(gallery.path) == before_rows
    assert "Grace" not in gallery


def test_embeddings_in_and_out(gallery):
    rec = get_recognizer()
    e = rec.embed(photo("astronaut"))
    gallery.enroll_embedding("Eileen", e, image_sha256="0" * 64, source="precomputed")
    res = gallery.identify(e + 0.01)
    assert res.name == "Eileen" and res.box is None
    with pytest.raises(ValueError):
        gallery.identify(np.zeros(10))


def test_rename_and_remove_errors(gallery):
    gallery.enroll("Eileen", photo("astronaut"))
    gallery.enroll("Grace", photo("grace_hopper"))
    with pytest.raises(GalleryError, match="already enrolled"):
        gallery.rename("Eileen", "grace")
    with pytest.raises(GalleryError, match="nobody named"):
        gallery.rename("Nobody", "X")
    with pytest.raises(GalleryError, match="nobody named"):
        gallery.remove("Nobody")
    gallery.rename("Eileen", "EILEEN")  # a change of case only is fine
    assert [p.name for p in gallery.list()] == ["EILEEN", "Grace"]


def test_default_path_and_schema_guards(tmp_path, monkeypatch):
    monkeypatch.setenv("FACELLM_HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / "gallery.sqlite"
    g = Gallery()
    assert g.path.is_file()
    con = sqlite3.connect(g.path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    con.execute("INSERT INTO schema_version VALUES (99, 'later')")
    con.commit()
    con.close()
    with pytest.raises(GalleryError, match="newer"):
        Gallery(g.path)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(GalleryError, match="not a usable gallery"):
        Gallery(junk)


_WORKER = textwrap.dedent("""
    import io, pathlib, sys, time
    from PIL import Image
    from facellm.tools.gallery import Gallery
    from facellm.tools.photos import photo
    from facellm.tools.recognizer import get_recognizer

    db, tag, which, sync = sys.argv[1:5]
    get_recognizer().embed(photo(which))  # load the models before the race starts
    img = Image.open(photo(which)).convert("RGB")
    variants = []
    for q in range(60, 100, 5):  # 8 distinct real photos of one person (JPEG re-encodes)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=q)
        variants.append(buf.getvalue())
    pathlib.Path(sync, tag + ".ready").touch()
    while not pathlib.Path(sync, "go").exists():
        time.sleep(0.005)
    g = Gallery(db)  # both processes create the schema at the same moment
    for k, data in enumerate(variants):
        g.enroll(f"{tag}-{k}", data)
        g.list()
""")


def test_two_processes_enrolling_at_once_do_not_corrupt_it(tmp_path):
    db, sync = tmp_path / "shared.sqlite", tmp_path / "sync"
    sync.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(db), tag, which, str(sync)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for tag, which in (("A", "astronaut"), ("G", "grace_hopper"))]
    deadline = time.time() + 120
    while not ((sync / "A.ready").exists() and (sync / "G.ready").exists()):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    (sync / "go").touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]

    g = Gallery(db, recognizer=get_recognizer())
    people = g.list()
    assert sorted(p.name for p in people) == [f"{t}-{k}" for t in "AG" for k in range(8)]
    assert all(p.embeddings == 1 for p in people)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1
    con.close()
    assert g.identify(photo("grace_hopper")).name.startswith("G-")
    assert g.identify(photo("astronaut")).name.startswith("A-")
