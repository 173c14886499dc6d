"""The web dashboard (``/dashboard``): sandboxes live, one sandbox's insides, the host."""
