"""An example upstream MCP server for the MCP conformance suite (see server.py)."""
