"""Every domain's tables, imported so Alembic and tests see one metadata."""

from tether.agents import models as _agents  # noqa: F401
from tether.audit import models as _audit  # noqa: F401
from tether.credentials import models as _credentials  # noqa: F401
from tether.db.base import Base
from tether.users import models as _users  # noqa: F401

metadata = Base.metadata
