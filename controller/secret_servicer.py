"""SecretService: protobuf in, one Secrets call, protobuf out (values never go out)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from controller.secrets import Secrets
from controller.status import map_domain_errors
from controller.store import SecretRow
from slipway.v1 import secret_service_pb2 as ss
from slipway.v1 import secret_service_pb2_grpc as ss_grpc


@map_domain_errors
class SecretServicer(ss_grpc.SecretServiceServicer):
    def __init__(self, secrets: Secrets) -> None:
        self.secrets = secrets

    async def SetSecret(self, request, context):
        return ss.SetSecretResponse(secret=_proto(await self.secrets.set(request.name, request.value)))

    async def ListSecrets(self, request, context):
        return ss.ListSecretsResponse(secrets=[_proto(row) for row in await self.secrets.list()])

    async def DeleteSecret(self, request, context):
        await self.secrets.delete(request.name)
        return ss.DeleteSecretResponse()


def _proto(row: SecretRow) -> ss.Secret:
    created, updated = Timestamp(), Timestamp()
    created.FromNanoseconds(int(row.create_time * 1e9))
    updated.FromNanoseconds(int(row.update_time * 1e9))
    return ss.Secret(name=row.name, create_time=created, update_time=updated)
