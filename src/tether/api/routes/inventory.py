"""/v1/agents/export — the AI system register (tether.agents.inventory), streamed as CSV or
JSON. Registered before the agents' router: ``/v1/agents/{agent_id}`` would take ``export``
for an id."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tether.agents.inventory import Format
from tether.api.deps import CallerDep, ServicesDep
from tether.api.errors import responses

router = APIRouter(prefix="/v1/agents", tags=["agents"])


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        **responses(401, 403, 422),
        200: {
            "content": {"text/csv": {}, "application/json": {}},
            "description": "Every agent the caller may see, as an attachment; the export is "
            "recorded in the ledger (inventory.exported) once its last byte is sent",
        },
    },
)
def export_inventory(
    svc: ServicesDep,
    who: CallerDep,  # an agent's access token too: it is refused (403), not unknown (401)
    format: Annotated[
        Literal["csv", "json"], Query(description="csv (RFC 4180, a header line) or json")
    ] = "csv",
) -> StreamingResponse:
    export = svc.inventory.export(who.principal, Format(format))  # a refusal comes before any byte
    return StreamingResponse(
        export.body,
        media_type=export.format.media_type,
        headers={"Content-Disposition": f'attachment; filename="{export.filename}"'},
    )


class _MethodNotAllowed:
    """An ASGI app, so that its route has no methods of its own (a function's would be GET):
    it takes every method the GET before it did not, and the 405 names only GET."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise HTTPException(405)


# Any other method on /v1/agents/export is 405 (Allow: GET), not the agents' PATCH of an agent
# whose id is "export": after the GET, before the agents' routes.
router.routes.append(Route("/v1/agents/export", _MethodNotAllowed(), include_in_schema=False))
