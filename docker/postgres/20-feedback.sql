-- Runs once, when the postgres service initialises its empty volume: the database the serving
-- container keeps users' feedback in (POST /feedback; CONVLENS_FEEDBACK_URL in
-- docker-compose.yml), apart from MLflow's. On a volume initialised before this file existed:
--   docker compose exec postgres sh -c 'createdb -U "$POSTGRES_USER" feedback'
CREATE DATABASE feedback;
