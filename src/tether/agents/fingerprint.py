"""Agent fingerprints: a digest of what the agent *is* (model, version, prompt, tools).

A change of any part changes the digest; for a ``high``-risk agent that is a new agent in
all but name, so the registry suspends it until a human re-approves (resumes) it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from tether.jsonutil import canonical

PARTS = ("model", "model_version", "prompt_sha256", "tools_sha256")


def fingerprint_digest(parts: dict[str, Any]) -> str:
    """``sha256:<hex>`` over the canonical JSON of the four parts (absent parts as null)."""
    body = {name: parts.get(name) for name in PARTS}
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def normalize(parts: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stored form: the four parts plus their ``digest``; ``None`` stays ``None``."""
    if parts is None:
        return None
    body = {name: parts.get(name) for name in PARTS}
    return {**body, "digest": fingerprint_digest(body)}
