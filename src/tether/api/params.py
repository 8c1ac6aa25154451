"""Path parameters: the ids and names a URL carries, each with the pattern of the values that
can name something.

The patterns are stated in the OpenAPI document, not applied by the validator: any other string
names nothing, so it is answered as one that names nothing would be (404 with the resource's
error code), exactly as before. Only the lengths are applied (422), as they always were.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path

from tether.fields import USERNAME
from tether.ids import IdPrefix, id_pattern


def _id(prefix: IdPrefix, what: str) -> Any:  # a FieldInfo, as Path() returns
    return Path(min_length=1, max_length=40, description=f"{prefix}_… id of {what}",
                json_schema_extra={"pattern": id_pattern(prefix)})  # fmt: skip


AgentId = Annotated[str, _id(IdPrefix.AGENT, "an agent")]
CredentialId = Annotated[str, _id(IdPrefix.CREDENTIAL, "a credential")]
TokenId = Annotated[str, _id(IdPrefix.USER_TOKEN, "a user token")]
ApprovalId = Annotated[str, _id(IdPrefix.APPROVAL, "an approval")]
LeaseId = Annotated[str, _id(IdPrefix.LEASE, "a secret lease")]
RollbackId = Annotated[str, _id(IdPrefix.ROLLBACK, "a rollback")]
UserRef = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        description="usr_… id or username",
        json_schema_extra={
            "pattern": rf"^(?:{id_pattern(IdPrefix.USER, anchored=False)}|{USERNAME[1:-1]})$"
        },
    ),
]
# v0 is the base policy set; version numbers have at most 10 digits (policy.service).
PolicyVersion = Annotated[
    str, Path(description="v<number>", json_schema_extra={"pattern": r"^v[0-9]{1,10}$"})
]
