"""Small data_gen-format record folders for the training tests (not a test module itself).

Records are built with data_gen's own schema (so the trainer reads exactly what data_gen writes) from the real
package photos, with short, true answers (face counts checked by eye; see tests/fixtures/photos.json).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from facellm.data_gen.schema import ImageRef, Record, turn
from facellm.tools.photos import photo

FACTS = {  # photo -> (faces, caption)
    "astronaut": (1, "One woman in a white space suit smiles at the camera in front of a flag."),
    "grace_hopper": (1, "One woman in a dark uniform with a cap looks at the camera."),
    "group": (6, "Six people stand together outdoors, most of them smiling."),
    "camera": (1, "One man holds a camera on a tripod outdoors."),
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_records(folder: Path, *, copies: int = 2, validation: tuple[str, ...] = ("camera",)) -> Path:
    """Caption, QA and instruction records for the four photos into ``folder/part-00000.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, (n, caption) in FACTS.items():
        path = photo(name)
        ref = ImageRef(path=str(path), sha256=_sha(path))
        split = "validation" if name in validation else "train"
        word = "one face" if n == 1 else f"{n} faces"
        items = [
            ("facecaption", "caption", "Describe this photo.", caption),
            ("fairfacegpt", "count", "How many faces are in this photo?", f"There {'is' if n == 1 else 'are'} {word}."),
            ("faceinstruct", "count", "Count the faces and answer with a number.", str(n)),
        ]
        for k in range(copies):
            for style, cat, q, a in items:
                rec = Record(id=f"{name}-{style}-{k}", image=ref, conversations=[turn("human", f"<image>\n{q}"),
                                                                                  turn("gpt", a)],
                             style=style, category=cat, generator="test-fixture", split=split, source="test",
                             group=name)
                lines.append(rec.model_dump_json(by_alias=True))
    (folder / "part-00000.jsonl").write_text("\n".join(lines) + "\n")
    return folder
