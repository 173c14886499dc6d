"""The MCP edge: firebox's sandboxes as tools for agents, served by the daemon at ``/mcp``."""
