"""firebox: run untrusted, LLM-generated code in isolated sandboxes on your own host."""

__version__ = "0.1.0"
