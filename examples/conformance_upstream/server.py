"""An MCP server with everything the MCP conformance suite's server scenarios ask for
(npm ``@modelcontextprotocol/conformance`` 0.1.12, active suite): the upstream the gateway's
conformance test puts behind Tether, registered without a prefix so the suite's fixed names
reach it.

- tools: ``test_simple_text``, ``test_image_content``, ``test_audio_content``,
  ``test_embedded_resource``, ``test_multiple_content_types``, ``test_error_handling``,
  ``test_tool_with_logging`` (three log notifications), ``test_tool_with_progress`` (three
  progress notifications), ``test_sampling``, ``test_elicitation``,
  ``test_elicitation_sep1034_defaults`` and ``test_elicitation_sep1330_enums`` (requests back
  to the client);
- resources ``test://static-text``, ``test://static-binary``, ``test://watched-resource`` and
  the template ``test://template/{id}/data``, with ``resources/subscribe`` and
  ``resources/unsubscribe``;
- prompts ``test_simple_prompt``, ``test_prompt_with_arguments``,
  ``test_prompt_with_embedded_resource``, ``test_prompt_with_image``;
- ``completion/complete`` (no suggestions), ``logging/setLevel``, ``ping``;
- Host and Origin checked against localhost (DNS rebinding protection).

Stateful (a session id) and SSE responses by default: what the scenarios with requests back
to the client and several streams need when the suite talks to it directly.

The server speaks to the client through the session's request-scoped methods rather than
the SDK's deprecated helpers (``Context.info``, ``create_message``): the logging and sampling
capabilities are deprecated as of protocol revision 2026-07-28 and the suite still tests them.

Run: ``python -m examples.conformance_upstream.server [--port 3901]``; the suite:
``npx @modelcontextprotocol/conformance@0.1.12 server --url http://127.0.0.1:3901/mcp``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
from typing import Any

import mcp_types as mt
import uvicorn
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.message import ServerMessageMetadata
from starlette.types import ASGIApp

# A 1x1 PNG and a 44-byte WAV header with two bytes of silence.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5E"
    "rkJggg=="
)
WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
LOCAL = TransportSecuritySettings(
    allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
    allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
)

USER_INFO = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}
DEFAULTS = {  # SEP-1034: a default for each primitive type
    "type": "object",
    "properties": {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {"type": "string", "enum": ["active", "inactive", "pending"],
                   "default": "active"},
        "verified": {"type": "boolean", "default": True},
    },
}  # fmt: skip
_OPTIONS = ["option1", "option2", "option3"]
ENUMS = {  # SEP-1330: the five enum shapes
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": _OPTIONS},
        "titledSingle": {"type": "string", "oneOf": [
            {"const": "value1", "title": "First Option"},
            {"const": "value2", "title": "Second Option"},
            {"const": "value3", "title": "Third Option"}]},
        "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                       "enumNames": ["Option One", "Option Two", "Option Three"]},
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": _OPTIONS}},
        "titledMulti": {"type": "array", "items": {"anyOf": [
            {"const": "value1", "title": "First Choice"},
            {"const": "value2", "title": "Second Choice"},
            {"const": "value3", "title": "Third Choice"}]}},
    },
}  # fmt: skip


def _text_resource(uri: str, text: str, mime_type: str = "text/plain") -> mt.EmbeddedResource:
    contents = mt.TextResourceContents(uri=uri, mime_type=mime_type, text=text)
    return mt.EmbeddedResource(type="resource", resource=contents)


def _image() -> mt.ImageContent:
    return mt.ImageContent(type="image", data=PNG, mime_type="image/png")


def build() -> MCPServer:
    """The server (its subscriptions kept in memory)."""
    mcp = MCPServer("tether-conformance-upstream", version="1.0", log_level="WARNING")
    _content_tools(mcp)
    _notifying_tools(mcp)
    _asking_tools(mcp)
    _resources(mcp)
    _prompts(mcp)
    _utilities(mcp)
    return mcp


def _content_tools(mcp: MCPServer) -> None:
    @mcp.tool()
    def test_simple_text() -> str:
        """Answers with one text block."""
        return "This is a simple text response for testing."

    @mcp.tool()
    def test_image_content() -> list[mt.ImageContent]:
        """Answers with a PNG image."""
        return [_image()]

    @mcp.tool()
    def test_audio_content() -> list[mt.AudioContent]:
        """Answers with a WAV clip."""
        return [mt.AudioContent(type="audio", data=WAV, mime_type="audio/wav")]

    @mcp.tool()
    def test_embedded_resource() -> list[mt.EmbeddedResource]:
        """Answers with an embedded text resource."""
        return [_text_resource("test://embedded-resource", "This is an embedded resource content.")]

    @mcp.tool()
    def test_multiple_content_types() -> list[mt.ContentBlock]:
        """Answers with text, an image and an embedded resource."""
        data = json.dumps({"test": "data", "value": 123})
        text = mt.TextContent(type="text", text="Multiple content types test:")
        return [text, _image(), _text_resource("test://mixed-content-resource", data,
                                               "application/json")]  # fmt: skip

    @mcp.tool()
    def test_error_handling() -> str:
        """Always a tool error."""
        raise ToolError("This tool intentionally returns an error for testing")


def _notifying_tools(mcp: MCPServer) -> None:
    @mcp.tool()
    async def test_tool_with_logging(ctx: Context) -> str:
        """Sends three info log messages, 50 ms apart, on this call's stream."""
        for i, text in enumerate(["Tool execution started", "Tool processing data",
                                  "Tool execution completed"]):  # fmt: skip
            if i:
                await asyncio.sleep(0.05)
            params = mt.LoggingMessageNotificationParams(level="info", data=text)
            await ctx.session.send_notification(
                mt.LoggingMessageNotification(params=params), related_request_id=ctx.request_id
            )
        return "Tool with logging executed successfully"

    @mcp.tool()
    async def test_tool_with_progress(ctx: Context) -> str:
        """Reports progress 0, 50 and 100 of 100, 50 ms apart (if the call asked for it)."""
        for step in (0, 50, 100):
            if step:
                await asyncio.sleep(0.05)
            await ctx.report_progress(step, 100, f"Completed step {step} of 100")
        return "Tool with progress executed successfully"


def _asking_tools(mcp: MCPServer) -> None:
    @mcp.tool()
    async def test_sampling(prompt: str, ctx: Context) -> str:
        """Asks the client's model (sampling/createMessage) and returns what it said."""
        message = mt.SamplingMessage(role="user", content=mt.TextContent(type="text", text=prompt))
        request = mt.CreateMessageRequest(
            params=mt.CreateMessageRequestParams(messages=[message], max_tokens=100)
        )
        related = ServerMessageMetadata(related_request_id=ctx.request_id)
        try:
            result = await ctx.session.send_request(request, mt.CreateMessageResult,
                                                    metadata=related)  # fmt: skip
        except Exception as exc:  # no back-channel, or the client refused: say so
            return f"Sampling not supported or error: {exc}"
        said = result.content.text if isinstance(result.content, mt.TextContent) else "?"
        return f"LLM response: {said}"

    async def elicit(ctx: Context, message: str, schema: dict[str, Any], label: str) -> str:
        try:
            got = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        except Exception as exc:  # no back-channel, or the client refused: say so
            return f"Elicitation not supported or error: {exc}"
        return f"{label}: action={got.action}, content={json.dumps(got.content or {})}"

    @mcp.tool()
    async def test_elicitation(message: str, ctx: Context) -> str:
        """Asks the user (elicitation/create) for a username and an email."""
        return await elicit(ctx, message, USER_INFO, "User response")

    @mcp.tool()
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        """Asks the user with a default for each primitive type (SEP-1034)."""
        return await elicit(ctx, "Please provide user information", DEFAULTS,
                            "Elicitation completed")  # fmt: skip

    @mcp.tool()
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        """Asks the user with each enum shape (SEP-1330)."""
        return await elicit(ctx, "Please pick options", ENUMS, "Elicitation completed")


def _resources(mcp: MCPServer) -> None:
    @mcp.resource("test://static-text", description="A static text resource.")
    def static_text() -> str:
        return "This is the content of the static text resource."

    @mcp.resource("test://static-binary", description="A static PNG image.",
                  mime_type="image/png")  # fmt: skip
    def static_binary() -> bytes:
        return base64.b64decode(PNG)

    @mcp.resource("test://template/{id}/data", description="Data for an id.",
                  mime_type="application/json")  # fmt: skip
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @mcp.resource("test://watched-resource", description="A resource to subscribe to.")
    def watched() -> str:
        return "Watched resource content"


def _prompts(mcp: MCPServer) -> None:
    @mcp.prompt()
    def test_simple_prompt() -> list[UserMessage]:
        """A prompt without arguments."""
        return [UserMessage("This is a simple prompt for testing.")]

    @mcp.prompt()
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        """A prompt with two required arguments."""
        return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]

    @mcp.prompt()
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803
        """A prompt embedding the resource it is given."""
        embedded = _text_resource(resourceUri, "Embedded resource content for testing.")
        return [UserMessage(embedded), UserMessage("Please process the embedded resource above.")]

    @mcp.prompt()
    def test_prompt_with_image() -> list[UserMessage]:
        """A prompt with an image."""
        return [UserMessage(_image()), UserMessage("Please analyze the image above.")]


def _utilities(mcp: MCPServer) -> None:
    subscribed: set[str] = set()
    low = mcp._lowlevel_server  # MCPServer has no public hook for these three methods

    async def set_level(
        ctx: ServerRequestContext[Any], params: mt.SetLevelRequestParams
    ) -> mt.EmptyResult:
        return mt.EmptyResult()

    async def subscribe(
        ctx: ServerRequestContext[Any], params: mt.SubscribeRequestParams
    ) -> mt.EmptyResult:
        subscribed.add(str(params.uri))
        return mt.EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any], params: mt.UnsubscribeRequestParams
    ) -> mt.EmptyResult:
        subscribed.discard(str(params.uri))
        return mt.EmptyResult()

    low.add_request_handler("logging/setLevel", mt.SetLevelRequestParams, set_level)
    low.add_request_handler("resources/subscribe", mt.SubscribeRequestParams, subscribe)
    low.add_request_handler("resources/unsubscribe", mt.UnsubscribeRequestParams, unsubscribe)

    @mcp.completion()
    async def complete(
        ref: mt.PromptReference | mt.ResourceTemplateReference,
        argument: mt.CompletionArgument,
        context: mt.CompletionContext | None,
    ) -> mt.Completion:
        return mt.Completion(values=[], total=0, has_more=False)


def http_app(*, stateless: bool = False, json_response: bool = False) -> ASGIApp:
    """The streamable-HTTP app at ``/mcp``; stateful with SSE answers unless told otherwise."""
    return build().streamable_http_app(stateless_http=stateless, json_response=json_response,
                                       transport_security=LOCAL)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3901)
    parser.add_argument("--stateless", action="store_true")
    parser.add_argument("--json", action="store_true", help="JSON answers instead of SSE")
    args = parser.parse_args()
    app = http_app(stateless=args.stateless, json_response=args.json)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()


__all__ = ["build", "http_app"]
