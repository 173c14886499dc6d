"""The E2B edge: E2B's own SDKs (Python and JavaScript, unchanged) talk to firebox.

Three protocols, each a thin translation onto the same manager, agent client and agent as
firebox's own API (docs/E2B.md):

- control.py: E2B's control API (``E2B_API_URL`` = the daemon's URL + ``/e2b``), with its
  template builds in templates.py and their names and tags in template_names.py, onto
  firebox's one template service (server/templates);
- envd/: E2B's in-sandbox protocol (Connect RPC ``process`` and ``filesystem``, ``/files``);
- interpreter.py: E2B's code-interpreter protocol (``/execute``, ``/contexts``).

In-sandbox requests (``E2B_SANDBOX_URL`` = the daemon's URL) name their sandbox in the
``E2b-Sandbox-Id`` header; routing.py sends them to sandbox_app.py, and access.py decides
whether they may reach it.
"""
