"""The feedback store as files a person or another tool can read: images, digits, a manifest.

    DIR/images/<sha256>.<png|jpg|bmp|gif|webp>   the bytes each user sent, unchanged
    DIR/digits/<sha256>.png                      the 28x28 digit the model saw
    DIR/manifest.jsonl                           one JSON object a row: labels, model, times

Exporting again into the same folder rewrites the same files (they are named by sha256) and
the manifest, so the folder mirrors the store as it is now, less rows deleted since.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from convlens import UserError
from convlens.feedback import FeedbackStore, Record
from convlens.images import FORMATS

MANIFEST = "manifest.jsonl"
EXTENSIONS = {"JPEG": "jpg"}


@dataclass(frozen=True)
class Exported:
    folder: Path
    rows: int
    manifest: Path


def extension(original: bytes) -> str:
    """The file extension of an uploaded image, from its header (`bin` if unreadable)."""
    try:
        with Image.open(io.BytesIO(original), formats=FORMATS) as image:
            kind = str(image.format)
    except Exception:  # stored before a check, or a format Pillow cannot name: keep the bytes
        return "bin"
    return EXTENSIONS.get(kind, kind.lower())


def manifest_row(record: Record, image: str, digit: str) -> dict[str, object]:
    return {
        "sha256": record.sha256,
        "label": record.label,
        "predicted": record.predicted,
        "agreed": record.agreed,
        "model_version": record.model_version,
        "created_at": record.created_at.isoformat(),
        "updated_at": record.updated_at.isoformat(),
        "image": image,
        "digit": digit,
    }


def export(store: FeedbackStore, folder: Path) -> Exported:
    """Write every row of `store` under `folder` (created if missing)."""
    folder = Path(folder)
    try:
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "digits").mkdir(exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write the export to {folder}: {error.strerror}") from None
    records = store.records()
    lines = []
    try:
        for record in records:
            image = f"images/{record.sha256}.{extension(record.image)}"
            digit = f"digits/{record.sha256}.png"
            (folder / image).write_bytes(record.image)
            Image.fromarray(record.digit, mode="L").save(folder / digit)
            lines.append(json.dumps(manifest_row(record, image, digit)))
        manifest = folder / MANIFEST
        manifest.write_text("".join(f"{line}\n" for line in lines))
    except OSError as error:
        raise UserError(f"cannot write the export to {folder}: {error.strerror}") from None
    return Exported(folder=folder, rows=len(records), manifest=manifest)
