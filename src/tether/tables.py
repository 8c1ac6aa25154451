"""Every domain's tables, imported so Alembic and tests see one metadata.

Above the domains (each owns its tables in its own ``models.py``), so that ``tether.db``
imports no domain: the storage layer is below them all."""

from tether.agents import models as _agents  # noqa: F401
from tether.alerts import models as _alerts  # noqa: F401
from tether.approvals import models as _approvals  # noqa: F401
from tether.audit import models as _audit  # noqa: F401
from tether.credentials import models as _credentials  # noqa: F401
from tether.db.base import Base
from tether.freeze import models as _freeze  # noqa: F401
from tether.gateway import models as _gateway  # noqa: F401
from tether.governance import report_models as _reports  # noqa: F401
from tether.governance import review_models as _reviews  # noqa: F401
from tether.monitor import models as _monitor  # noqa: F401
from tether.policy import models as _policy  # noqa: F401
from tether.rollback import models as _rollback  # noqa: F401
from tether.runtime import models as _runtime  # noqa: F401
from tether.secrets import models as _secrets  # noqa: F401
from tether.users import models as _users  # noqa: F401

metadata = Base.metadata
