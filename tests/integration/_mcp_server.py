"""A small MCP server for the tests, written with the ``mcp`` 2.x SDK (``MCPServer``).

Run it over stdio (``python _mcp_server.py``) or streamable HTTP
(``python _mcp_server.py --http PORT``, endpoint ``http://127.0.0.1:PORT/mcp``).
Its tools cover every kind of result the rebuno mapping handles, plus ways to die.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent

app = MCPServer("rebuno-test-server", log_level="ERROR")


@app.tool()
def add(a: int, b: int = 1) -> int:
    """Add two integers (structured result: {"result": a + b})."""
    return a + b


@app.tool(structured_output=False)
def shout(text: str) -> str:
    """Upper-case a text (one text content item, no structured content)."""
    return text.upper()


@app.tool()
def lines(n: int) -> CallToolResult:
    """n text items, no structured content."""
    return CallToolResult(content=[TextContent(text=f"line {i}") for i in range(n)])


@app.tool()
def picture() -> CallToolResult:
    """A text item and a 1x1 PNG image."""
    return CallToolResult(content=[TextContent(text="a red dot"),
                                   ImageContent(data="iVBORw0KGgo=", mime_type="image/png")])


@app.tool()
def fail(reason: str) -> str:
    """Always reports an error result (isError)."""
    raise ToolError(f"refused: {reason}")


@app.tool()
def secret() -> str:
    """The REBUNO_TEST_SECRET environment variable of the server process."""
    return os.environ.get("REBUNO_TEST_SECRET", "<unset>")


@app.tool()
def auth_header(ctx: Context) -> str:
    """The Authorization header of the HTTP request ("" over stdio)."""
    return (ctx.headers or {}).get("authorization", "")


@app.tool()
async def slow(seconds: float) -> str:
    """Sleep, then answer."""
    await asyncio.sleep(seconds)
    return "slept"


@app.tool()
def crash_once(marker: str) -> str:
    """Kill the server process the first time (creates ``marker``); answer afterwards."""
    path = Path(marker)
    if not path.exists():
        path.write_text("crashed")
        os._exit(3)
    return "survived"


@app.tool(name="weird name/v2")
def weird() -> str:
    """A tool whose MCP name is not a valid rebuno tool id segment."""
    return "weird ok"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=0, help="serve streamable HTTP on this loopback port")
    args = parser.parse_args()
    if args.http:
        app.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        app.run()


if __name__ == "__main__":
    main()
