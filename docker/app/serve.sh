#!/bin/sh
# The serving container's entrypoint: fetch the MLflow champion into the BentoML store (a no-op
# when it is there already), then serve exactly that model. Until a champion exists it waits,
# so `docker compose up` may start serving before the first release has run.
set -eu
wait_s="${CONVLENS_WAIT_S:-30}"
until python -m pipelines.package --no-build; do
  echo "serve.sh: nothing to serve yet; retrying in ${wait_s}s." \
       "Release a model: docker compose --profile train run --rm trainer" >&2
  sleep "$wait_s"
done
CONVLENS_MODEL="$(python -c 'from pipelines import package as p; p.use_defaults(); print(p.find_champion(p.tracking_uri(), p.registered_name()).bento_tag)')"
export CONVLENS_MODEL
echo "serve.sh: serving $CONVLENS_MODEL on port ${PORT:-3000}"
exec bentoml serve serving.service:ConvLens --working-dir /app --host 0.0.0.0 --port "${PORT:-3000}"
