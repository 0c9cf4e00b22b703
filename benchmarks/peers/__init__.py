"""The peers `make bench` compares the service with: the same champion behind plain FastAPI
and behind LitServe (`fastapi_app.py`, `litserve_app.py`, both on `champion.py`)."""
