"""The feedback store (`convlens.feedback`) on a real SQLite file and a real PostgreSQL, and
`make feedback` (`python -m pipelines.feedback`) on it.

The store's promises: one row per image (its sha256), the newest label winning on a re-send;
bad input refused with nothing written; a database that is down, read-only or full reported
as `FeedbackUnavailable` (the service's 503) with what was stored before intact; rows that
outlive the process that wrote them.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sqlalchemy import event

from convlens.config import compose
from convlens.feedback import (
    FeedbackStore,
    FeedbackUnavailable,
    InvalidFeedback,
    default_url,
    sha256_of,
)
from serving.settings import feedback_url_from
from tests.conftest import REPO
from tests.postgres_cluster import PASSWORD
from tests.test_pipelines import assert_one_line_error, run_module

pytest_plugins = ["tests.postgres_cluster"]  # the `cluster` fixture

DATABASES = itertools.count()  # a fresh PostgreSQL database per test


def upload(seed: int, size: int = 40) -> bytes:
    """A distinct PNG per seed, as a user's upload would be."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def digit(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    """A fresh, empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    cluster = request.getfixturevalue("cluster")
    return cluster.create_database(f"feedback_{next(DATABASES)}")


@pytest.fixture
def store(url: str) -> Iterator[FeedbackStore]:
    opened = FeedbackStore(url)
    try:
        yield opened
    finally:
        opened.close()


# ------------------------------------------------------------------ what is kept


def test_a_new_image_is_kept_whole(store):
    sha, created = store.add(upload(1), digit(1), 3, 5, "7")
    assert created and sha == sha256_of(upload(1))
    record = store.get(sha)
    assert record.image == upload(1)
    assert np.array_equal(record.digit, digit(1)) and record.digit.dtype == np.uint8
    assert (record.label, record.predicted, record.model_version) == (3, 5, "7")
    assert record.agreed is False
    assert record.created_at == record.updated_at and record.created_at.tzinfo is not None


def test_the_same_image_again_is_the_same_row(store):
    first = store.add(upload(2), digit(2), 4, 4, "7")
    again = store.add(upload(2), digit(2), 4, 4, "7")
    assert first == (again[0], True) and again[1] is False
    assert store.counts() == {4: 1}
    assert store.get(first[0]).updated_at == store.get(first[0]).created_at


def test_a_resend_with_another_label_replaces_the_label(store):
    sha, _ = store.add(upload(3), digit(3), 1, 7, "7")
    assert store.add(upload(3), digit(3), 2, 7, "8") == (sha, False)
    record = store.get(sha)
    assert (record.label, record.model_version) == (2, "8")
    assert record.updated_at > record.created_at
    assert store.counts() == {2: 1}


def test_counts_and_examples_are_per_row(store):
    for seed, label in enumerate([0, 9, 9, 5, 9]):
        store.add(upload(seed), digit(seed), label, None, None)
    assert store.counts() == {0: 1, 5: 1, 9: 3}
    examples = store.examples()
    assert [example.sha256 for example in examples] == sorted(
        sha256_of(upload(s)) for s in range(5)
    )
    by_sha = {example.sha256: example for example in examples}
    for seed, label in enumerate([0, 9, 9, 5, 9]):
        example = by_sha[sha256_of(upload(seed))]
        assert example.label == label and np.array_equal(example.digit, digit(seed))


def test_agreement_counts_rows_with_a_prediction(store):
    store.add(upload(1), digit(1), 3, 3, "1")
    store.add(upload(2), digit(2), 3, 8, "1")
    store.add(upload(3), digit(3), 3, None, None)
    assert store.agreement() == (1, 2)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("label", [-1, 10, 3.0, True, "3", None])
def test_a_label_that_is_not_a_digit_is_refused(store, label):
    with pytest.raises(InvalidFeedback, match="label must be a digit 0-9"):
        store.add(upload(1), digit(1), label, None, None)
    assert store.counts() == {}


@pytest.mark.parametrize(
    "pixels", [np.zeros((28, 27), np.uint8), np.zeros((28, 28), np.float32), np.zeros(784)]
)
def test_a_digit_that_is_not_28x28_uint8_is_refused(store, pixels):
    with pytest.raises(InvalidFeedback, match=r"\(28, 28\) uint8"):
        store.add(upload(1), pixels, 1, None, None)
    assert store.counts() == {}


def test_an_empty_image_and_a_prediction_out_of_range_are_refused(store):
    with pytest.raises(InvalidFeedback, match="empty"):
        store.add(b"", digit(1), 1, None, None)
    with pytest.raises(InvalidFeedback, match="prediction must be a digit"):
        store.add(upload(1), digit(1), 1, 11, None)
    assert store.counts() == {}


# ------------------------------------------------------------------ restarts and outages


def test_rows_outlive_the_store_that_wrote_them(url):
    writer = FeedbackStore(url)
    sha, _ = writer.add(upload(4), digit(4), 6, 0, "3")
    writer.close()
    reader = FeedbackStore(url)
    try:
        assert reader.counts() == {6: 1}
        assert reader.add(upload(4), digit(4), 6, 0, "3") == (sha, False)
    finally:
        reader.close()


def test_a_stopped_postgres_is_unavailable_and_loses_nothing(cluster):
    store = FeedbackStore(cluster.create_database("feedback_outage"))
    store.add(upload(1), digit(1), 1, 1, "1")
    cluster.stop()
    try:
        with pytest.raises(FeedbackUnavailable, match="unavailable: .*(refused|terminat|closed)"):
            store.add(upload(2), digit(2), 2, 2, "1")
        with pytest.raises(FeedbackUnavailable):
            store.counts()
    finally:
        cluster.start()
    assert store.counts() == {1: 1}  # the pool reconnects: no restart of the store needed
    assert store.add(upload(2), digit(2), 2, 2, "1")[1] is True
    assert store.counts() == {1: 1, 2: 1}
    store.close()


def test_the_password_is_shown_nowhere(cluster):
    url = cluster.create_database("feedback_secret")
    store = FeedbackStore(url)
    assert PASSWORD not in repr(store) and PASSWORD not in store.url_shown
    store.close()
    with pytest.raises(FeedbackUnavailable, match="password authentication failed") as raised:
        FeedbackStore(url.replace(PASSWORD, "Wr0ng-s3cret"))
    assert "Wr0ng-s3cret" not in str(raised.value)


def test_a_full_sqlite_database_is_unavailable_and_keeps_its_rows(tmp_path):
    """SQLite's own SQLITE_FULL ("database or disk is full"), reached by capping the file's
    pages (max_page_count) just above what it holds: what a full disk makes SQLite answer."""
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = FeedbackStore(url)
    store.add(upload(1), digit(1), 1, 1, "1")

    @event.listens_for(store.engine, "connect")
    def cap_pages(connection, _record) -> None:
        pages = connection.execute("PRAGMA page_count").fetchone()[0]
        connection.execute(f"PRAGMA max_page_count = {pages}")

    store.engine.dispose()  # new connections, capped
    with pytest.raises(FeedbackUnavailable, match="the disk is full"):
        store.add(upload(2, size=300), digit(2), 2, 2, "1")
    store.close()
    reopened = FeedbackStore(url)
    assert reopened.counts() == {1: 1}
    reopened.close()


def test_a_read_only_sqlite_database_is_unavailable(tmp_path):
    path = tmp_path / "feedback.db"
    FeedbackStore(f"sqlite:///{path}").add(upload(1), digit(1), 1, 1, "1")
    store = FeedbackStore(f"sqlite:///file:{path}?mode=ro&uri=true")
    assert store.counts() == {1: 1}
    with pytest.raises(FeedbackUnavailable, match="read-only"):
        store.add(upload(2), digit(2), 2, 2, "1")
    assert store.counts() == {1: 1}


def test_a_folder_that_cannot_be_created_is_unavailable():
    with pytest.raises(FeedbackUnavailable, match="folder cannot be created"):
        FeedbackStore("sqlite:////proc/convlens/feedback.db")


def test_a_url_that_is_not_a_database_url_is_refused():
    with pytest.raises(InvalidFeedback, match="not an SQLAlchemy database URL"):
        FeedbackStore("not a url")


# ------------------------------------------------------------------ where it lives


def test_the_cli_and_the_service_default_to_the_same_file(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVLENS_FEEDBACK_URL", raising=False)
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    expected = default_url(tmp_path)
    assert compose().paths.feedback_url == expected == f"sqlite:///{tmp_path}/feedback.db"
    assert feedback_url_from({"BENTOML_HOME": str(tmp_path)}) == expected
    monkeypatch.setenv("CONVLENS_FEEDBACK_URL", "sqlite:////elsewhere.db")
    assert compose().paths.feedback_url == "sqlite:////elsewhere.db"
    assert feedback_url_from({"CONVLENS_FEEDBACK_URL": "sqlite:////elsewhere.db"}) == (
        "sqlite:////elsewhere.db"
    )


# ------------------------------------------------------------------ make feedback


@pytest.fixture
def filled(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = FeedbackStore(url)
    for seed, (label, predicted) in enumerate([(7, 7), (7, 1), (2, 2)]):
        store.add(upload(seed), digit(seed), label, predicted, "5")
    store.close()
    return url


def feedback_cli(tmp_path: Path, url: str, *args: str):
    env = {"CONVLENS_FEEDBACK_URL": url}
    return run_module(tmp_path, "pipelines.feedback", *args, env=env, timeout=120)


def test_the_command_lists_rows_per_label(tmp_path, filled):
    result = feedback_cli(tmp_path, filled)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "    7  2" in lines and "    2  1" in lines and "    0  0" in lines
    assert "total  3" in lines
    assert "the model was right on 2 of 3 (66.7%)" in lines


def test_export_writes_images_digits_and_a_manifest(tmp_path, filled):
    out = tmp_path / "export"
    result = feedback_cli(tmp_path, filled, "--export", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(row["label"] for row in rows) == [2, 7, 7]
    for seed in range(3):
        row = next(row for row in rows if row["sha256"] == sha256_of(upload(seed)))
        assert row["image"].endswith(".png") and (out / row["image"]).read_bytes() == upload(seed)
        assert np.array_equal(np.asarray(Image.open(out / row["digit"])), digit(seed))
        assert row["model_version"] == "5" and row["agreed"] == (row["label"] == row["predicted"])


def test_delete_removes_one_row_and_names_one_that_is_not_there(tmp_path, filled):
    sha = sha256_of(upload(0))
    result = feedback_cli(tmp_path, filled, "--delete", sha)
    assert result.returncode == 0, result.stderr
    assert FeedbackStore(filled).counts() == {2: 1, 7: 1}
    again = feedback_cli(tmp_path, filled, "--delete", sha)
    assert_one_line_error(again, "no feedback row for", sha)


def test_delete_all_needs_yes(tmp_path, filled):
    refused = feedback_cli(tmp_path, filled, "--delete-all")
    assert_one_line_error(refused, "--yes")
    assert sum(FeedbackStore(filled).counts().values()) == 3
    done = feedback_cli(tmp_path, filled, "--delete-all", "--yes")
    assert done.returncode == 0 and "deleted    3 rows (all)" in done.stdout
    assert FeedbackStore(filled).counts() == {}


def test_a_bad_sha256_is_a_one_line_error(tmp_path, filled):
    assert_one_line_error(feedback_cli(tmp_path, filled, "--delete", "abc"), "sha256")


def test_a_database_that_is_down_is_a_one_line_error(tmp_path):
    result = feedback_cli(tmp_path, "postgresql://someone:pw@127.0.0.1:1/feedback")
    assert result.returncode == 75, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the feedback database is unavailable")


# ------------------------------------------------------------------ compose


def test_compose_keeps_feedback_in_its_own_postgres_database():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    urls = {
        name: compose[name]["environment"]["CONVLENS_FEEDBACK_URL"]
        for name in ("serving", "trainer")
    }
    assert len(set(urls.values())) == 1, urls
    url = urls["serving"]
    assert url.startswith("postgresql+psycopg2://") and "@postgres:5432/" in url
    database = url.rsplit("/", 1)[1]
    assert database not in (
        compose["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].rsplit("/", 1)[1],
        "mlflow_auth",
    )
    script = "docker/postgres/20-feedback.sql"
    assert f"CREATE DATABASE {database};" in (REPO / script).read_text()
    assert (
        f"./{script}:/docker-entrypoint-initdb.d/20-feedback.sql:ro"
        in compose["postgres"]["volumes"]
    )
    assert compose["serving"]["depends_on"]["postgres"]["condition"] == "service_healthy"
