#!/bin/sh
# The serving container's entrypoint: the same command as `make serve`. It imports the MLflow
# champion as it is now into the BentoML store (when the store lacks that version), says which
# version it serves, then serves exactly that model. Until a champion exists it waits, so
# `docker compose up` may start serving before the first release has run.
set -eu
exec python -m pipelines.serve --host 0.0.0.0 --port "${PORT:-3000}" --wait-s "${CONVLENS_WAIT_S:-30}"
