"""``GET /v1/models`` and ``GET /v1/models/{id}``: the deployed models, in OpenAI's shape.

Every deployment is listed (the ``task`` field, a modelport extra, says which endpoint a
model answers); an id that is not deployed is a 404 (``openai.NotFoundError``).
"""

from __future__ import annotations

from fastapi import APIRouter

from modelport.api.deps import ServicesDep
from modelport.api.openai.protocol import ModelList, ModelObject
from modelport.engine.llm import ModelCard

router = APIRouter(tags=["OpenAI"])


def _model(card: ModelCard) -> ModelObject:
    return ModelObject(id=card.id, created=card.created, task=card.task)


@router.get("/v1/models", response_model=ModelList, summary="List deployed models")
async def list_models(services: ServicesDep) -> ModelList:
    return ModelList(data=[_model(card) for card in services.llm.models()])


@router.get("/v1/models/{model}", response_model=ModelObject, summary="A deployed model")
async def get_model(services: ServicesDep, model: str) -> ModelObject:
    return _model(services.llm.model(model))
