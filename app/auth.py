"""API keys: `X-API-Key` must be one of `SNE_API_KEYS` when any are configured (else the API is open)."""
from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from app.errors import APIError

API_KEY_HEADER = "X-API-Key"
_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="Required when SNE_API_KEYS is set.")


def key_accepted(key: str, keys: list[str]) -> bool:
    """Constant-time comparison against every configured key."""
    given = key.encode()
    matches = [hmac.compare_digest(given, k.encode()) for k in keys]  # every key compared, no early exit
    return any(matches)


async def require_api_key(request: Request, api_key: str | None = Security(_scheme)) -> None:
    """401 when keys are configured and the request has none or a wrong one. Runs before the body is read."""
    keys = request.app.state.settings.api_keys
    if not keys:
        return
    # close the connection: never read (drain) a body, possibly gigabytes, that will not be used
    headers = {"WWW-Authenticate": API_KEY_HEADER, "Connection": "close"}
    if not api_key:
        raise APIError(401, "unauthorized", f"missing {API_KEY_HEADER} header: this service requires an API key", headers)
    if not key_accepted(api_key, keys):
        raise APIError(401, "unauthorized", f"the {API_KEY_HEADER} given is not a key this service accepts", headers)
