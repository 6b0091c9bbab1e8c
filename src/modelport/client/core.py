"""The sans-IO core shared by the sync and async clients.

Everything that does not depend on *how* bytes travel lives here: building each request
(method, path, query, body, headers), turning response bodies into the wire models of
``modelport.types.admin``, rebuilding server errors as the very ``modelport.errors`` classes
the server raised, and the V2 tensor encoding. ``Client`` and ``AsyncClient`` only send a
``Call`` and hand the status and body back to it, so the two cannot drift apart. ``Call``
and the request helpers live in ``client.calls``; the accounts and billing calls in the
mixins ``client.accounts`` and ``client.billing``; reading artifact files for upload in
``client.files``; reading responses (wire models and errors) in ``client.responses``.

An operation is a ``Call[T]``: a ``Request`` plus the parser that turns a 2xx body into
``T``. Non-2xx bodies become exceptions in ``Call.handle``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from modelport import errors
from modelport.client.accounts import AccountCalls
from modelport.client.billing import BillingCalls
from modelport.client.calls import (
    Call,
    Request,
    json_call,
    json_headers,
    path_segment,
    validated_body,
)
from modelport.client.files import ArtifactFile
from modelport.client.responses import parse_json, parse_list, parse_model, parse_nothing
from modelport.codecs.dtypes import to_numpy_dtype, to_v2_datatype
from modelport.types.admin import (
    ArtifactInfo,
    CreateVersion,
    DeploymentState,
    DeploymentStatus,
    DeploySpec,
    ModelDetail,
    ModelInfo,
    ScaleSpec,
    ServerStatus,
    SetAlias,
    Signature,
    VersionInfo,
)

__all__ = ["DEFAULT_URL", "Call", "ClientCore", "Request"]

DEFAULT_URL = "http://127.0.0.1:8000"
_JSON = "application/json"


# --- V2 tensors ---------------------------------------------------------------------------


def encode_v2_request(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A V2 JSON inference request for named arrays (anything ``np.asarray`` accepts)."""
    tensors = []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = to_v2_datatype(array.dtype)
        data: Any
        if datatype == "BYTES":
            data = [_text(item) for item in array.ravel().tolist()]
        else:
            data = np.ascontiguousarray(array).ravel()  # orjson serializes it natively
        tensors.append(
            {"name": name, "shape": list(array.shape), "datatype": datatype, "data": data}
        )
    return {"inputs": tensors}


def _text(item: object) -> str:
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise errors.InvalidInput(
                "BYTES elements must be UTF-8 text in V2 JSON requests"
            ) from None
    return str(item)


def decode_v2_response(data: Any) -> dict[str, np.ndarray]:
    """Named numpy arrays from a V2 JSON inference response."""
    outputs = data.get("outputs") if isinstance(data, dict) else None
    if not isinstance(outputs, list):
        raise errors.ModelportError("unexpected V2 response from the server: no 'outputs' list")
    result: dict[str, np.ndarray] = {}
    for tensor in outputs:
        try:
            name, shape = str(tensor["name"]), [int(d) for d in tensor["shape"]]
            dtype = to_numpy_dtype(str(tensor["datatype"]))
            result[name] = np.asarray(tensor["data"], dtype=dtype).reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.ModelportError(f"unexpected V2 output tensor: {exc}") from None
    return result


def _dumps(body: Any) -> bytes:
    try:
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        raise errors.InvalidInput(f"request body is not JSON-serializable: {exc}") from None


_SCALING_FIELDS = frozenset(
    {"min_replicas", "max_replicas", "target_inflight", "scale_up_delay_s",
     "scale_down_delay_s", "idle_timeout_s", "pinned"}
)  # fmt: skip


def _at_default(spec: DeploySpec, name: str) -> bool:
    default = DeploySpec.model_fields[name].get_default(call_default_factory=True)
    return bool(getattr(spec, name) == default)


# --- readiness ----------------------------------------------------------------------------


def is_ready(status: DeploymentStatus, *, all_replicas: bool = True) -> bool:
    """Whether a deployment is ready; a failed or stopped one raises with its reason.

    A deployment serves once one replica is ready; with ``all_replicas`` it counts as ready
    only when every requested replica is (what a script scaling up wants to wait for).
    """
    if status.state == DeploymentState.READY:
        return not all_replicas or status.ready_replicas >= status.replicas
    if status.state == DeploymentState.IDLE:  # at zero replicas: the next request starts one
        return True
    if status.state == DeploymentState.FAILED:
        raise errors.ModelLoadError(
            f"deployment {status.name!r} failed: {status.reason or 'no reason given'}",
            param=status.name,
        )
    if status.state == DeploymentState.STOPPED:
        raise errors.NotReady(f"deployment {status.name!r} is stopped", param=status.name)
    return False


def not_ready_in_time(status: DeploymentStatus, timeout: float) -> errors.DeadlineExceeded:
    """The error for a deployment still loading when ``wait_ready`` gives up."""
    return errors.DeadlineExceeded(
        f"deployment {status.name!r} not ready after {timeout:g}s: state {status.state}, "
        f"{status.ready_replicas}/{status.replicas} replica(s) ready"
        + (f" ({status.reason})" if status.reason else ""),
        param=status.name,
    )


def poll_delays(first: float = 0.05, most: float = 0.5) -> Iterator[float]:
    """Pauses between status polls: quick at first, then at most ``most`` seconds."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, most)


# --- the core -----------------------------------------------------------------------------


class ClientCore(AccountCalls, BillingCalls):
    """Builds every request of the modelport HTTP API; holds no connection.

    Registry, deployment and inference calls are here; accounts (tenants, users, keys,
    audit) come from ``AccountCalls``, prices, usage and invoices from ``BillingCalls``.
    """

    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise errors.InvalidInput(
                f"server URL {base_url!r} must start with http:// or https://", param="base_url"
            )
        self.base_url = base_url.rstrip("/")
        self.headers: dict[str, str] = {
            "User-Agent": f"modelport-client/{_version()}",
            "Accept": _JSON,
        }
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    # artifacts and registry

    def upload_artifact(self, artifact: ArtifactFile) -> Call[ArtifactInfo]:
        """``POST /api/artifacts``; the IO layer streams the file as the body."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(artifact.size),
        }
        request = Request("POST", "/api/artifacts", {"sha256": artifact.sha256}, None, headers)
        return Call(request, parse_model(ArtifactInfo))

    def create_version(
        self,
        name: str,
        artifact: ArtifactFile,
        runtime: str,
        *,
        trusted: bool = False,
        signature: Signature | Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        description: str | None = None,
        aliases: Sequence[str] = (),
    ) -> Call[VersionInfo]:
        """``POST /api/models/{name}/versions`` registering an uploaded artifact."""
        try:
            body = CreateVersion(
                artifact_sha256=artifact.sha256,
                artifact_name=artifact.name,
                runtime=runtime,
                trusted=trusted,
                signature=Signature.model_validate(signature) if signature is not None else None,
                metadata=dict(metadata or {}),
                description=description,
                aliases=list(aliases),
            )
        except ValidationError as exc:
            raise errors.InvalidInput(f"invalid model version: {exc}") from None
        return json_call("POST", f"/api/models/{path_segment(name)}/versions", body, VersionInfo)

    def list_models(self) -> Call[list[ModelInfo]]:
        return Call(Request("GET", "/api/models"), parse_list(ModelInfo))

    def get_model(self, name: str) -> Call[ModelDetail]:
        return Call(Request("GET", f"/api/models/{path_segment(name)}"), parse_model(ModelDetail))

    def delete_model(self, name: str) -> Call[None]:
        return Call(Request("DELETE", f"/api/models/{path_segment(name)}"), parse_nothing)

    def get_version(self, name: str, ref: int | str = "latest") -> Call[VersionInfo]:
        path = f"/api/models/{path_segment(name)}/versions/{path_segment(ref)}"
        return Call(Request("GET", path), parse_model(VersionInfo))

    def delete_version(self, name: str, version: int) -> Call[None]:
        path = f"/api/models/{path_segment(name)}/versions/{path_segment(version)}"
        return Call(Request("DELETE", path), parse_nothing)

    def set_alias(self, name: str, alias: str, version: int) -> Call[VersionInfo]:
        body = validated_body(SetAlias, {"version": version})
        path = f"/api/models/{path_segment(name)}/aliases/{path_segment(alias)}"
        return json_call("PUT", path, body, VersionInfo)

    def delete_alias(self, name: str, alias: str) -> Call[None]:
        path = f"/api/models/{path_segment(name)}/aliases/{path_segment(alias)}"
        return Call(Request("DELETE", path), parse_nothing)

    # deployments

    def deploy(
        self,
        model: str,
        *,
        version: int | None = None,
        alias: str | None = None,
        replicas: int = 1,
        max_batch_size: int = 1,
        max_latency_ms: float = 5.0,
        options: Mapping[str, Any] | None = None,
        **scaling: Any,
    ) -> Call[DeploymentStatus]:
        """``POST /api/deployments``; bad values fail here, before any request.

        ``scaling``: the autoscaling and memory fields of ``DeploySpec`` (``min_replicas``,
        ``max_replicas``, ``target_inflight``, ``scale_up_delay_s``, ``scale_down_delay_s``,
        ``idle_timeout_s``, ``pinned``).
        """
        unknown = sorted(set(scaling) - _SCALING_FIELDS)
        if unknown:
            raise TypeError(f"deploy() got unexpected keyword argument(s) {unknown}")
        spec = validated_body(
            DeploySpec,
            {
                "model": model,
                "version": version,
                "alias": alias,
                "replicas": replicas,
                "max_batch_size": max_batch_size,
                "max_latency_ms": max_latency_ms,
                "options": dict(options or {}),
                **scaling,
            },
        )
        # Fields left at their defaults are not sent, as clients did before they existed.
        exclude = {name for name in ("options", *_SCALING_FIELDS) if _at_default(spec, name)}
        return json_call("POST", "/api/deployments", spec, DeploymentStatus, exclude=exclude)

    def scale(self, name: str, replicas: int) -> Call[DeploymentStatus]:
        body = validated_body(ScaleSpec, {"replicas": replicas})
        return json_call("PATCH", f"/api/deployments/{path_segment(name)}", body, DeploymentStatus)

    def undeploy(self, name: str) -> Call[None]:
        return Call(Request("DELETE", f"/api/deployments/{path_segment(name)}"), parse_nothing)

    def deployments(self) -> Call[list[DeploymentStatus]]:
        return Call(Request("GET", "/api/deployments"), parse_list(DeploymentStatus))

    def deployment(self, name: str) -> Call[DeploymentStatus]:
        path = f"/api/deployments/{path_segment(name)}"
        return Call(Request("GET", path), parse_model(DeploymentStatus))

    def status(self) -> Call[ServerStatus]:
        return Call(Request("GET", "/api/status"), parse_model(ServerStatus))

    def ready(self) -> Call[bool]:
        """``GET /v2/health/ready``; the caller treats an error status as not ready."""
        return Call(Request("GET", "/v2/health/ready"), lambda body: True)

    # inference

    def predict(
        self, name: str, instances: Sequence[Any], version: int | str | None = None
    ) -> Call[list[Any]]:
        """``POST /v1/models/{name}[/versions/{v}]:predict`` with ``{"instances": [...]}``."""
        if isinstance(instances, str | bytes) or not isinstance(instances, Sequence | np.ndarray):
            raise errors.InvalidInput("instances must be a list", param="instances")
        path = f"/v1/models/{path_segment(name)}"
        if version is not None:
            path += f"/versions/{path_segment(version)}"
        content = _dumps({"instances": instances})
        request = Request("POST", f"{path}:predict", content=content, headers=json_headers())
        return Call(request, _parse_predictions)

    def infer(
        self, name: str, inputs: Mapping[str, Any], version: int | str | None = None
    ) -> Call[dict[str, np.ndarray]]:
        """``POST /v2/models/{name}[/versions/{v}]/infer`` with V2 JSON tensors."""
        path = f"/v2/models/{path_segment(name)}"
        if version is not None:
            path += f"/versions/{path_segment(version)}"
        content = _dumps(encode_v2_request(inputs))
        request = Request("POST", f"{path}/infer", content=content, headers=json_headers())
        return Call(request, lambda body: decode_v2_response(parse_json(body)))


def _parse_predictions(body: bytes) -> list[Any]:
    data = parse_json(body)
    predictions = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(predictions, list):
        raise errors.ModelportError("unexpected response from the server: no 'predictions' list")
    return predictions


def _version() -> str:
    try:
        return metadata.version("modelport")
    except metadata.PackageNotFoundError:
        return "dev"
