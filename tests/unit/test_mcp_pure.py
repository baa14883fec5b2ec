"""``rebuno.mcp`` without a server: tool ids, the result mapping, config loading, tool callables."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from mcp.types import (
    CallToolResult, EmbeddedResource, ImageContent, TextContent, TextResourceContents, Tool,
)

from rebuno import MCPServer, ToolError
from rebuno import mcp as rebuno_mcp
from rebuno.mcp import MCPConfigError, step_result, tool_id_for
from schemas.ids import InvalidIdError


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch):
    monkeypatch.setattr(rebuno_mcp, "_SERVERS", [])


# ------------------------------------------------------------------ tool ids --
@pytest.mark.parametrize(("name", "expected"), [
    ("read_file", "fs.read_file"),
    ("get-current-time", "fs.get-current-time"),
    ("admin.users.list", "fs.admin.users.list"),
    ("weird name/v2", "fs.weird_name_v2"),
    ("a..b", "fs.a._.b"),
    (".hidden", "fs._.hidden"),
    ("trailing.", "fs.trailing._"),
    ("ünïcode", "fs._n_code"),
])
def test_tool_id_mapping(name: str, expected: str) -> None:
    assert tool_id_for("fs", name) == expected


def test_tool_id_too_long_is_refused() -> None:
    with pytest.raises(InvalidIdError):
        tool_id_for("fs", "x" * 300)


# ------------------------------------------------------------------- results --
def test_structured_content_wins() -> None:
    result = CallToolResult(content=[TextContent(text='{"a": 1}')], structured_content={"a": 1})
    assert step_result(result) == {"a": 1}
    assert step_result(CallToolResult(content=[], structured_content=[1, 2])) == [1, 2]


def test_text_content() -> None:
    assert step_result(CallToolResult(content=[TextContent(text="one")])) == "one"
    assert step_result(CallToolResult(content=[TextContent(text="a"), TextContent(text="b")])) == "a\nb"
    assert step_result(CallToolResult(content=[])) is None


def test_other_content_kinds_keep_every_item() -> None:
    result = CallToolResult(content=[
        TextContent(text="caption"), ImageContent(data="AAAA", mime_type="image/png"),
        EmbeddedResource(resource=TextResourceContents(uri="file:///a.txt", text="hello", mime_type="text/plain"))])
    assert step_result(result) == [
        {"type": "text", "text": "caption"},
        {"type": "image", "data": "AAAA", "mimeType": "image/png"},
        {"type": "resource", "resource": {"uri": "file:///a.txt", "mimeType": "text/plain", "text": "hello"}}]
    json.dumps(step_result(result))  # JSON as it is


def test_is_error_raises_a_non_retryable_tool_error() -> None:
    result = CallToolResult(content=[TextContent(text="no such repo"), ImageContent(data="AA", mime_type="image/png"),
                                     TextContent(text="try again")], is_error=True, structured_content={"x": 1})
    with pytest.raises(ToolError) as info:
        step_result(result, "git.git_log")
    assert (str(info.value), info.value.tool_id, info.value.retryable) == ("no such repo\ntry again", "git.git_log", False)
    with pytest.raises(ToolError, match="reported an error without a message"):
        step_result(CallToolResult(content=[], is_error=True))


# -------------------------------------------------------------- construction --
def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="non-empty name"):
        MCPServer("", command="x")
    with pytest.raises(ValueError, match="exactly one of command"):
        MCPServer("a")
    with pytest.raises(ValueError, match="exactly one of command"):
        MCPServer("a", command="x", url="http://h/mcp")
    with pytest.raises(ValueError, match="http:// or https://"):
        MCPServer("a", url="ftp://h")
    with pytest.raises(ValueError, match="pass prefix="):
        MCPServer("my server", command="x")
    assert MCPServer("my server", command="x", prefix="mine").prefix == "mine"
    with pytest.raises(ValueError, match="args must be a list of strings"):
        MCPServer("a", command="x", args="--flag")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="call_timeout must be positive"):
        MCPServer("a", command="x", call_timeout=0)
    server = MCPServer("github", url="https://api.example/mcp", headers={"Authorization": "Bearer t"})
    assert (server.prefix, server.transport, server.connected) == ("github", "streamable-http", False)
    assert server in rebuno_mcp._registered()
    with pytest.raises(RuntimeError, match="'github' is not connected"):
        server.tools


def _tool(name: str, schema: dict[str, Any] | None = None, description: str = "") -> Tool:
    return Tool(name=name, description=description,
                input_schema=schema or {"type": "object", "properties": {}})


async def test_tool_callables_look_like_tool_wrappers() -> None:
    server = MCPServer("files", command="unused")
    schema = {"type": "object", "properties": {"path": {"type": "string"}, "limit": {"type": "integer", "default": 5},
                                              "dry-run": {"type": "boolean"}}, "required": ["path"]}
    server._client = object()  # as if connected
    assert server._install([_tool("read_file", schema, "Read a file."), _tool("weird name"), _tool("weird/name")])
    assert server.tool_ids == ["files.read_file", "files.weird_name"]  # the colliding second is refused
    fn = server["files.read_file"]
    assert (fn.__name__, fn.__doc__, fn.__module__) == ("read_file", "Read a file.", "rebuno.mcp")
    assert list(inspect.signature(fn).parameters) == ["path", "limit"]
    assert inspect.signature(fn).parameters["limit"].default == 5
    assert (fn.__rebuno_tool_id__, fn.__rebuno_remote__, fn.__rebuno_mcp__) == ("files.read_file", False, True)
    assert fn.__input_schema__ == schema and fn.__rebuno_tool__.schema == schema
    assert fn.__rebuno_tool__.tool_schema().id == "files.read_file"
    assert inspect.iscoroutinefunction(fn)
    with pytest.raises(RuntimeError, match="outside an active execution"):
        await fn(path="a")
    # the same list again changes nothing and keeps the callables; a new list replaces them
    assert not server._install([_tool("read_file", schema, "Read a file."), _tool("weird name")])
    assert server["files.read_file"] is fn
    assert server._install([_tool("read_file", schema, "Read one file.")])
    assert server.tool_ids == ["files.read_file"] and server["files.read_file"] is not fn
    with pytest.raises(KeyError, match="available: \\['files.read_file'\\]"):
        server["files.nope"]


async def test_call_without_a_connection_is_retryable() -> None:
    server = MCPServer("t", command="unused")
    with pytest.raises(ToolError) as info:
        await server._call("x", "t.x", {})
    assert info.value.retryable and "is not connected: it connects when agent.run()" in str(info.value)


# -------------------------------------------------------------------- config --
def test_from_config_mapping_and_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GH_TOKEN", "secret-token")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    config = {"mcpServers": {
        "time": {"command": "uvx", "args": ["mcp-server-time", "--tz=${UNSET_VAR:-UTC}"], "env": {"A": "1"},
                 "autoApprove": ["x"]},
        "github": {"type": "http", "url": "https://api.example/mcp/",
                   "headers": {"Authorization": "Bearer ${GH_TOKEN}"}, "prefix": "gh"},
        "off": {"command": "nothing", "disabled": True}}}
    time_server, github = MCPServer.from_config(config, retry_delay=0.5)
    assert (time_server.name, time_server.command, time_server.args, time_server.env) == (
        "time", "uvx", ["mcp-server-time", "--tz=UTC"], {"A": "1"})
    assert time_server.retry_delay == 0.5
    assert (github.prefix, github.url, github.headers) == ("gh", "https://api.example/mcp/",
                                                           {"Authorization": "Bearer secret-token"})
    path = tmp_path / "servers.json"
    path.write_text(json.dumps(config))
    assert [s.name for s in MCPServer.from_config(path)] == ["time", "github"]
    assert [s.name for s in MCPServer.from_config(str(path))] == ["time", "github"]


@pytest.mark.parametrize(("config", "message"), [
    ({}, 'expected an object with an "mcpServers" object'),
    ({"mcpServers": []}, 'expected an object with an "mcpServers" object'),
    ({"mcpServers": {"a": "npx"}}, "server 'a': expected an object, got str"),
    ({"mcpServers": {"a": {"args": ["x"]}}}, "server 'a': needs \"command\" (stdio) or \"url\""),
    ({"mcpServers": {"a": {"command": "x", "url": "http://h"}}}, "either command (stdio) or url"),
    ({"mcpServers": {"a": {"command": "x", "args": "y"}}}, "server 'a'.args: expected a list of strings"),
    ({"mcpServers": {"a": {"command": "x", "env": {"K": 1}}}}, "server 'a'.env.K: expected a string, got int"),
    ({"mcpServers": {"a": {"type": "sse", "url": "http://h/sse"}}}, "SSE transport is not supported"),
    ({"mcpServers": {"a": {"type": "ws", "url": "http://h"}}}, "unknown type 'ws'"),
    ({"mcpServers": {"a": {"type": "stdio", "url": "http://h"}}}, "type 'stdio' does not match"),
    ({"mcpServers": {"a": {"url": "ftp://h"}}}, "server 'a': MCPServer 'a': url must start with http"),
    ({"mcpServers": {"a b": {"command": "x"}}}, "pass prefix="),
    ({"mcpServers": {"a": {"command": "${NOT_SET_ANYWHERE}"}}}, "environment variable NOT_SET_ANYWHERE is not set"),
])
def test_from_config_errors(config: dict, message: str) -> None:
    with pytest.raises(MCPConfigError) as info:
        MCPServer.from_config(config)
    assert message in str(info.value)


def test_from_config_file_errors(tmp_path) -> None:
    with pytest.raises(MCPConfigError, match="file not found"):
        MCPServer.from_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  \"mcpServers\": {,}\n}")
    with pytest.raises(MCPConfigError, match="bad.json: invalid JSON at line 2 column 18"):
        MCPServer.from_config(bad)
    with pytest.raises(MCPConfigError, match="cannot read it"):
        MCPServer.from_config(tmp_path)
