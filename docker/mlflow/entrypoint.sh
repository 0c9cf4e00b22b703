#!/bin/sh
# Writes the basic-auth config from the environment (configparser files cannot read it), then
# runs `mlflow server` with the arguments compose passes. The backend store URI and every
# password stay in the environment, out of the process list.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set it to postgresql+psycopg2://user:password@host/db}"
: "${MLFLOW_AUTH_DATABASE_URI:?set it to the database for users and permissions}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?set the admin password (12 characters or more)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?set a random secret for CSRF protection}"
umask 077
config="${TMPDIR:-/tmp}/basic_auth.ini"
cat > "$config" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 60
INI
export MLFLOW_AUTH_CONFIG_PATH="$config"
exec mlflow server "$@"
