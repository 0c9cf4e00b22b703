"""The search space in Hydra's override syntax becomes Optuna distributions, layers by name;
`make sweep-ui` shows the study of the sweep's storage. No training here."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from playwright.sync_api import sync_playwright

from convlens.config import ConfigError, compose
from convlens.sweep_space import distribution, search_space, split_overrides, trial_overrides
from tests.harness import ServerProcess, free_port
from tests.test_pipelines import run_module
from tests.ui_fixtures import needs_chromium
from tests.ui_screenshot import launch


def test_choice_range_and_log_interval_become_optuna_distributions():
    assert distribution("a", "choice(32, 64, 128)") == CategoricalDistribution([32, 64, 128])
    assert distribution("a", "range(8, 65, 8)") == IntDistribution(8, 64, step=8)
    assert distribution("a", "tag(log, interval(3e-4, 1e-2))") == FloatDistribution(
        3e-4, 1e-2, log=True
    )
    assert distribution("a", "interval(1, 4)") == FloatDistribution(1.0, 4.0)


@pytest.mark.parametrize("expression", ["3e-4", "choice(", "tag(log, choice(1, 2))"])
def test_a_value_that_is_no_range_is_a_config_error_naming_the_setting(expression):
    with pytest.raises(ConfigError, match=r"sweep\.params\.optimizer\.lr"):
        distribution("optimizer.lr", expression)


@pytest.mark.parametrize(("model", "index"), [("mnist_cnn", 5), ("keras_example", 6)])
def test_layers_are_named_and_resolved_to_the_models_own_position(model, index):
    space = {
        "model.layers.conv1.out_channels": "choice(8, 16)",
        "model.layers.fc1.out_features": "choice(32, 64)",
    }
    [conv1, fc1] = search_space(space, compose([f"model={model}"]).model)
    assert conv1.key == "model.layers.0.out_channels"
    assert fc1.key == f"model.layers.{index}.out_features"
    assert conv1.override(16) == "model.layers.0.out_channels=16"


def test_a_layer_the_model_lacks_is_an_error_listing_its_layers():
    cfg = compose(["model=mnist_cnn"])
    with pytest.raises(ConfigError, match="no layer 'conv3'.*conv1, pool1, conv2"):
        search_space({"model.layers.conv3.out_channels": "choice(8, 16)"}, cfg.model)


def test_the_shipped_search_space_names_layers_not_positions():
    cfg = compose(["hparams_search=mnist_optuna"])
    names = list(cfg.sweep.params)
    assert "model.layers.conv1.out_channels" in names
    assert not [n for n in names if n.split(".")[2:3] and n.split(".")[2].isdigit()]
    space = search_space(cfg.sweep.params, cfg.model)
    assert [d.key for d in space][-2:] == [
        "model.layers.0.out_channels",
        "model.layers.2.out_channels",
    ]


def test_sampled_values_become_overrides_that_compose_to_those_values():
    cfg = compose(["hparams_search=mnist_optuna"])
    space = search_space(cfg.sweep.params, cfg.model)
    values = {
        "optimizer.lr": 0.00123,
        "data.batch_size": 64,
        "model.layers.conv1.out_channels": 16,
        "model.layers.conv2.out_channels": 128,
    }
    rerun = compose(["hparams_search=mnist_optuna", *trial_overrides(space, values)])
    assert rerun.optimizer.lr == 0.00123 and rerun.data.batch_size == 64
    assert [rerun.model.layers[i].out_channels for i in (0, 2)] == [16, 128]


def test_sweep_overrides_on_the_command_line_join_the_space():
    fixed, swept = split_overrides(["data.subset=500", "data.batch_size=choice(64,128)"])
    assert fixed == ["data.subset=500"]
    assert swept == {"data.batch_size": "choice(64,128)"}


# --- make sweep-ui: optuna-dashboard on the sweep's storage, in a real Chromium ---------------

SEARCH = "hparams_search=mnist_optuna"


@needs_chromium
def test_the_dashboard_shows_the_study_the_sweep_storage_holds(tmp_path):
    # What `make sweep-ui` asks for: the storage URL the sweep config resolves to here.
    printed = run_module(
        tmp_path, "pipelines.sweep", "--storage-url", "hparams_search=mnist_optuna"
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    storage = printed.stdout.strip()
    assert storage == f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="convlens-mnist", storage=storage, direction="maximize")
    study.optimize(lambda t: t.suggest_float("optimizer.lr", 1e-4, 1e-2, log=True), n_trials=3)
    port = free_port()
    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    with (
        ServerProcess(
            [dashboard, "--port", str(port), storage],
            log=tmp_path / "dashboard.log",
            ready_url=f"http://127.0.0.1:{port}/dashboard",
            timeout_s=300,
        ),
        sync_playwright() as playwright,
    ):
        browser = launch(playwright)
        page = browser.new_page()
        page.set_default_timeout(120_000)
        page.goto(f"http://127.0.0.1:{port}/dashboard")
        page.get_by_text("convlens-mnist").first.wait_for()
        assert "Direction: MAXIMIZE" in page.content()
        page.get_by_text("convlens-mnist").first.click()
        page.get_by_text("optimizer.lr").first.wait_for()
        browser.close()
