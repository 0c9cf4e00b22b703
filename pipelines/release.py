"""`make release`: train, evaluate, register, promote if better, package the champion.

    python -m pipelines.release [hydra overrides]    e.g. experiment=fast trainer.max_epochs=3

The same Hydra config and overrides as `pipelines.train`, then one step after another
(`convlens.release`):

1. train     fit, test the best checkpoint, log the model
2. evaluate  test the *logged* model on the configured test set
3. register  register the model version (registry.enabled)
4. promote   move `@champion` only if the policy says so (registry.promote: better by default)
5. package   the champion into the BentoML model store, then a Bento; skipped when the
             champion did not change (no new champion, no new Bento)

Each step can run alone (`python -m pipelines.evaluate|register|package`) with the same
overrides. Works against the local sqlite store or a tracking server (MLFLOW_TRACKING_URI).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from convlens.cli import errors_as_lines
from convlens.config import Settings
from convlens.console import quiet_console
from convlens.reachability import check_reachable
from convlens.release import STEPS, release


def say(number: int, step: str, text: str) -> None:
    print(f"[{number}/{STEPS}] {step:<9} {text}", flush=True)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    quiet_console()  # third-party chatter to the log file only
    with errors_as_lines():
        found = Settings.of(cfg)  # a bad promotion policy fails before training
        check_reachable(found.tracking_uri)  # seconds, before the heavy imports
        release(cfg, found, say)


if __name__ == "__main__":
    main()
