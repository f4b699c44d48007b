"""Records loaded by a caller's reference, refusing what is missing, deleted or malformed."""

from __future__ import annotations

from controller import validation
from controller.domain import Deployment, Model
from controller.errors import InvalidArgument, NotFound
from controller.store import Store, WriteTx


async def require_deployment(reads: WriteTx | Store, deployment_id: str) -> Deployment:
    if not deployment_id:
        raise InvalidArgument("MISSING_DEPLOYMENT_ID", "deployment_id is required")
    validation.validate_reference("deployment_id", deployment_id)
    deployment = await reads.get_deployment(deployment_id)
    if deployment is None:
        raise NotFound(
            "DEPLOYMENT_NOT_FOUND", f"deployment {deployment_id} does not exist", deployment_id=deployment_id
        )
    return deployment


async def find_model(reads: WriteTx | Store, model_id: str) -> Model:
    """A model by ID, deleted ones included, or by the name of a live one."""
    validation.validate_reference("model_id", model_id)
    model = await reads.get_model(model_id)
    if model is None:
        raise NotFound("MODEL_NOT_FOUND", f"model {model_id} does not exist", model_id=model_id)
    return model


async def require_model(reads: WriteTx | Store, model_id: str) -> Model:
    if not model_id:
        raise InvalidArgument("MISSING_MODEL_ID", "model_id is required")
    model = await find_model(reads, model_id)
    if model.delete_time is not None:
        raise NotFound("MODEL_DELETED", f"model {model_id} was deleted", model_id=model_id)
    return model
