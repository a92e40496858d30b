"""Stand the two serving endpoints up from this package: log, register, deploy, check.

1. [`log_models`][clip_client.deploy.log_models] logs the text and image pyfunc models
(`clip_client.serving`), with the
   CLIP weights as artifacts, and registers them (Unity Catalog by default:
   `{catalog}.{schema}.clip_text_embedding` and `{catalog}.{schema}.clip_image_embedding`).
2. [`create_endpoints`][clip_client.deploy.create_endpoints] creates or updates `clip-text-embedding` and
`clip-image-embedding`
   with databricks-sdk, waits until they are ready, reporting progress, and ends with
   `ClipClient.check_endpoint()` against them.
3. [`deploy`][clip_client.deploy.deploy] does both (`clip-client deploy`);
[`export_model`][clip_client.deploy.export_model] writes one model as a
   folder for `mlflow models serve` (`clip-client export-model`).

Needs the `mlflow` extra: `pip install "clip-serving-client[mlflow]"`. The guide, from an empty
workspace to a check that says *exact*, with the Unity Catalog privileges: docs/deploy.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._constants import (
    DEFAULT_IMAGE_ENDPOINT,
    DEFAULT_LOCAL_MODEL,
    DEFAULT_TEXT_ENDPOINT,
    ENDPOINT_NAME_PATTERN,
    LOGGER_NAME,
)
from .errors import ClipClientError
from .types import InputKind

if TYPE_CHECKING:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.service.serving import ServingEndpointDetailed

    from ._core.endpoint_check import EndpointCheck

__all__ = [
    "Deployment",
    "DeploymentError",
    "LoggedModels",
    "RegisteredModel",
    "create_endpoints",
    "deploy",
    "export_model",
    "log_models",
    "registered_names",
]

logger = logging.getLogger(LOGGER_NAME)

KINDS: tuple[InputKind, InputKind] = ("text", "image")
WORKLOAD_SIZES = ("Small", "Medium", "Large")
"""The workload sizes of a served entity (databricks-sdk's `ServedEntityInput.workload_size`): 4, 8-16
and 16-64 requests served at once.
"""
GPU_WORKLOAD = "GPU_SMALL"
"""`deploy(gpu=True)`'s workload type: the smallest GPU (databricks-sdk `ServingModelWorkloadType`)."""
POLL_INTERVAL = 15.0
"""Seconds between two reads of a deploying endpoint's state."""
DEPLOY_TIMEOUT = 3600.0
"""Seconds [`create_endpoints`][clip_client.deploy.create_endpoints] waits for both endpoints to be ready (a
first CPU deployment of a
1.7 GB model image build takes 10-20 minutes; GPU ones longer).
"""


class DeploymentError(ClipClientError):
    """A serving endpoint failed to deploy, or was not ready in time.

    Attributes:
        endpoint: the serving endpoint's name.
        state_message: the served entity's own account of the failure
            (`deployment_state_message`), or None when it gave none.
        status_code: the HTTP status of the workspace's refusal (403...), or None for a failed or
            slow deployment.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        state_message: str | None = None,
        status_code: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.state_message = state_message
        self.status_code = status_code
        super().__init__(message)


@dataclass(frozen=True)
class RegisteredModel:
    """One registered model version.

    Attributes:
        kind: `"text"` or `"image"`.
        name: the registered name (`catalog.schema.clip_text_embedding` in Unity Catalog).
        version: the version, as the registry gives it (`"1"`).
    """

    kind: InputKind
    name: str
    version: str

    @property
    def uri(self) -> str:
        """`models:/{name}/{version}`, what `mlflow.pyfunc.load_model` takes."""
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class LoggedModels:
    """What [`log_models`][clip_client.deploy.log_models] registered: the text and the image model."""

    text: RegisteredModel
    image: RegisteredModel

    def __iter__(self) -> Iterator[RegisteredModel]:
        return iter((self.text, self.image))


@dataclass(frozen=True)
class Deployment:
    """What [`create_endpoints`][clip_client.deploy.create_endpoints] left behind.

    Attributes:
        endpoints: `{"text": name, "image": name}`.
        created: the names of the endpoints it created (the others it updated).
        check: the `check_endpoint()` report of the deployed endpoints (`str()` reads well), or
            None when `check=False`.
    """

    endpoints: dict[str, str]
    created: tuple[str, ...] = ()
    check: EndpointCheck | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------------------
# Logging and registering


def registered_names(catalog: str | None, schema: str | None) -> dict[InputKind, str]:
    """The registered names of both models: `{catalog}.{schema}.clip_{kind}_embedding`, or
    `clip_{kind}_embedding` when neither is given (a workspace or other registry).

    Raises:
        ValueError: only one of `catalog` and `schema`, or one with a dot or space in it.
    """
    if (catalog is None) != (schema is None):
        raise ValueError(
            "pass both catalog= and schema= (Unity Catalog names are catalog.schema.model), or neither"
        )
    prefix = ""
    if catalog is not None and schema is not None:
        for name, value in (("catalog", catalog), ("schema", schema)):
            if not value or any(c in value for c in ". /\t"):
                raise ValueError(f"{name}={value!r} is not a Unity Catalog name (no dots, spaces or slashes)")
        prefix = f"{catalog}.{schema}."
    return {kind: f"{prefix}clip_{kind}_embedding" for kind in KINDS}


@contextlib.contextmanager
def _mlflow_uris(mlflow: Any, tracking_uri: str | None, registry_uri: str | None) -> Iterator[None]:
    """MLflow's tracking and registry URIs set for the block, then put back as they were (MLflow
    keeps them process-wide and in the environment)."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
    saved_registry = getattr(registry_utils, "_registry_uri", None)
    try:
        if tracking_uri is not None:
            mlflow.set_tracking_uri(tracking_uri)
        if registry_uri is not None:
            mlflow.set_registry_uri(registry_uri)
        yield
    finally:
        if tracking_uri is not None:
            mlflow.set_tracking_uri(saved_tracking)
        if registry_uri is not None:
            registry_utils._registry_uri = saved_registry
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def log_models(
    model: str | os.PathLike[str] = DEFAULT_LOCAL_MODEL,
    *,
    catalog: str | None = None,
    schema: str | None = None,
    registry_uri: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> LoggedModels:
    """Log both pyfunc models in one MLflow run (a child run each) and register them.

    The checkpoint's files are logged as each model's `clip` artifact (about 1.7 GB for ViT-L/14,
    twice), so the endpoints serve without the Hugging Face hub. Each model carries the signature
    (string in, float32 `(-1, dim)` out), its pip requirements, and clip_client itself as code.

    Args:
        model: a hub id (default `openai/clip-vit-large-patch14`, fetched into the Hugging Face
            cache once) or a checkpoint folder.
        catalog, schema: the Unity Catalog schema to register in: the models become
            `{catalog}.{schema}.clip_text_embedding` and `{catalog}.{schema}.clip_image_embedding`.
            Without them, `clip_text_embedding` and `clip_image_embedding`.
        registry_uri: the model registry; default `"databricks-uc"` with a catalog, else MLflow's
            current one. Any MLflow registry URI works (`"databricks"` for the workspace registry,
            `"sqlite:///mlflow.db"`...).
        tracking_uri: where the run is logged; default MLflow's current one (`"databricks"` in a
            Databricks notebook). Both URIs are set for the call only.
        experiment: the MLflow experiment (a workspace path such as `/Users/me/clip` outside a
            notebook); default MLflow's current one.
        device, dtype: the serving device and dtype written into each model's config; None: CUDA
            in float16 when the serving machine has a GPU, else CPU in float32.

    Returns:
        [`LoggedModels`][clip_client.deploy.LoggedModels]: `.text` and `.image`, each with `.name`,
            `.version`, `.uri`.

    Raises:
        ValueError: only one of `catalog`/`schema`, a malformed name, or a bad `device`
            (not `"cpu"`, `"cuda"`, `"cuda:N"`) or `dtype` (not float32, float16, bfloat16);
            all checked before anything is logged.
        ModelLoadError: `model` is not a CLIP checkpoint, or cannot be fetched.
        mlflow.exceptions.MlflowException: the tracking server or registry refused; in Unity
            Catalog typically a missing privilege (USE CATALOG, USE SCHEMA, CREATE MODEL: docs/deploy.md).
        ImportError: the `mlflow` extra is not installed.
    """
    from .serving import check_serving_options, log_model, require_mlflow, resolve_checkpoint

    mlflow = require_mlflow()
    names = registered_names(catalog, schema)
    device, dtype = check_serving_options(device, dtype)
    if registry_uri is None and catalog is not None:
        registry_uri = "databricks-uc"
    folder = resolve_checkpoint(model)
    registered = {}
    with _mlflow_uris(mlflow, tracking_uri, registry_uri):
        if experiment is not None:
            mlflow.set_experiment(experiment)
        with mlflow.start_run(run_name="clip-client log_models", nested=mlflow.active_run() is not None):
            for kind in KINDS:
                # one child run per model: MLflow logs each model's config as run params, and a
                # run's param cannot change ('kind' text -> image), so one run for both warned
                with mlflow.start_run(run_name=f"clip_{kind}_embedding", nested=True):
                    info = log_model(
                        kind, folder, registered_model_name=names[kind], device=device, dtype=dtype
                    )
                version = str(info.registered_model_version)
                logger.info("registered %s version %s", names[kind], version)
                registered[kind] = RegisteredModel(kind, names[kind], version)
    return LoggedModels(text=registered["text"], image=registered["image"])


def export_model(
    kind: InputKind,
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    device: str | None = None,
    dtype: str | None = None,
) -> Path:
    """Write one pyfunc model as an MLflow model folder (`clip-client export-model`), which
    `mlflow models serve -m OUT --env-manager local` serves and `ClipClient(text_url=...,
    image_url=...)` then queries at `http://127.0.0.1:PORT/invocations`.

    Args:
        kind: `"text"` or `"image"`.
        model: a checkpoint folder or a hub id; its files are copied in (serving needs no hub).
        out: the folder to write; it must not exist, or be empty.
        device, dtype: as [`log_models`][clip_client.deploy.log_models].

    Returns:
        `out`, as a `Path`.

    Raises:
        ValueError: `kind` is neither `"text"` nor `"image"`, or a bad `device`/`dtype`
            (as [`log_models`][clip_client.deploy.log_models]), before anything is written.
        ModelLoadError: `model` is not a CLIP checkpoint, or cannot be fetched.
        mlflow.exceptions.MlflowException: `out` exists and is not empty.
        ImportError: the `mlflow` extra is not installed.
    """
    from .serving import save_model

    return save_model(kind, model, out, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Serving endpoints


def _workload_type(value: object) -> str:
    from databricks.sdk.service.serving import ServingModelWorkloadType

    valid = [t.value for t in ServingModelWorkloadType]
    upper = str(value).strip().upper()
    if not isinstance(value, str) or upper not in valid:
        raise ValueError(f"workload_type={value!r} is not one of {', '.join(valid)}")
    return upper


def _workload_size(value: object) -> str:
    title = str(value).strip().title()
    if not isinstance(value, str) or title not in WORKLOAD_SIZES:
        raise ValueError(f"workload_size={value!r} is not one of {', '.join(WORKLOAD_SIZES)}")
    return title


_MODELS_SHAPE = "pass log_models()'s result, or {'text': (name, version), 'image': (name, version)}"


def _models_of(models: LoggedModels | Mapping[str, Any]) -> dict[InputKind, tuple[str, str]]:
    """`{kind: (registered name, version)}` from [`LoggedModels`][clip_client.deploy.LoggedModels] or a
    mapping of `RegisteredModel` or `(name, version)` pairs, each checked."""
    if isinstance(models, LoggedModels):
        given: Mapping[str, Any] = {"text": models.text, "image": models.image}
    elif isinstance(models, Mapping):
        given = models
    else:
        raise TypeError(f"models must be a mapping, got {type(models).__name__}; {_MODELS_SHAPE}")
    extra = [str(k) for k in given if k not in KINDS]
    if extra:
        raise ValueError(f"models has unknown entries {extra} (only 'text' and 'image'); {_MODELS_SHAPE}")
    out: dict[InputKind, tuple[str, str]] = {}
    for kind in KINDS:
        if kind not in given:
            raise ValueError(f"models has no {kind!r} entry; {_MODELS_SHAPE}")
        value = given[kind]
        name: object
        version: object
        if isinstance(value, RegisteredModel):
            name, version = value.name, value.version
        elif isinstance(value, (tuple, list)) and len(value) == 2:
            name, version = value
        else:
            raise TypeError(f"models[{kind!r}]={value!r} is not a (name, version) pair; {_MODELS_SHAPE}")
        if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
            raise ValueError(
                f"models[{kind!r}] names the registered model {name!r}: expected a name such as "
                f"'main.ml.clip_{kind}_embedding'"
            )
        if isinstance(version, bool) or not (
            (isinstance(version, int) and version >= 1) or (isinstance(version, str) and version.isdigit())
        ):
            raise ValueError(
                f"models[{kind!r}] has version {version!r}: a registered model version is a positive "
                "integer (1, or '1')"
            )
        out[kind] = (name, str(int(version)))
    return out


def _endpoint_names(text_endpoint: object, image_endpoint: object) -> dict[InputKind, str]:
    """Both endpoint names, checked by the client's own rule (letters, digits, '-' and '_')."""
    names: dict[InputKind, str] = {}
    for kind, value in zip(KINDS, (text_endpoint, image_endpoint), strict=True):
        if not isinstance(value, str) or not re.fullmatch(ENDPOINT_NAME_PATTERN, value):
            raise ValueError(
                f"{kind}_endpoint={value!r} is not a serving endpoint name (letters, digits, '-' and "
                "'_' only, at most 256)"
            )
        names[kind] = value
    if names["text"] == names["image"]:
        raise ValueError(
            f"text_endpoint and image_endpoint are both {names['text']!r}: each model needs its own endpoint"
        )
    return names


@dataclass(frozen=True)
class _DeployPlan:
    """Every endpoint option of [`create_endpoints`][clip_client.deploy.create_endpoints], checked."""

    names: dict[InputKind, str]
    workload_type: str
    workload_size: str
    scale_to_zero: bool
    route_optimized: bool
    timeout: float
    poll_interval: float


def _plan(
    *,
    text_endpoint: str = DEFAULT_TEXT_ENDPOINT,
    image_endpoint: str = DEFAULT_IMAGE_ENDPOINT,
    workload_type: str = "CPU",
    workload_size: str = "Small",
    scale_to_zero: bool = True,
    route_optimized: bool = False,
    timeout: float = DEPLOY_TIMEOUT,
    poll_interval: float = POLL_INTERVAL,
) -> _DeployPlan:
    for name, flag in (("scale_to_zero", scale_to_zero), ("route_optimized", route_optimized)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    for name, number in (("timeout", timeout), ("poll_interval", poll_interval)):
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise TypeError(f"{name} must be a number of seconds, got {number!r}")
    if not timeout > 0 or not poll_interval >= 0:
        raise ValueError(f"timeout must be > 0 and poll_interval >= 0, got {timeout!r} and {poll_interval!r}")
    return _DeployPlan(
        names=_endpoint_names(text_endpoint, image_endpoint),
        workload_type=_workload_type(workload_type),
        workload_size=_workload_size(workload_size),
        scale_to_zero=scale_to_zero,
        route_optimized=route_optimized,
        timeout=float(timeout),
        poll_interval=float(poll_interval),
    )


CONNECT_TIMEOUT = 30.0
"""Seconds the first request to the workspace may take (`_connect`), at most: it only shows
that the host answers and takes the credentials.
"""

_ADVICE = {
    401: "the credentials were refused: check the token (DATABRICKS_TOKEN or token=) or the profile",
    403: "the identity needs permission to create serving endpoints, CAN MANAGE on an existing one, "
    "and EXECUTE on both registered models (docs/deploy.md, '1. What you need')",
    404: "no serving-endpoints API there: check that host= (DATABRICKS_HOST, the profile) is the "
    "workspace URL, https://<workspace>.cloud.databricks.com or similar",
}


def _refused(
    host: str, endpoint: str, action: str, status: int | None, code: str | None, message: str
) -> DeploymentError:
    """The workspace's refusal of a serving-endpoints request, as a one-line DeploymentError."""
    from ._core.secrets import redact

    advice = _ADVICE.get(status or 0, "see docs/deploy.md; run create_endpoints() again once it is fixed")
    what = " ".join(x for x in (f"HTTP {status}" if status else "", code or "") if x) or "an error"
    text = " ".join(redact(message).split())[:300]
    return DeploymentError(
        f"the workspace {host} refused to {action} serving endpoint {endpoint!r}: {what}: {text}. "
        f"What to do: {advice}",
        endpoint=endpoint,
        status_code=status,
    )


def _sdk_refused(exc: Exception, host: str, endpoint: str, action: str) -> DeploymentError:
    """A databricks-sdk `DatabricksError` (or a failure to reach the host) as a DeploymentError."""
    from ._remote.sdk_errors import sdk_status

    status = sdk_status(exc)
    error = _refused(host, endpoint, action, status, getattr(exc, "error_code", None), str(exc))
    error.__cause__ = None
    return error


@dataclass(frozen=True)
class _Connection:
    client: WorkspaceClient
    host: str


def _connect(
    workspace: WorkspaceClient | None,
    host: str | None,
    token: str | None,
    profile: str | None,
    endpoint: str,
    timeout: float,
) -> _Connection:
    """The workspace resolved as `ClipClient()` resolves it (`_remote.workspace.resolve_workspace`:
    databricks-sdk's network bounded, its failures typed and naming the host), then one GET of
    `endpoint`'s state within `min(timeout, CONNECT_TIMEOUT)` seconds: an unreachable host, a
    refused credential or a URL that is no workspace fails here, in seconds, before anything else."""
    import httpx

    from ._remote.status import map_transport_error
    from ._remote.workspace import resolve_workspace, sdk_config
    from .errors import APIConnectionError

    if workspace is not None:
        if host or token or profile:
            raise ValueError("pass either workspace= or host=/token=/profile=, not both")
        if not workspace.config.host:
            raise ValueError("the WorkspaceClient has no host")
        # The clients' own workspace and auth (host checks, fresh headers per request, secrets
        # registered for redaction): one HTTP path, not a third.
        resolved = resolve_workspace(config=workspace.config)
        client = workspace
    else:
        if host and profile:
            raise ValueError(
                f"pass either host= or profile= (profile {profile!r} names its own host), not both"
            )
        resolved = resolve_workspace(host=host, token=token, profile=profile)
        client = None
    resolved_host, auth = resolved.host, resolved.auth
    bound = min(timeout, CONNECT_TIMEOUT)
    try:
        answer = httpx.get(f"{resolved_host}/api/2.0/serving-endpoints/{endpoint}", auth=auth, timeout=bound)
    except httpx.HTTPError as exc:
        mapped = map_transport_error(exc, endpoint, bound=f"{bound:g}s", advice="check the network")
        raise APIConnectionError(
            f"could not reach the workspace {resolved_host}: {mapped.message}. What to do: check "
            "host= (DATABRICKS_HOST, or the ~/.databrickscfg profile in use) and the network (VPN, "
            "proxy)",
            endpoint=endpoint,
        ) from None
    if answer.status_code >= 400:
        try:
            body = answer.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        code = body.get("error_code")
        if not (answer.status_code == 404 and code == "RESOURCE_DOES_NOT_EXIST"):  # a new endpoint
            message = str(body.get("message") or answer.text or answer.reason_phrase)
            raise _refused(resolved_host, endpoint, "read", answer.status_code, code, message)
    if client is None:  # built once the host answered: its own probe of the host is then quick
        from databricks.sdk import WorkspaceClient

        client = WorkspaceClient(config=resolved.config or sdk_config(host=resolved_host, token=token))
    return _Connection(client, resolved_host)


def create_endpoints(
    models: LoggedModels | Mapping[str, Any],
    *,
    workspace: WorkspaceClient | None = None,
    host: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    text_endpoint: str = DEFAULT_TEXT_ENDPOINT,
    image_endpoint: str = DEFAULT_IMAGE_ENDPOINT,
    workload_type: str = "CPU",
    workload_size: str = "Small",
    scale_to_zero: bool = True,
    route_optimized: bool = False,
    timeout: float = DEPLOY_TIMEOUT,
    poll_interval: float = POLL_INTERVAL,
    progress: Callable[[str], None] | None = None,
    check: bool = True,
) -> Deployment:
    """Create (or update) both serving endpoints, wait until they are ready, then check them.

    Every argument is checked first; then the workspace is resolved and asked once for the text
    endpoint's state, within `min(timeout, 30)` seconds, so a host that is unreachable or no
    workspace, or a refused credential, fails in seconds. An endpoint that does not exist is
    created (`POST /api/2.0/serving-endpoints`); one that does gets the new served entity
    (`PUT /api/2.0/serving-endpoints/{name}/config`), with databricks-sdk. Both deploy at once;
    their state is read every `poll_interval` seconds, and every change (configuration update,
    served entity's deployment state and message) is reported.

    Args:
        models: [`log_models`][clip_client.deploy.log_models]' result, or
            `{"text": (name, version), "image": (name, version)}` (a version is a positive integer, or its
            digits).
        workspace: a `databricks.sdk.WorkspaceClient`; or `host`/`token`, or `profile`, or
            none of them for databricks-sdk's own chain (env vars, `~/.databrickscfg`, OAuth).
        text_endpoint, image_endpoint: the endpoints' names (default `clip-text-embedding` and
            `clip-image-embedding`, the client's defaults): letters, digits, `-` and `_`,
            not the same.
        workload_type: `"CPU"` (default), `"GPU_SMALL"`, `"GPU_MEDIUM"`, `"GPU_LARGE"`...
            (databricks-sdk's `ServingModelWorkloadType`).
        workload_size: `"Small"` (default; 4 requests at once), `"Medium"` (8-16) or `"Large"`
            (16-64).
        scale_to_zero: let an idle endpoint scale to zero (default True: it costs nothing idle; the
            first request after then waits minutes, which the client rides out with retries).
        route_optimized: create route-optimized endpoints (faster, higher QPS; queried with OAuth
            at their own URL). Only at creation: an existing endpoint keeps what it has.
        timeout: seconds to wait for both endpoints to be ready (default 3600).
        poll_interval: seconds between state reads (default 15).
        progress: called with each progress line; default: logged at INFO on the `clip_client`
            logger.
        check: finish with `ClipClient(...).check_endpoint()` against both endpoints.

    Returns:
        [`Deployment`][clip_client.deploy.Deployment]: `.endpoints`, `.created`, `.check` (read its
            `.image.parity`
        verdict: `"exact"` for these models).

    Raises:
        ValueError: a bad `workload_type`/`workload_size`/endpoint name/`timeout`, the same
            name for both endpoints, `models` without both kinds or with another, a bad registered
            name or version, `host=` with `profile=` (or `workspace=` with either), or no
            workspace to resolve.
        TypeError: `models` (or one entry) of the wrong shape, a flag that is not a bool.
        APIConnectionError: the workspace host could not be reached (the message names it).
        CredentialsError: databricks-sdk could not produce credentials.
        DeploymentError: the workspace refused a request (`.status_code`; the message names the
            host, the endpoint and what to do: 403 needs the permissions in docs/deploy.md), a
            deployment failed (the message quotes the served entity's state message), or an endpoint
            was not ready within `timeout`.
    """
    entities = _models_of(models)
    plan = _plan(
        text_endpoint=text_endpoint,
        image_endpoint=image_endpoint,
        workload_type=workload_type,
        workload_size=workload_size,
        scale_to_zero=scale_to_zero,
        route_optimized=route_optimized,
        timeout=timeout,
        poll_interval=poll_interval,
    )
    connection = _connect(workspace, host, token, profile, plan.names["text"], plan.timeout)
    return _create(entities, plan, connection, progress, check)


def _create(
    entities: dict[InputKind, tuple[str, str]],
    plan: _DeployPlan,
    connection: _Connection,
    progress: Callable[[str], None] | None,
    check: bool,
) -> Deployment:
    from databricks.sdk.errors import NotFound
    from databricks.sdk.errors.base import DatabricksError
    from databricks.sdk.service.serving import (
        EndpointCoreConfigInput,
        ServedEntityInput,
        ServingModelWorkloadType,
    )

    say = progress or (lambda line: logger.info("%s", line))
    client, host = connection.client, connection.host
    wtype = ServingModelWorkloadType(plan.workload_type)
    size = plan.workload_size
    created = []
    for kind in KINDS:
        name = plan.names[kind]
        entity_name, version = entities[kind]
        served = ServedEntityInput(
            entity_name=entity_name,
            entity_version=version,
            workload_type=wtype,
            workload_size=size,
            scale_to_zero_enabled=plan.scale_to_zero,
        )
        action = "read"
        try:
            try:
                existing = client.serving_endpoints.get(name)
            except NotFound as exc:
                if getattr(exc, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                    raise
                existing = None
            if existing is None:
                action = "create"
                say(f"{name}: creating, serving {entity_name} version {version} ({wtype.value}, {size})")
                client.serving_endpoints.create(
                    name,
                    config=EndpointCoreConfigInput(name=name, served_entities=[served]),
                    route_optimized=plan.route_optimized or None,
                )
                created.append(name)
            else:
                action = "update"
                if bool(existing.route_optimized) != plan.route_optimized:
                    say(
                        f"{name}: exists {'with' if existing.route_optimized else 'without'} route "
                        "optimization, which cannot change after creation; delete the endpoint first to "
                        "change it"
                    )
                say(f"{name}: updating to serve {entity_name} version {version} ({wtype.value}, {size})")
                client.serving_endpoints.update_config(name, served_entities=[served])
        except DatabricksError as exc:
            raise _sdk_refused(exc, host, name, action) from None
    _wait_until_ready(client, host, list(plan.names.values()), plan.timeout, plan.poll_interval, say)
    report = None
    if check:
        report = _check(client, plan.names["text"], plan.names["image"], say)
    return Deployment(
        endpoints={str(k): v for k, v in plan.names.items()}, created=tuple(created), check=report
    )


def _entity_states(detail: ServingEndpointDetailed) -> list[tuple[str, str, str]]:
    """(served entity name, deployment state, state message) of the pending config's entities when an
    update is under way, else of the current config's."""
    pending = detail.pending_config.served_entities if detail.pending_config else None
    current = detail.config.served_entities if detail.config else None
    out = []
    for entity in pending or current or []:
        state = entity.state
        deployment = state.deployment.value if state and state.deployment else "UNKNOWN"
        message = (state.deployment_state_message or "") if state else ""
        out.append((entity.name or entity.entity_name or "?", deployment, message))
    return out


_FAILED = {"DEPLOYMENT_FAILED", "DEPLOYMENT_ABORTED"}


def _wait_until_ready(
    client: WorkspaceClient,
    host: str,
    names: list[str],
    timeout: float,
    poll_interval: float,
    say: Callable[[str], None],
) -> None:
    """Poll each endpoint until it is ready and not updating; raise on a failed deployment."""
    from databricks.sdk.errors.base import DatabricksError

    started = time.monotonic()
    waiting = list(dict.fromkeys(names))
    last: dict[str, str] = {}
    while True:
        for name in list(waiting):
            try:
                detail = client.serving_endpoints.get(name)
            except DatabricksError as exc:
                raise _sdk_refused(exc, host, name, "read") from None
            ready = detail.state.ready.value if detail.state and detail.state.ready else "UNKNOWN"
            update = (
                detail.state.config_update.value if detail.state and detail.state.config_update else "UNKNOWN"
            )
            entities = _entity_states(detail)
            line = f"{name}: {ready}, config update {update}" + "".join(
                f"; {entity} {state}" + (f": {message}" if message else "")
                for entity, state, message in entities
            )
            if last.get(name) != line:
                say(line)
                last[name] = line
            failed = [(e, s, m) for e, s, m in entities if s in _FAILED]
            if update in ("UPDATE_FAILED", "UPDATE_CANCELED") or (update == "NOT_UPDATING" and failed):
                raise _deployment_failed(name, update, failed or entities)
            if update == "NOT_UPDATING" and ready == "READY":
                say(f"{name}: ready after {time.monotonic() - started:.0f}s")
                waiting.remove(name)
        if not waiting:
            return
        elapsed = time.monotonic() - started
        if elapsed >= timeout:
            pending = ", ".join(f"{n} ({last.get(n, 'no state read')})" for n in waiting)
            raise DeploymentError(
                f"not ready after {elapsed:.0f}s (timeout={timeout:g}): {pending}. The deployment goes on in "
                "the workspace: watch it on the endpoint's page (Serving), then run "
                "ClipClient().check_endpoint(); or call create_endpoints() again with a larger timeout",
                endpoint=waiting[0],
            )
        time.sleep(min(poll_interval, max(0.0, timeout - elapsed)))


def _deployment_failed(name: str, update: str, entities: list[tuple[str, str, str]]) -> DeploymentError:
    messages = [m for _, _, m in entities if m]
    quoted = (
        "; ".join(f"{e} {s}: {m}" if m else f"{e} {s}" for e, s, m in entities) or "no served entity state"
    )
    served = entities[0][0] if entities else "<served entity>"
    return DeploymentError(
        f"serving endpoint {name!r} failed to deploy (config update {update}): {quoted}. What to do: read "
        f"the build and server logs (`databricks serving-endpoints build-logs {name} {served}` and "
        f"`databricks serving-endpoints logs {name} {served}`, or the endpoint's Logs tab); a failed "
        "image build is usually a pip requirement that does not install, a failed start a model that "
        "does not load (out of memory on the workload size: choose a larger one, or a GPU). Fix it, then "
        "run create_endpoints() again: it updates the endpoint in place",
        endpoint=name,
        state_message=messages[0] if messages else None,
    )


def _check(
    client: WorkspaceClient, text_endpoint: str, image_endpoint: str, say: Callable[[str], None]
) -> EndpointCheck:
    from ._client import ClipClient

    say("checking both endpoints: state, width, pixel parity, text truncation")
    with ClipClient(config=client.config, text_endpoint=text_endpoint, image_endpoint=image_endpoint) as clip:
        report = clip.check_endpoint()
    say(str(report))
    return report


# --------------------------------------------------------------------------------------------------
# Both steps


def deploy(
    *,
    catalog: str,
    schema: str,
    model: str | os.PathLike[str] = DEFAULT_LOCAL_MODEL,
    gpu: bool = False,
    workspace: WorkspaceClient | None = None,
    profile: str | None = None,
    registry_uri: str | None = None,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    progress: Callable[[str], None] | None = None,
    **endpoint_options: Any,
) -> Deployment:
    """`clip-client deploy --catalog C --schema S [--gpu]`: [`log_models`][clip_client.deploy.log_models],
    then [`create_endpoints`][clip_client.deploy.create_endpoints] with the versions it registered.

    Args:
        catalog, schema: where the models are registered in Unity Catalog.
        model: a hub id (default `openai/clip-vit-large-patch14`) or a checkpoint folder.
        gpu: serve on `GPU_SMALL` (default: CPU).
        workspace, profile: the workspace (default: databricks-sdk's chain).
        registry_uri, tracking_uri, experiment: as [`log_models`][clip_client.deploy.log_models] (default:
            Unity Catalog, and the workspace's tracking server when a profile or workspace is given).
        progress: called with each progress line (default: logged at INFO).
        **endpoint_options: [`create_endpoints`][clip_client.deploy.create_endpoints]' keywords
            (`workload_size`, `scale_to_zero`, `route_optimized`, `timeout`...).

    Returns:
        [`Deployment`][clip_client.deploy.Deployment], as
            [`create_endpoints`][clip_client.deploy.create_endpoints].

    Every endpoint option is checked, and the workspace resolved and reached (as
    [`create_endpoints`][clip_client.deploy.create_endpoints] does), before anything is logged: a bad option,
    an unreachable host or a refused credential costs seconds, not an upload.

    Raises:
        TypeError: an unknown endpoint option, or `host=`/`token=` (use `workspace=` or
            `profile=`).
        ValueError, ModelLoadError, ImportError, MlflowException: as
            [`log_models`][clip_client.deploy.log_models].
        APIConnectionError, CredentialsError, DeploymentError: as
            [`create_endpoints`][clip_client.deploy.create_endpoints].
    """
    say = progress or (lambda line: logger.info("%s", line))
    check = endpoint_options.pop("check", True)
    for forbidden in ("host", "token"):
        if forbidden in endpoint_options:
            raise TypeError(f"deploy() takes no {forbidden}=: pass workspace= or profile=")
    endpoint_options.setdefault("workload_type", GPU_WORKLOAD if gpu else "CPU")
    try:
        plan = _plan(**endpoint_options)
    except TypeError as exc:
        raise TypeError(f"deploy(): {exc}; the endpoint options are create_endpoints()' keywords") from None
    if profile is not None:  # the same workspace for the run, the registry and the endpoints
        tracking_uri = tracking_uri or f"databricks://{profile}"
        registry_uri = registry_uri or f"databricks-uc://{profile}"
    registered_names(catalog, schema)
    # the workspace first: an unreachable host or a refused credential fails in seconds, before
    # gigabytes are uploaded
    connection = _connect(workspace, None, None, profile, plan.names["text"], plan.timeout)
    say(f"logging and registering both models in {catalog}.{schema} (the weights upload once per model)")
    models = log_models(
        model,
        catalog=catalog,
        schema=schema,
        registry_uri=registry_uri,
        tracking_uri=tracking_uri,
        experiment=experiment,
    )
    for registered in models:
        say(f"registered {registered.name} version {registered.version}")
    return _create(_models_of(models), plan, connection, say, bool(check))
