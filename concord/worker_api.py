"""A running worker's web API as the commands read it: its address, and its token if it has one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class WorkerAPI:
    """Where a worker answers (e.g. http://127.0.0.1:6066) and the CONCORD_API_TOKEN it requires."""

    base_url: str
    token: str | None = None

    def get(
        self, path: str, *, timeout: float, params: dict[str, Any] | None = None
    ) -> httpx.Response:
        """GET `path` (e.g. "/kpis"), with the bearer token when there is one."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return httpx.get(
            self.base_url.rstrip("/") + path, params=params, headers=headers, timeout=timeout
        )
