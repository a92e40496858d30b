"""clip_client.deploy.create_endpoints against a loopback fake of the serving-endpoints REST API: the
requests databricks-sdk sends for a new endpoint and for an update, the wait through "not ready", a
failed deployment reported with the served entity's own message, and the closing parity check,
answered by the real pyfunc model's code (EmbeddingPredictor on the tiny checkpoint)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from serving_server import TOKEN, ServingServer, endpoint_state

pytest.importorskip("mlflow")

from clip_client import APIConnectionError
from clip_client.deploy import (
    DeploymentError,
    LoggedModels,
    RegisteredModel,
    create_endpoints,
    deploy,
)
from clip_client.local import LocalBackend
from clip_client.serving import EmbeddingPredictor

TEXT, IMAGE = "clip-text-embedding", "clip-image-embedding"
MODELS = LoggedModels(
    text=RegisteredModel("text", "main.ml.clip_text_embedding", "3"),
    image=RegisteredModel("image", "main.ml.clip_image_embedding", "3"),
)
MODELS_MAP = {"text": ("a.b.t", 1), "image": ("a.b.i", 1)}
PREFIX = "/api/2.0/serving-endpoints"


class FakeWorkspace(ServingServer):
    """A :class:`ServingServer` that is also the serving-endpoints control plane: ``POST
    /api/2.0/serving-endpoints`` creates, ``PUT .../{name}/config`` updates, and each ``GET`` of an
    endpoint answers the next state of its ``timeline`` (the last one from then on). ``writes``
    records every create and update with its JSON body."""

    def __init__(self, **options: Any) -> None:
        self.existing: set[str] = set()
        self.timeline: dict[str, list[dict[str, Any]]] = {}
        self.writes: list[tuple[str, str, dict[str, Any]]] = []
        #: ``{method: (status, error_code, message)}``: how the control plane refuses that method
        self.refuse: dict[str, tuple[int, str, str]] = {}
        super().__init__(**options)

    def next_state(self, name: str) -> dict[str, Any]:
        with self.lock:
            states = self.timeline.get(name) or [endpoint_state(name)]
            return states.pop(0) if len(states) > 1 else states[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        base: Any = super()._handler()

        class Handler(base):  # type: ignore[misc,valid-type]
            def _body(self) -> dict[str, Any]:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body: dict[str, Any] = json.loads(raw or b"{}")
                return body

            def do_GET(self) -> None:
                if not self.path.startswith(PREFIX + "/"):
                    return super().do_GET()
                name = self.path[len(PREFIX) + 1 :]
                with server.lock:
                    server.requests.append(("GET", self.path))
                if "GET" in server.refuse:
                    return self._error(*server.refuse["GET"])
                if name not in server.existing:
                    return self._error(
                        404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint with name '{name}' does not exist."
                    )
                return self._send(200, json.dumps(server.next_state(name)).encode())

            def do_POST(self) -> None:
                if self.path != PREFIX:
                    return super().do_POST()
                body = self._body()
                if "POST" in server.refuse:
                    return self._error(*server.refuse["POST"])
                with server.lock:
                    server.writes.append(("POST", self.path, body))
                    server.existing.add(body["name"])
                starting = endpoint_state(body["name"], ready=False, config_update="IN_PROGRESS")
                return self._send(200, json.dumps(starting).encode())

            def do_PUT(self) -> None:
                name = self.path[len(PREFIX) + 1 :].removesuffix("/config")
                body = self._body()
                with server.lock:
                    server.writes.append(("PUT", self.path, body))
                return self._send(200, json.dumps(endpoint_state(name, config_update="IN_PROGRESS")).encode())

        return Handler


# MLflow puts a SQLite store's artifacts in ./mlruns and its default store in ./mlflow.db, relative
# to the working folder: each test runs in its own (conftest's ``in_tmp_path``).
pytestmark = pytest.mark.usefixtures("in_tmp_path")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path) -> Path:
    """The session's tiny CLIP checkpoint (conftest), under this module's name for it."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def predictors(checkpoint: Path) -> dict[str, EmbeddingPredictor]:
    """What the served models run, on the tiny checkpoint."""
    backend = LocalBackend(checkpoint, device="cpu")
    return {kind: EmbeddingPredictor(kind, backend) for kind in ("text", "image")}  # type: ignore[arg-type]


@pytest.fixture
def workspace(
    predictors: dict[str, EmbeddingPredictor], clean_env: pytest.MonkeyPatch
) -> Iterator[FakeWorkspace]:
    def model(kind: str, inputs: list[str]) -> list[list[float]]:
        rows: list[list[float]] = predictors[kind].predict(inputs).tolist()
        return rows

    with FakeWorkspace(dim=24, model=model) as fake:
        yield fake


def deploy_to(fake: FakeWorkspace, lines: list[str], **options: Any) -> Any:
    from databricks.sdk import WorkspaceClient

    client = WorkspaceClient(host=fake.url, token=TOKEN)
    options.setdefault("poll_interval", 0)
    return create_endpoints(MODELS, workspace=client, progress=lines.append, **options)


def served_entity(body: dict[str, Any]) -> dict[str, Any]:
    entities = body["config"]["served_entities"] if "config" in body else body["served_entities"]
    assert len(entities) == 1
    entity: dict[str, Any] = entities[0]
    return entity


def test_new_endpoints_are_created_waited_for_and_checked(workspace: FakeWorkspace) -> None:
    for name in (TEXT, IMAGE):
        workspace.timeline[name] = [
            endpoint_state(name, ready=False, config_update="IN_PROGRESS"),
            endpoint_state(
                name, ready=False, config_update="IN_PROGRESS", deployment_message="Building image"
            ),
            endpoint_state(name, ready=True),
        ]
    lines: list[str] = []
    done = deploy_to(workspace, lines, workload_type="gpu_small", workload_size="medium", scale_to_zero=False)

    assert [(m, p) for m, p, _ in workspace.writes] == [("POST", PREFIX), ("POST", PREFIX)]
    text_body = workspace.writes[0][2]
    assert text_body["name"] == TEXT
    assert "route_optimized" not in text_body
    assert served_entity(text_body) == {
        "entity_name": "main.ml.clip_text_embedding",
        "entity_version": "3",
        "workload_type": "GPU_SMALL",
        "workload_size": "Medium",
        "scale_to_zero_enabled": False,
    }
    assert served_entity(workspace.writes[1][2])["entity_name"] == "main.ml.clip_image_embedding"
    assert done.created == (TEXT, IMAGE)
    assert done.endpoints == {"text": TEXT, "image": IMAGE}
    # the wait reported each change, through "not ready", until ready
    assert any("NOT_READY" in line and "Building image" in line for line in lines)
    assert any(line.startswith(f"{TEXT}: ready after") for line in lines)
    # and the deployed endpoints were checked: the served model's preparation is the client's
    assert done.check is not None
    assert done.check.image.parity.verdict == "exact"
    assert done.check.text.truncation.verdict == "truncates"
    assert workspace.posts(TEXT) >= 1  # the probes reached both endpoints
    assert workspace.posts(IMAGE) >= 1


def test_existing_endpoints_are_updated_in_place(workspace: FakeWorkspace) -> None:
    workspace.existing |= {TEXT, IMAGE}
    for name in (TEXT, IMAGE):
        workspace.timeline[name] = [
            endpoint_state(name),  # the read that finds it
            endpoint_state(name, config_update="IN_PROGRESS"),
            endpoint_state(name),
        ]
    lines: list[str] = []
    done = deploy_to(workspace, lines, check=False)
    assert [(m, p) for m, p, _ in workspace.writes] == [
        ("PUT", f"{PREFIX}/{TEXT}/config"),
        ("PUT", f"{PREFIX}/{IMAGE}/config"),
    ]
    assert served_entity(workspace.writes[0][2]) == {
        "entity_name": "main.ml.clip_text_embedding",
        "entity_version": "3",
        "workload_type": "CPU",
        "workload_size": "Small",
        "scale_to_zero_enabled": True,
    }
    assert done.created == ()
    assert done.check is None
    assert any("updating to serve main.ml.clip_image_embedding version 3" in line for line in lines)


def test_route_optimization_is_asked_for_at_creation(workspace: FakeWorkspace) -> None:
    deploy_to(workspace, [], route_optimized=True, check=False)
    assert [body["route_optimized"] for _, _, body in workspace.writes] == [True, True]


def test_a_failed_deployment_is_reported_with_the_entitys_message(workspace: FakeWorkspace) -> None:
    failed = endpoint_state(TEXT, ready=False, config_update="UPDATE_FAILED")
    entity = failed["config"]["served_entities"][0]
    entity["state"] = {
        "deployment": "DEPLOYMENT_FAILED",
        "deployment_state_message": "Container build failed: pip could not install torch==9.9",
    }
    workspace.timeline[TEXT] = [endpoint_state(TEXT, ready=False, config_update="IN_PROGRESS"), failed]
    lines: list[str] = []
    with pytest.raises(DeploymentError) as caught:
        deploy_to(workspace, lines)
    error = caught.value
    assert error.endpoint == TEXT
    assert error.state_message == "Container build failed: pip could not install torch==9.9"
    message = str(error)
    assert "failed to deploy (config update UPDATE_FAILED)" in message
    assert "pip could not install torch==9.9" in message
    assert f"databricks serving-endpoints build-logs {TEXT} {entity['name']}" in message
    assert "run create_endpoints() again" in message
    assert TOKEN not in message


def test_an_endpoint_not_ready_in_time_says_so(workspace: FakeWorkspace) -> None:
    workspace.timeline[TEXT] = [endpoint_state(TEXT, ready=False, config_update="IN_PROGRESS")]
    with pytest.raises(DeploymentError, match=r"not ready after .*timeout=0.05.*clip-text-embedding"):
        deploy_to(workspace, [], timeout=0.05, poll_interval=0.01)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"workload_type": "TPU"}, "workload_type='TPU' is not one of CPU"),
        ({"workload_size": "Huge"}, "workload_size='Huge' is not one of Small, Medium, Large"),
    ],
)
def test_bad_options_fail_before_any_request(
    workspace: FakeWorkspace, options: dict[str, Any], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        deploy_to(workspace, [], **options)
    assert workspace.writes == []
    assert not [path for _, path in workspace.requests if path.startswith(PREFIX)]


def test_models_need_both_kinds(workspace: FakeWorkspace) -> None:
    with pytest.raises(ValueError, match="models has no 'image' entry"):
        create_endpoints({"text": ("a.b.c", "1")}, host=workspace.url, token=TOKEN)


def test_a_mapping_of_names_and_versions_is_taken_too(workspace: FakeWorkspace, tmp_path: Path) -> None:
    from databricks.sdk import WorkspaceClient

    create_endpoints(
        {"text": ("a.b.t", 7), "image": ("a.b.i", "8")},
        workspace=WorkspaceClient(host=workspace.url, token=TOKEN),
        poll_interval=0,
        check=False,
    )
    assert [
        (served_entity(b)["entity_name"], served_entity(b)["entity_version"]) for _, _, b in workspace.writes
    ] == [
        ("a.b.t", "7"),
        ("a.b.i", "8"),
    ]


def test_deploy_logs_registers_and_deploys_what_it_registered(
    workspace: FakeWorkspace, checkpoint: Path, tmp_path: Path
) -> None:
    """``clip-client deploy``: both steps, the versions registered being the versions served."""
    from databricks.sdk import WorkspaceClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lines: list[str] = []
    done = deploy(
        catalog="main",
        schema="ml",
        model=checkpoint,
        gpu=True,
        workspace=WorkspaceClient(host=workspace.url, token=TOKEN),
        registry_uri=store,
        tracking_uri=store,
        progress=lines.append,
        poll_interval=0,
    )
    entities = [served_entity(body) for _, _, body in workspace.writes]
    assert [(e["entity_name"], e["entity_version"], e["workload_type"]) for e in entities] == [
        ("main.ml.clip_text_embedding", "1", "GPU_SMALL"),
        ("main.ml.clip_image_embedding", "1", "GPU_SMALL"),
    ]
    assert "registered main.ml.clip_text_embedding version 1" in lines
    assert done.check is not None
    assert done.check.image.parity.verdict == "exact"


def _clip_client(fake: FakeWorkspace, tmp_path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    """``clip-client ARGS`` as a subprocess whose workspace (DATABRICKS_HOST/TOKEN) is ``fake``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABRICKS_")}
    env.update(
        DATABRICKS_HOST=fake.url,
        DATABRICKS_TOKEN=TOKEN,
        DATABRICKS_CONFIG_FILE=str(tmp_path / "no-databrickscfg"),
        HF_HUB_OFFLINE="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "clip_client", *map(str, args)],
        capture_output=True, text=True, timeout=600, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip


def test_the_deploy_verb_registers_serves_and_checks(
    workspace: FakeWorkspace, checkpoint: Path, tmp_path: Path
) -> None:
    """``clip-client deploy`` end to end as a subprocess: both models logged and registered in a
    local registry, both endpoints created on GPU with the versions registered, progress on
    stderr, the parity report on stdout, and the token nowhere."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _clip_client(
        workspace, tmp_path, "deploy", "--catalog", "main", "--schema", "ml", "--model", checkpoint,
        "--gpu", "--workload-size", "Medium", "--no-scale-to-zero", "--registry-uri", store,
        "--tracking-uri", store, "--poll-interval", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entities = [served_entity(body) for _, _, body in workspace.writes]
    assert [
        (
            e["entity_name"],
            e["entity_version"],
            e["workload_type"],
            e["workload_size"],
            e["scale_to_zero_enabled"],
        )
        for e in entities
    ] == [
        ("main.ml.clip_text_embedding", "1", "GPU_SMALL", "Medium", False),
        ("main.ml.clip_image_embedding", "1", "GPU_SMALL", "Medium", False),
    ]
    assert "registered main.ml.clip_image_embedding version 1" in done.stderr
    assert "exact" in done.stdout
    assert TOKEN not in done.stdout + done.stderr


def test_the_deploy_verb_reports_a_failed_deployment_in_one_line(
    workspace: FakeWorkspace, checkpoint: Path, tmp_path: Path
) -> None:
    workspace.existing.update({TEXT, IMAGE})
    failed = endpoint_state(IMAGE, ready=False, config_update="UPDATE_FAILED")
    failed["config"]["served_entities"][0]["state"] = {
        "deployment": "DEPLOYMENT_FAILED",
        "deployment_state_message": "Container build failed: out of memory",
    }
    workspace.timeline[IMAGE] = [failed]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _clip_client(
        workspace, tmp_path, "deploy", "--catalog", "main", "--schema", "ml", "--model", checkpoint,
        "--registry-uri", store, "--tracking-uri", store, "--poll-interval", "0",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("clip-client: error:"), done.stderr
    assert "Container build failed: out of memory" in last
    assert "Traceback" not in done.stderr
    assert TOKEN not in done.stdout + done.stderr


# --------------------------------------------------------------------------------------------------
# Mistakes and refusals: each fails at once, in one line, before anything is created or logged


def _refused_port() -> int:
    """A loopback port with nothing listening: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.timeout(60)  # databricks-sdk's own retry loop held this for 5 minutes
def test_an_unreachable_host_fails_naming_it(clean_env: pytest.MonkeyPatch) -> None:
    host = f"http://127.0.0.1:{_refused_port()}"
    with pytest.raises(APIConnectionError, match="could not reach the workspace") as caught:
        create_endpoints(MODELS, host=host, token=TOKEN, timeout=20)
    assert host in str(caught.value)
    assert "Connection refused" in str(caught.value)
    assert TOKEN not in str(caught.value)


@pytest.mark.timeout(90)
def test_deploy_reaches_the_workspace_before_it_logs_anything(
    clean_env: pytest.MonkeyPatch, checkpoint: Path, tmp_path: Path
) -> None:
    host = f"http://127.0.0.1:{_refused_port()}"
    clean_env.setenv("DATABRICKS_HOST", host)
    clean_env.setenv("DATABRICKS_TOKEN", TOKEN)
    store = tmp_path / "mlflow.db"
    with pytest.raises(APIConnectionError, match=host):
        deploy(
            catalog="main",
            schema="ml",
            model=checkpoint,
            registry_uri=f"sqlite:///{store}",
            tracking_uri=f"sqlite:///{store}",
            timeout=20,
        )
    assert not store.exists()  # nothing was logged


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"workload_size": "Huge"}, ValueError, "workload_size='Huge' is not one of"),
        ({"workload_type": "TPU"}, ValueError, "workload_type='TPU' is not one of"),
        ({"text_endpoint": "bad name/!"}, ValueError, r"text_endpoint='bad name/!' is not a serving"),
        ({"scale_to_zero": "no"}, TypeError, "scale_to_zero must be True or False"),
        ({"workload_sise": "Small"}, TypeError, "workload_sise"),
    ],
)
def test_deploy_checks_every_endpoint_option_before_it_logs_anything(
    workspace: FakeWorkspace,
    checkpoint: Path,
    tmp_path: Path,
    options: dict[str, Any],
    error: type,
    says: str,
) -> None:
    from databricks.sdk import WorkspaceClient

    store = tmp_path / "mlflow.db"
    with pytest.raises(error, match=says):
        deploy(
            catalog="main",
            schema="ml",
            model=checkpoint,
            workspace=WorkspaceClient(host=workspace.url, token=TOKEN),
            registry_uri=f"sqlite:///{store}",
            tracking_uri=f"sqlite:///{store}",
            **options,
        )
    assert not store.exists()
    assert workspace.writes == []


def test_deploy_with_a_refused_credential_fails_before_it_logs_anything(
    workspace: FakeWorkspace, checkpoint: Path, tmp_path: Path
) -> None:
    from databricks.sdk import WorkspaceClient

    workspace.refuse["GET"] = (403, "PERMISSION_DENIED", "User does not have permission to view endpoints")
    store = tmp_path / "mlflow.db"
    with pytest.raises(DeploymentError) as caught:
        deploy(
            catalog="main",
            schema="ml",
            model=checkpoint,
            workspace=WorkspaceClient(host=workspace.url, token=TOKEN),
            registry_uri=f"sqlite:///{store}",
            tracking_uri=f"sqlite:///{store}",
        )
    assert caught.value.status_code == 403
    assert "\n" not in str(caught.value)
    assert not store.exists()


@pytest.mark.parametrize(
    ("method", "refusal", "action", "says"),
    [
        (
            "GET",
            (404, "ENDPOINT_NOT_FOUND", "No API found for 'GET /serving-endpoints'"),
            "read",
            "workspace URL",
        ),
        ("POST", (403, "PERMISSION_DENIED", "not allowed to create endpoints"), "create", "EXECUTE on both"),
        (
            "POST",
            (400, "INVALID_PARAMETER_VALUE", "Model version 3 is not READY"),
            "create",
            "docs/deploy.md",
        ),
    ],
    ids=["no such API", "403 on create", "400 on create"],
)
def test_a_refusal_of_the_workspace_is_a_deployment_error_saying_what_to_do(
    workspace: FakeWorkspace, method: str, refusal: tuple[int, str, str], action: str, says: str
) -> None:
    workspace.refuse[method] = refusal
    with pytest.raises(DeploymentError) as caught:
        create_endpoints(MODELS, host=workspace.url, token=TOKEN, poll_interval=0, check=False)
    error = caught.value
    message = str(error)
    assert error.status_code == refusal[0]
    assert error.endpoint == TEXT
    assert f"refused to {action} serving endpoint {TEXT!r}" in message
    assert workspace.url in message
    assert f"HTTP {refusal[0]} {refusal[1]}" in message
    assert refusal[2] in message
    assert says in message
    assert TOKEN not in message
    assert error.__cause__ is None


@pytest.mark.parametrize(
    ("models", "options", "error", "says"),
    [
        ({"text": "a.b.c", "image": ("a.b.i", 1)}, {}, TypeError, r"'a\.b\.c' is not a \(name, version"),
        ({"text": ("a.b.t", "one"), "image": ("a.b.i", 1)}, {}, ValueError, r"\['text'\] has version 'one'"),
        ({"text": ("a.b.t", None), "image": ("a.b.i", 1)}, {}, ValueError, "has version None"),
        ({"text": ("a.b.t", 0), "image": ("a.b.i", 1)}, {}, ValueError, "has version 0"),
        ({"text": ("", 1), "image": ("a.b.i", 1)}, {}, ValueError, r"\['text'\] names the registered model"),
        ({**MODELS_MAP, "video": ("v", 1)}, {}, ValueError, r"unknown entries \['video'\]"),
        (["a.b.t", "a.b.i"], {}, TypeError, "models must be a mapping"),
        (MODELS, {"text_endpoint": "same", "image_endpoint": "same"}, ValueError, "both 'same'"),
        (MODELS, {"image_endpoint": "a?b"}, ValueError, r"image_endpoint='a\?b' is not a serving"),
        (MODELS, {"profile": "dev"}, ValueError, "either host= or profile="),
        (MODELS, {"timeout": 0}, ValueError, "timeout must be > 0"),
    ],
    ids=["str", "version one", "version None", "version 0", "empty name", "extra kind", "list",
         "same endpoint", "bad endpoint name", "host and profile", "timeout 0"],
)  # fmt: skip
def test_models_and_names_are_checked_before_any_request(
    workspace: FakeWorkspace, models: Any, options: dict[str, Any], error: type, says: str
) -> None:
    with pytest.raises(error, match=says):
        create_endpoints(models, host=workspace.url, token=TOKEN, **options)
    assert not [path for _, path in workspace.requests if path.startswith(PREFIX)]
