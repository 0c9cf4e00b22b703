-- Runs once, when the postgres service initialises its empty volume: the database MLflow's
-- basic-auth app keeps its users and permissions in, beside the tracking store's own database.
CREATE DATABASE mlflow_auth;
