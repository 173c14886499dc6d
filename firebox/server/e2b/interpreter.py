"""E2B's code-interpreter protocol (port 49999): ``/execute`` and ``/contexts``."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
