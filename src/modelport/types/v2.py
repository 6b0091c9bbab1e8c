"""Open Inference Protocol V2 wire models (pydantic).

These describe the V2 shapes for metadata and health responses and for the OpenAPI docs of
the infer route. Inference itself never goes through them: ``modelport.codecs.v2`` decodes
and encodes infer bodies straight from bytes with orjson and numpy, because validating every
tensor element with pydantic would dominate the latency of small requests.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelport.types.admin import TensorSpec

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
"""The V2 datatypes modelport serves (``codecs.dtypes.V2_DATATYPES``)."""

MetadataTensor = TensorSpec
"""A tensor in model metadata, ``{name, datatype, shape}``: the registry's own TensorSpec."""


class ServerLive(BaseModel):
    """``GET /v2/health/live`` body."""

    live: bool


class ServerReady(BaseModel):
    """``GET /v2/health/ready`` body."""

    ready: bool


class ModelReady(BaseModel):
    """``GET /v2/models/{name}[/versions/{v}]/ready`` body."""

    name: str
    ready: bool


class ServerMetadata(BaseModel):
    """``GET /v2`` body: who is serving, and which protocol extensions it speaks."""

    name: str
    version: str
    extensions: list[str] = Field(default_factory=list)


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}[/versions/{v}]`` body."""

    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str = Field(description="The runtime serving the model, e.g. 'sklearn', 'onnx'.")
    inputs: list[MetadataTensor] = Field(default_factory=list)
    outputs: list[MetadataTensor] = Field(default_factory=list)


class RequestInput(BaseModel):
    """One input tensor: inline ``data`` or, with the binary extension, a byte size."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="'binary_data_size': bytes of this tensor after the JSON header.",
    )
    data: list[Any] | None = Field(
        default=None,
        description="Row-major elements, flat or nested; BYTES as strings, BOOL as true/false.",
    )


class RequestOutput(BaseModel):
    """An output the client wants, and whether it should come back binary."""

    name: str
    parameters: dict[str, Any] | None = Field(
        default=None, description="'binary_data': return this output in the binary part."
    )


class InferenceRequest(BaseModel):
    """Body of ``POST /v2/models/{name}[/versions/{v}]/infer`` (the JSON part)."""

    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="'binary_data_output': default for outputs not listed in 'outputs'.",
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = Field(
        default=None, description="Omit to get every output of the model."
    )


class ResponseOutput(BaseModel):
    """One output tensor of a response: inline ``data`` or a binary byte size."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(
        default=None, description="Flat row-major elements; NaN and infinity become null."
    )


class InferenceResponse(BaseModel):
    """Response of the infer route (the JSON part)."""

    # Field names come from the protocol; "model_" is only reserved by older pydantic.
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class InferenceErrorResponse(BaseModel):
    """Every V2 error body."""

    error: str


class ModelState(StrEnum):
    """Model states as the V2 repository extension (and Triton) names them."""

    UNKNOWN = "UNKNOWN"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


class RepositoryIndexItem(BaseModel):
    """One entry of ``POST /v2/repository/index``."""

    name: str
    version: str | None = None
    state: ModelState
    reason: str = ""
