"""E2B's in-sandbox protocol (what E2B's ``envd`` serves inside each of its sandboxes),
answered by the daemon for the sandbox: the Connect RPC services process.py and
filesystem.py, and the HTTP routes of files_http.py. The message classes under proto/ are
generated from the .proto files there (scripts/gen-e2b-rpc)."""
