"""Request bodies of the access reviews' API (``/v1/reviews``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from tether.agents.schemas import AgentId, UserRef
from tether.fields import NO_NUL, AwareDatetime, StrictModel

Note = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=NO_NUL)]
MAX_OWNERS = 1_000
MAX_AGENTS = 10_000


class ReviewCreate(StrictModel):
    """``POST /v1/reviews``: whose agents to review — the agents of ``owners`` and the
    ``agents`` named (both absent: every active agent) — by when (``due``, in the future;
    default 30 days from now), and why."""

    owners: Annotated[list[UserRef], Field(max_length=MAX_OWNERS)] | None = None
    agents: Annotated[list[AgentId], Field(max_length=MAX_AGENTS)] | None = None
    due: AwareDatetime | None = None
    note: Note | None = None


class AnswerIn(StrictModel):
    """An owner's answer to one line: ``keep`` it, ``reduce`` (remove exactly what the line
    names) or ``retire`` the agent; reduce and retire act only once confirmed."""

    answer: Literal["keep", "reduce", "retire"]
    note: Note


class ConfirmIn(StrictModel):
    note: Note | None = None


class CloseIn(StrictModel):
    note: Note | None = None
