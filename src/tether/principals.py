"""Who is acting: a human user, an agent, or Tether itself. Audit events name them by ``ref``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str  # "user" | "agent" | "system"
    id: str
    name: str
    role: Role | None = None

    @property
    def ref(self) -> str:
        return "system" if self.kind == "system" else f"{self.kind}:{self.id}"

    @property
    def is_admin(self) -> bool:
        return self.kind == "system" or self.role is Role.ADMIN


SYSTEM = Principal(kind="system", id="system", name="tether")
