"""Ready-made runner programs: host tools on any machine that can reach the broker.

- :mod:`runners.fs` — read-only filesystem inspection of one directory
  (``python -m runners.fs --root DIR``).
- :mod:`runners.mcp` — host the MCP servers of an ``mcpServers`` config file, no code
  (``rebuno runner --runner-id ID --mcp-config servers.json``).
"""
