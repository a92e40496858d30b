"""What a serving endpoint says about itself: `GET /api/2.0/serving-endpoints/{name}`.

The answer is parsed with databricks-sdk's own types (`ServingEndpointDetailed`), so every field
means what the SDK documents, and reduced to the few facts the client acts on: is it ready, is a
configuration update in progress, which entities serve it (workload size and type, scale to zero,
provisioned concurrency), is it route-optimized and where its data plane is.

The request itself is the backend's (`RemoteBackend.endpoint_state`); this module does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["WORKLOAD_CONCURRENCY", "EndpointState", "ServedEntity", "parse_endpoint_state", "unknown_state"]

WORKLOAD_CONCURRENCY: dict[str, tuple[int, int]] = {"Small": (4, 4), "Medium": (8, 16), "Large": (16, 64)}
"""Provisioned concurrency by workload size, (low, high): "A single unit of provisioned concurrency
can process one request at a time. Valid workload sizes are "Small" (4 - 4 provisioned
concurrency), "Medium" (8 - 16 provisioned concurrency), and "Large" (16 - 64 provisioned
concurrency)" (databricks-sdk, `ServedEntityOutput.workload_size`). With scale to zero the low
end is 0.
"""


@dataclass(frozen=True)
class ServedEntity:
    """One model an endpoint serves (`config.served_entities[]`).

    Attributes:
        name: the served entity's name within the endpoint.
        entity_name: the registered model it serves (`catalog.schema.model`).
        entity_version: that model's version.
        workload_size: `"Small"`, `"Medium"`, `"Large"` or a custom size; None when the
            entity gives its concurrency explicitly.
        workload_type: `"CPU"`, `"GPU_SMALL"`, `"GPU_MEDIUM"`...
        scale_to_zero_enabled: whether it scales down to zero when idle.
        min_provisioned_concurrency: the explicit lower bound of its concurrency, when set.
        max_provisioned_concurrency: the explicit upper bound, when set.
        deployment: its deployment state (`"DEPLOYMENT_READY"`, `"DEPLOYMENT_FAILED"`...).
        deployment_message: the message that goes with that state.
    """

    name: str | None = None
    entity_name: str | None = None
    entity_version: str | None = None
    workload_size: str | None = None
    workload_type: str | None = None
    scale_to_zero_enabled: bool | None = None
    min_provisioned_concurrency: int | None = None
    max_provisioned_concurrency: int | None = None
    deployment: str | None = None
    deployment_message: str | None = None

    @property
    def max_concurrency(self) -> int | None:
        """The most requests this entity serves at once: its explicit maximum, else its workload
        size's upper bound (`WORKLOAD_CONCURRENCY`); None for a size this client does not know
        (or an explicit maximum of 0, which says nothing about what it serves once started)."""
        if self.max_provisioned_concurrency:
            return self.max_provisioned_concurrency
        bounds = WORKLOAD_CONCURRENCY.get(self.workload_size or "")
        return None if bounds is None else bounds[1]


@dataclass(frozen=True)
class EndpointState:
    """An endpoint's state, as `GET /api/2.0/serving-endpoints/{name}` reported it.

    Attributes:
        name: the endpoint's name.
        known: False when the state could not be read (the caller may have CAN QUERY only, which
            does not allow the GET, or the request failed); every other field is then None/empty
            and `note` says why.
        ready: `state.ready == "READY"`: every served entity of the active configuration is ready.
        config_update: `state.config_update`: `"NOT_UPDATING"`, `"IN_PROGRESS"`,
            `"UPDATE_FAILED"` or `"UPDATE_CANCELED"`.
        served_entities: the entities of the active configuration.
        route_optimized: whether the endpoint is route-optimized (queried at its own data-plane URL).
        data_plane_url: where a route-optimized endpoint is queried
            (`data_plane_info.query_info.endpoint_url`).
        data_plane_authorization: the `authorization_details` the data-plane token is exchanged for.
        note: why `known` is False, or None.
    """

    name: str
    known: bool = True
    ready: bool | None = None
    config_update: str | None = None
    served_entities: tuple[ServedEntity, ...] = ()
    route_optimized: bool | None = None
    data_plane_url: str | None = None
    data_plane_authorization: str | None = None
    note: str | None = None

    @property
    def max_concurrency(self) -> int | None:
        """The requests the endpoint can serve at once, summed over its served entities; None when
        any entity's concurrency is unknown (or the state is)."""
        values = [entity.max_concurrency for entity in self.served_entities]
        if not values or any(v is None for v in values):
            return None
        return sum(v for v in values if v is not None)

    @property
    def may_need_to_start(self) -> bool:
        """Whether a first request will wait for the endpoint to start: it is not ready, or one of
        its entities scales to zero (and may have)."""
        return self.known and (
            self.ready is False or any(e.scale_to_zero_enabled for e in self.served_entities)
        )


def unknown_state(name: str, note: str) -> EndpointState:
    """The state of an endpoint that could not be read, and why."""
    return EndpointState(name=name, known=False, note=note)


def parse_endpoint_state(body: dict[str, Any], name: str) -> EndpointState:
    """The facts the client acts on, from the JSON of `GET /api/2.0/serving-endpoints/{name}`,
    read through databricks-sdk's `ServingEndpointDetailed`."""
    from databricks.sdk.service.serving import ServingEndpointDetailed

    if not isinstance(body.get("state"), dict):
        return unknown_state(name, "the control plane's answer has no state object")
    detail = ServingEndpointDetailed.from_dict(body)
    state = detail.state
    entities = tuple(
        ServedEntity(
            name=e.name,
            entity_name=e.entity_name,
            entity_version=e.entity_version,
            workload_size=e.workload_size,
            workload_type=_value(e.workload_type),
            scale_to_zero_enabled=e.scale_to_zero_enabled,
            min_provisioned_concurrency=e.min_provisioned_concurrency,
            max_provisioned_concurrency=e.max_provisioned_concurrency,
            deployment=_value(e.state.deployment) if e.state else None,
            deployment_message=e.state.deployment_state_message if e.state else None,
        )
        for e in ((detail.config.served_entities or []) if detail.config else [])
    )
    query = detail.data_plane_info.query_info if detail.data_plane_info else None
    ready = _value(state.ready) if state else None
    return EndpointState(
        name=name,
        ready=None if ready is None else ready == "READY",
        config_update=_value(state.config_update) if state else None,
        served_entities=entities,
        route_optimized=detail.route_optimized,
        data_plane_url=query.endpoint_url if query else None,
        data_plane_authorization=query.authorization_details if query else None,
    )


def _value(enum: Any) -> str | None:
    """An SDK enum's string value (or a plain string, as newer SDKs may give), or None."""
    if enum is None:
        return None
    return str(getattr(enum, "value", enum))
