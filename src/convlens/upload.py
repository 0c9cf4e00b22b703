"""Send what a run could not log, once its tracking server is back.

Training leaves an outbox folder (`convlens.outbox`) when the MLflow server stopped answering
for good: buffered metrics and images, and a manifest pointing at the run's evaluation and model
files. `upload` writes them into the same run, logs the model, then registers and promotes it as
training would have. Run again after a partial upload, it sends only what is still waiting.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from convlens.config import FeedbackGate
from convlens.outbox import MANIFEST, Outbox
from convlens.registry import describe, register_and_promote
from convlens.run_record import describe_run
from convlens.store import StepError, open_store
from convlens.tracking import model_dir, publish_final


def upload(folder: Path) -> str:
    """Upload one outbox folder; returns a line saying what was done."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        if (folder.parent / f"{folder.name}.uploaded").is_dir():
            return f"nothing to upload: {folder} was already uploaded"
        raise StepError(f"{folder} holds no {MANIFEST}: pass the mlflow-outbox folder of a run")
    manifest = json.loads(manifest_path.read_text())
    client = open_store(manifest["tracking_uri"])
    run_id = manifest["run_id"]

    box = Outbox.load(folder)
    waiting = len(box)
    box.deliver(client, run_id)
    model_uri = publish_final(manifest["tracking_uri"], run_id, Path(manifest["final_dir"]))
    client.set_terminated(run_id, "FINISHED")
    line = f"run {run_id}: wrote {waiting} buffered values, the evaluation and the model"

    registry = manifest["registry"]
    registration = None
    if registry.get("enabled", True):
        registration = register_and_promote(
            client,
            registry["name"],
            run_id,
            model_uri,
            manifest["test_acc"],
            manifest["weights_sha256"],
            registry["promote"],
            gate=FeedbackGate.of(registry),
        )
        line += f"\n{describe(registration)}"
    model = model_dir(manifest["final_dir"])
    epochs = manifest.get("epochs", 0)
    describe_run(client, run_id, model, epochs, manifest["test_acc"], registration)
    shutil.move(folder, folder.parent / f"{folder.name}.uploaded")
    return line
