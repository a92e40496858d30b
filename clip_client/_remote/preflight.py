"""What a client does about what an endpoint says of itself, decided once per client and endpoint,
before the first request to it, free of I/O. The backend reads the state
(`GET /api/2.0/serving-endpoints/{name}`, [`EndpointState`][clip_client.EndpointState]), asks
`preflight` and acts on the answer, from either shell:

- **`max_concurrency="auto"`**: the ceiling of the adaptive limit is what the endpoint serves at
  once plus one queued request (so no slot idles while the client parses an answer and sends the
  next), capped at 256; the default (5) when the state does not say.
- **Route optimization**: a route-optimized endpoint is queried at its own data-plane URL, with a
  data-plane OAuth token (the backend gets the auth from the workspace, which may refuse).
- **Starting**: an endpoint that is not ready, or that scales to zero, answers 503 while it starts.
  Those 503s are expected: they do not lower the concurrency limit and do not use up
  `max_retries` (`retry_deadline` bounds the wait), until the first answer that succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _constants as C
from .endpoint_state import EndpointState

__all__ = ["Preflight", "preflight"]


@dataclass(frozen=True)
class Preflight:
    """What to do about one endpoint.

    Attributes:
        ceiling: the ceiling `max_concurrency="auto"` resolves to; None when the setting is a number.
        ceiling_known: the ceiling came from the endpoint's state (False: the default, as a fallback).
        ceiling_note: what `"auto"` chose and why, for the log; None without `"auto"`.
        data_plane_url: where a route-optimized endpoint is queried; None to use the workspace URL.
        data_plane_authorization: the `authorization_details` its data-plane token is exchanged for.
        route_note: why a route-optimized endpoint is nevertheless queried at the workspace URL.
        starting: the endpoint may have to start: its 503s are expected until an answer succeeds.
        start_note: the endpoint is not ready now (the first call says it waits); None otherwise.
    """

    ceiling: int | None = None
    ceiling_known: bool = False
    ceiling_note: str | None = None
    data_plane_url: str | None = None
    data_plane_authorization: str | None = None
    route_note: str | None = None
    starting: bool = False
    start_note: str | None = None


def preflight(state: EndpointState, *, auto: bool) -> Preflight:
    """The decision for an endpoint in `state` (which may be unknown: then nothing changes but an
    `"auto"` ceiling falls back to the default); `auto` for `max_concurrency="auto"`."""
    ceiling, known, ceiling_note = _auto_ceiling(state) if auto else (None, False, None)
    url = authorization = route_note = None
    if state.route_optimized:
        if state.data_plane_url:
            url, authorization = state.data_plane_url, state.data_plane_authorization
        else:
            route_note = "its state gives no data-plane URL (data_plane_info.query_info.endpoint_url)"
    return Preflight(
        ceiling=ceiling,
        ceiling_known=known,
        ceiling_note=ceiling_note,
        data_plane_url=url,
        data_plane_authorization=authorization,
        route_note=route_note,
        starting=state.may_need_to_start,
        start_note=_not_ready(state),
    )


def _auto_ceiling(state: EndpointState) -> tuple[int, bool, str]:
    served = state.max_concurrency
    if served is None:
        if not state.known:
            why = f"its state could not be read: {state.note}"
        elif not state.served_entities:
            why = "its state lists no served entities"
        else:
            sizes = ", ".join(repr(e.workload_size) for e in state.served_entities)
            why = f"the concurrency of its served entities is unknown (workload sizes {sizes})"
        return C.DEFAULT_MAX_CONCURRENCY, False, f"using the default {C.DEFAULT_MAX_CONCURRENCY}, since {why}"
    ceiling = min(served + 1, C.MAX_CONCURRENCY)
    entities = ", ".join(
        f"{e.workload_size or 'explicit'} ({e.max_concurrency})" for e in state.served_entities
    )
    return ceiling, True, f"it serves {served} requests at once ({entities}): ceiling {ceiling}"


def _not_ready(state: EndpointState) -> str | None:
    if state.ready is not False:
        return None
    messages = "; ".join(
        f"{e.name}: {e.deployment or 'unknown'}"
        + (f" ({e.deployment_message})" if e.deployment_message else "")
        for e in state.served_entities
    )
    return "it is not ready" + (f" ({messages})" if messages else "")
