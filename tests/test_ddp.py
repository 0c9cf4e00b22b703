"""Distributed training on CPU: two processes, one MLflow run, one registered model."""

import pytest
from mlflow import MlflowClient

from tests.conftest import MODEL_NAME, run_train, with_store


@pytest.fixture(scope="module")
def ddp_store(tmp_path_factory, mnist_root):
    workdir = with_store(tmp_path_factory.mktemp("ddp"))
    result = run_train(
        workdir,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "experiment=smoke",
        "data.subset=1000",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return MlflowClient(f"sqlite:///{workdir}/mlflow.db"), result


def runs(client):
    experiment = client.get_experiment_by_name("convlens-mnist")
    return client.search_runs([experiment.experiment_id])


def test_two_process_ddp_produces_exactly_one_run(ddp_store):
    client, _ = ddp_store
    assert len(runs(client)) == 1
    assert runs(client)[0].info.status == "FINISHED"


def test_two_process_ddp_logs_one_set_of_images(ddp_store):
    client, _ = ddp_store
    run_id = runs(client)[0].info.run_id
    names = [a.path for a in client.list_artifacts(run_id, "images")]
    filters = [n for n in names if "filters~conv1+step+1+" in n and not n.endswith(".webp")]
    assert len(filters) == 1


def test_two_process_ddp_registers_one_version(ddp_store):
    client, _ = ddp_store
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert len(versions) == 1


def test_two_process_ddp_uses_both_processes(ddp_store):
    client, _ = ddp_store
    run = runs(client)[0]
    assert run.data.params["devices"] == "2"
    assert run.data.params["strategy"] == "ddp"
