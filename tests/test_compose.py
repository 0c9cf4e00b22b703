"""docker-compose.yml checked against the repository, without a Docker daemon: every file it
names exists, its variables agree with .env.example, and it keeps the hardening rules
(loopback-only ports, pinned images, non-root users, healthchecks, secrets only from .env)."""

from __future__ import annotations

import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
VARIABLE = re.compile(
    r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
)  # ${NAME}, ${NAME:-default}, ${NAME:?error}; not $${...}
ONE_SHOT = {"minio-bucket", "trainer", "trainer-gpu"}  # run to completion, never restarted
PUBLISHED = {"serving"}  # the prediction service; the MLflow UI only with the opt-in file
UI_FILE = REPO / "docker" / "compose.mlflow-ui.yml"


def compose_text() -> str:
    """Both compose files' text, for the variables and secrets they mention."""
    return COMPOSE_FILE.read_text() + UI_FILE.read_text()


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict]:
    return compose()["services"]


def long_running() -> list[str]:
    return [name for name in services() if name not in ONE_SHOT]


def env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def build_of(service: dict) -> tuple[Path, Path] | None:
    """(context folder, Dockerfile) of a service built from the repository, else None."""
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        build = {"context": build}
    context = (REPO / build.get("context", ".")).resolve()
    return context, context / build.get("dockerfile", "Dockerfile")


def dockerfiles() -> list[Path]:
    return sorted({build[1] for s in services().values() if (build := build_of(s))})


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stage_of(dockerfile: Path, target: str | None) -> list[tuple[str, str]]:
    """The instructions that build `target` (its stage and the stages it is FROM)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    parents: dict[str, str] = {}
    current = None
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            words = rest.split()
            current = words[-1] if "AS" in (w.upper() for w in words) else f"#{len(stages)}"
            stages[current] = []
            parents[current] = words[0]
        elif current is not None:
            stages[current].append((keyword, rest))
    name = target or list(stages)[-1]
    chain = []
    while name in stages:
        chain = stages[name] + chain
        name = parents[name]
    return chain


def image_reference_is_pinned(image: str) -> bool:
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    return bool(tag) and tag != "latest" and bool(name)


# --- the file itself ------------------------------------------------------------------------


def test_compose_has_the_expected_services():
    assert set(services()) == {
        "postgres",
        "minio",
        "minio-bucket",
        "mlflow",
        "trainer",
        "trainer-gpu",
        "serving",
    }


def test_every_named_volume_is_declared():
    declared = set(compose().get("volumes") or {})
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source!r} is not declared"


# --- files it refers to ---------------------------------------------------------------------


def test_every_build_context_and_dockerfile_exists():
    for name, service in services().items():
        if build := build_of(service):
            context, dockerfile = build
            assert context.is_dir(), f"{name}: no build context {context}"
            assert dockerfile.is_file(), f"{name}: no Dockerfile {dockerfile}"


def test_every_bind_mounted_file_exists():
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: bind mount {source} does not exist"


def test_every_file_a_dockerfile_copies_exists_in_its_context():
    builds = {build for s in services().values() if (build := build_of(s))}
    for context, dockerfile in builds:
        for keyword, rest in instructions(dockerfile):
            if keyword != "COPY" or "--from=" in rest:
                continue
            for source in [w for w in shlex.split(rest) if not w.startswith("--")][:-1]:
                assert (context / source).exists(), f"{dockerfile}: COPY {source} is missing"


def test_dockerignore_lets_through_what_the_app_image_copies():
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    copied = [
        source
        for keyword, rest in instructions(REPO / "docker" / "app" / "Dockerfile")
        if keyword == "COPY" and "--from=" not in rest
        for source in [w for w in shlex.split(rest) if not w.startswith("--")][:-1]
    ]
    for source in copied:
        source = source.rstrip("/").removeprefix("./")
        assert any(source == a or source.startswith(a + "/") for a in allowed), source


def test_entrypoint_scripts_are_executable_posix_shell():
    scripts = [REPO / "docker" / "app" / "serve.sh", REPO / "docker" / "mlflow" / "entrypoint.sh"]
    for script in scripts:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        subprocess.run(["sh", "-n", str(script)], check=True)


def test_trainer_runs_the_release_pipeline_with_existing_configs():
    entrypoint = dict(stage_of(REPO / "docker" / "app" / "Dockerfile", "trainer"))["ENTRYPOINT"]
    module = yaml.safe_load(entrypoint)[-1]
    assert (REPO / Path(*module.split("."))).with_suffix(".py").is_file()
    for name in ("trainer", "trainer-gpu"):
        for override in services()[name]["command"]:
            group, _, choice = override.partition("=")
            assert (REPO / "conf" / group / f"{choice}.yaml").is_file(), override


def test_serving_entrypoint_serves_the_bentoml_service():
    from convlens.packaging import SERVICE

    module, _, name = SERVICE.partition(":")
    source = (REPO / Path(*module.split("."))).with_suffix(".py").read_text()
    assert f"class {name}" in source
    script = (REPO / "docker" / "app" / "serve.sh").read_text()
    assert "python -m pipelines.serve" in script and (REPO / "pipelines" / "serve.py").is_file()


def test_serving_container_and_make_serve_run_the_same_command():
    """One code path decides what is served: the container's entrypoint is `make serve`'s."""
    makefile = (REPO / "Makefile").read_text()
    serve = re.search(r"^serve:.*\n\t(.*)$", makefile, re.MULTILINE).group(1)
    assert "python -m pipelines.serve" in serve
    script = (REPO / "docker" / "app" / "serve.sh").read_text()
    assert re.search(r"^exec python -m pipelines\.serve ", script, re.MULTILINE)


def test_make_targets_drive_the_compose_stack():
    makefile = (REPO / "Makefile").read_text()
    for target in ("up", "up-train", "down"):
        recipe = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
        assert recipe, f"no make target {target}"
        assert "$(COMPOSE)" in recipe.group(1)
    assert re.search(r"^COMPOSE \?= docker compose$", makefile, re.MULTILINE)


# --- variables and secrets ------------------------------------------------------------------


def test_every_variable_compose_uses_is_in_env_example():
    missing = {m.group(1) for m in VARIABLE.finditer(compose_text())} - set(env_example())
    assert not missing, f"not in .env.example: {sorted(missing)}"


def test_every_env_example_variable_is_used():
    used = {m.group(1) for m in VARIABLE.finditer(compose_text())}
    assert set(env_example()) <= used, sorted(set(env_example()) - used)


def test_secrets_are_required_never_defaulted():
    for match in VARIABLE.finditer(compose_text()):
        name, operator = match.group(1), match.group(2)
        if re.search(r"PASSWORD|SECRET|_USER$", name):
            assert operator == ":?", f"${{{name}}} must fail fast when unset: ${{{name}:?...}}"


def test_env_example_holds_placeholders_only():
    for key, value in env_example().items():
        if re.search(r"PASSWORD|SECRET", key):
            assert value.startswith("change-me"), f"{key} must be a change-me placeholder"


def test_env_file_is_git_ignored():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0


def test_no_secret_is_written_into_the_compose_file():
    for name, service in services().items():
        environment = service.get("environment") or {}
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|AWS_SECRET", key):
                assert str(value).startswith("${"), f"{name}: {key} is not taken from .env"


# --- hardening ------------------------------------------------------------------------------


def test_published_ports_bind_to_loopback():
    for name, service in services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not on 127.0.0.1"


def test_only_the_service_is_published_by_default():
    assert {name for name, s in services().items() if s.get("ports")} == PUBLISHED


def test_the_opt_in_ui_file_publishes_only_mlflow_on_loopback():
    opt_in = yaml.safe_load(UI_FILE.read_text())["services"]
    assert set(opt_in) == {"mlflow"}
    assert all(str(p).startswith("127.0.0.1:") for p in opt_in["mlflow"]["ports"])
    assert "-f docker/compose.mlflow-ui.yml" in (REPO / "Makefile").read_text()


def test_images_are_pinned_to_versions():
    for name, service in services().items():
        if "image" in service:
            assert image_reference_is_pinned(service["image"]), f"{name}: {service['image']}"


def test_dockerfile_base_images_are_pinned():
    for dockerfile in dockerfiles():
        froms = [rest.split() for kw, rest in instructions(dockerfile) if kw == "FROM"]
        stages = {words[-1] for words in froms if len(words) == 3 and words[1].upper() == "AS"}
        for keyword, rest in instructions(dockerfile):
            if keyword == "FROM" and rest.split()[0] not in stages:
                assert image_reference_is_pinned(rest.split()[0]), f"{dockerfile}: FROM {rest}"


def test_containers_run_as_unprivileged_users():
    for name, service in services().items():
        user = str(service.get("user", ""))
        assert user and user.split(":")[0] not in ("0", "root"), f"{name}: user {user!r}"


def test_built_images_switch_to_an_unprivileged_user():
    for name, service in services().items():
        if build := build_of(service):
            target = (service["build"] or {}).get("target")
            users = [rest for kw, rest in stage_of(build[1], target) if kw == "USER"]
            assert users and users[-1].split(":")[0] not in ("0", "root"), name


def test_capabilities_are_dropped_and_privileges_never_gained():
    for name, service in services().items():
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name


def test_long_running_services_have_healthchecks():
    for name in long_running():
        assert services()[name].get("healthcheck", {}).get("test"), name


def test_long_running_services_restart_unless_stopped():
    for name in long_running():
        assert services()[name].get("restart") == "unless-stopped", name
    for name in ONE_SHOT:
        assert services()[name].get("restart") == "no", name


def test_dependencies_wait_for_health_or_completion():
    for name, service in services().items():
        for dependency, rule in (service.get("depends_on") or {}).items():
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert rule.get("condition") == expected, f"{name} -> {dependency}"


# --- the pieces agree with one another ------------------------------------------------------


def mlflow_arguments() -> dict[str, str]:
    pairs = (arg.removeprefix("--").split("=", 1) for arg in services()["mlflow"]["command"])
    return {key: value for key, value in pairs}


def test_mlflow_allows_the_host_its_clients_use():
    allowed = mlflow_arguments()["allowed-hosts"].split(",")
    for name in ("trainer", "serving"):
        uri = services()[name]["environment"]["MLFLOW_TRACKING_URI"]
        host = uri.removeprefix("http://").split("/")[0]
        assert host in allowed, f"{name} talks to {host}, which mlflow refuses"


def test_mlflow_uses_basic_auth_and_clients_log_in():
    assert mlflow_arguments()["app-name"] == "basic-auth"
    for name in ("trainer", "serving"):
        environment = services()[name]["environment"]
        assert "${MLFLOW_ADMIN_USER:?" in environment["MLFLOW_TRACKING_USERNAME"]
        assert "${MLFLOW_ADMIN_PASSWORD:?" in environment["MLFLOW_TRACKING_PASSWORD"]


def test_mlflow_starts_no_genai_job_runner():
    assert services()["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"


def test_mlflow_artifacts_go_to_the_bucket_that_is_created():
    destination = mlflow_arguments()["artifacts-destination"]
    bucket_command = services()["minio-bucket"]["command"]
    created = bucket_command[-1].split("/", 1)[1]
    assert destination.startswith(f"s3://{created}/")


def test_backend_store_uses_the_installed_postgres_driver():
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the images install psycopg2.
    uris = [v for k, v in services()["mlflow"]["environment"].items() if k.endswith("_URI")]
    assert uris and all(u.startswith("postgresql+psycopg2://") for u in uris if "postgres" in u)


def test_auth_database_is_created_by_the_postgres_init_script():
    auth_uri = services()["mlflow"]["environment"]["MLFLOW_AUTH_DATABASE_URI"]
    database = auth_uri.rsplit("/", 1)[1]
    script = (REPO / "docker" / "postgres" / "10-mlflow-auth.sql").read_text()
    assert f"CREATE DATABASE {database};" in script


def test_mlflow_image_pins_the_locked_mlflow_and_driver_versions():
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    requirements = (REPO / "docker" / "mlflow" / "requirements.txt").read_text()
    for package in ("mlflow", "psycopg2-binary"):
        assert f"\n{package}=={locked[package]} " in requirements, package


def test_serving_healthcheck_probes_readyz_on_its_port():
    serving = services()["serving"]
    probe = " ".join(serving["healthcheck"]["test"])
    container_port = serving["ports"][0].rsplit(":", 1)[1]
    assert f"127.0.0.1:{container_port}/readyz" in probe
    assert f'--port "${{PORT:-{container_port}}}"' in (REPO / "docker/app/serve.sh").read_text()


def test_mlflow_healthcheck_probes_health_on_its_port():
    probe = " ".join(services()["mlflow"]["healthcheck"]["test"])
    assert f"127.0.0.1:{mlflow_arguments()['port']}/health" in probe


def test_gpu_trainer_reserves_the_gpus():
    devices = services()["trainer-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "trainer=gpu" in services()["trainer-gpu"]["command"]


@pytest.mark.parametrize("name", ["trainer", "trainer-gpu"])
def test_trainers_only_start_with_their_profile(name):
    assert services()[name]["profiles"]
