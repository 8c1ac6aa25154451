"""An example upstream MCP server: payments and tickets (see server.py)."""
