"""E2B's ``/files``: download (GET) and multipart / octet-stream / gzip upload (POST)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
