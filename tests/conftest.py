"""Session-wide isolation: Metaflow gets a user and a private datastore before it is imported."""

import os
import tempfile

# Set before any test module imports metaflow: its config is read at import time.
_SESSION_ROOT = tempfile.mkdtemp(prefix="recmodel-tests-")
os.environ.setdefault("METAFLOW_USER", "recmodel-tests")
os.environ["METAFLOW_DATASTORE_SYSROOT_LOCAL"] = _SESSION_ROOT
os.environ["METAFLOW_HOME"] = os.path.join(_SESSION_ROOT, "home")
os.environ.setdefault("OMP_NUM_THREADS", "2")

# torch imports its compiler stack lazily, on the first optimizer it builds. Once a test has
# driven metaflow.Runner / the Client API in this process, that late import fails inside
# typing ("Type parameter ... without a default follows type parameter with a default"), so
# it is imported here, first.
import torch._dynamo  # noqa: E402, F401
