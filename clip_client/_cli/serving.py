"""The `status`, `deploy` and `export-model` commands: the endpoints themselves."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from .. import _constants as C
from .app import EXIT_OK, app, flag
from .errors import flag_spelling, handled, say_error
from .options import Common, shared_options


@app.command()
@handled
@shared_options("model", "workspace")
def status(*, common: Common) -> int:
    """What the two endpoints are and do: state, width, pixel parity, long-text handling, advice.

    Sends about 4 requests (2 state reads, 2 probes). With --local, probes the local model.
    """
    with dataclasses.replace(common, no_cache=True).client() as client:
        report = client.check_endpoint()
    typer.echo(report.render(flag_spelling))
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# deploy, export-model: the endpoints themselves (clip_client.deploy, the `mlflow` extra)

_DEPLOY = "Deployment"


@app.command()
@handled
@shared_options("workspace")
def deploy(
    catalog: Annotated[
        str, typer.Option("--catalog", help="Unity Catalog catalog the models are registered in.")
    ],
    schema: Annotated[str, typer.Option("--schema", help="Schema in that catalog.")],
    model: Annotated[
        str,
        typer.Option("--model", help="The CLIP checkpoint to serve: a Hugging Face hub id or a folder."),
    ] = C.DEFAULT_LOCAL_MODEL,
    gpu: Annotated[
        bool, flag("--gpu", help="Serve on GPU_SMALL (default: CPU).", rich_help_panel=_DEPLOY)
    ] = False,
    workload_size: Annotated[
        str,
        typer.Option(
            "--workload-size",
            help="Small, Medium or Large: requests served at once.",
            rich_help_panel=_DEPLOY,
        ),
    ] = "Small",
    scale_to_zero: Annotated[
        bool,
        flag(
            "--scale-to-zero/--no-scale-to-zero",
            help="Let an idle endpoint scale to zero (the first request after waits for it).",
            rich_help_panel=_DEPLOY,
        ),
    ] = True,
    route_optimized: Annotated[
        bool,
        flag("--route-optimized", help="Create route-optimized endpoints.", rich_help_panel=_DEPLOY),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            min=1,
            help="Seconds to wait for both endpoints to be ready.",
            rich_help_panel=_DEPLOY,
        ),
    ] = 3600.0,
    poll_interval: Annotated[
        float,
        typer.Option(
            "--poll-interval",
            min=0,
            help="Seconds between two reads of the endpoints' state.",
            rich_help_panel=_DEPLOY,
        ),
    ] = 15.0,
    check: Annotated[
        bool,
        flag(
            "--check/--no-check",
            help="Finish with check_endpoint() on the deployed endpoints.",
            rich_help_panel=_DEPLOY,
        ),
    ] = True,
    registry_uri: Annotated[
        str | None,
        typer.Option(
            "--registry-uri",
            help="Another MLflow model registry (default: Unity Catalog).",
            show_default=False,
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="The MLflow tracking server for the runs.", show_default=False),
    ] = None,
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            help="The MLflow experiment to log the runs to, e.g. /Users/me@example.com/clip "
            "(outside a notebook, the workspace needs one).",
            show_default=False,
        ),
    ] = None,
    *,
    common: Common,
) -> int:
    """Register both MLflow models in Unity Catalog and serve them (needs the 'mlflow' extra).

    Logs the text and image pyfunc models, registers them, creates or updates the two serving
    endpoints, waits until they are ready, then checks them.

    Registers CATALOG.SCHEMA.clip_text_embedding and CATALOG.SCHEMA.clip_image_embedding, then
    serves them on --text-endpoint and --image-endpoint. Progress goes to stderr; the final
    check_endpoint() report to stdout. Docs: docs/deploy.md.

    Example: clip-client deploy --catalog main --schema ml --gpu
    """
    from ..deploy import deploy as deploy_models

    workspace = None
    if common.host is not None:
        from databricks.sdk import WorkspaceClient

        workspace = WorkspaceClient(host=common.host, profile=common.profile)
    done = deploy_models(
        catalog=catalog,
        schema=schema,
        model=model,
        gpu=gpu,
        workspace=workspace,
        profile=common.profile if workspace is None else None,
        registry_uri=registry_uri,
        tracking_uri=tracking_uri,
        experiment=experiment,
        progress=lambda line: say_error(f"clip-client: {line}"),
        text_endpoint=common.text_endpoint,
        image_endpoint=common.image_endpoint,
        workload_size=workload_size,
        scale_to_zero=scale_to_zero,
        route_optimized=route_optimized,
        timeout=timeout,
        poll_interval=poll_interval,
        check=check,
    )
    if done.check is not None:
        typer.echo(str(done.check))
    else:
        typer.echo(f"ready: {done.endpoints['text']}, {done.endpoints['image']}")
    return EXIT_OK


@app.command("export-model")
@handled
@shared_options()
def export_model(
    kind: Annotated[str, typer.Option("--kind", help='"text" or "image": which of the two models to write.')],
    model: Annotated[str, typer.Option("--model", help="A Hugging Face hub id or a checkpoint folder.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="The MLflow model folder to write (new, or empty).", file_okay=False
        ),
    ],
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help='Where the served model runs: "cuda", "cpu"... (default: CUDA when the serving '
            "machine has it, else CPU).",
            show_default=False,
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            "--dtype",
            help="float32, float16 or bfloat16 (default: float16 on CUDA, float32 on CPU).",
            show_default=False,
        ),
    ] = None,
) -> int:
    """Write one pyfunc model as an MLflow model folder, weights included (needs the 'mlflow' extra).

    Serve it anywhere MLflow serves, with no hub access, and query it with
    ClipClient(text_url=..., image_url=...):

        mlflow models serve -m OUT --env-manager local -p 5000

    Example: clip-client export-model --kind image --model /models/clip --out clip-image-model
    """
    from ..deploy import export_model as export

    if kind not in ("text", "image"):
        raise typer.BadParameter(f'{kind!r}: use "text" or "image"', param_hint="--kind")
    written = export("text" if kind == "text" else "image", model, out, device=device, dtype=dtype)
    typer.echo(str(written))
    return EXIT_OK
