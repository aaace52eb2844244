"""Exit codes and the usage error shared by every meshctl command.

They live apart from `meshctl.cli` so that `python -m meshctl.cli`, which loads that file a
second time as `__main__`, still catches the same `UsageError` class the commands raise.
"""

from __future__ import annotations

from controlplane.errors import MeshError

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


class UsageError(MeshError):
    """Invalid arguments that argparse cannot detect, such as a folder that does not exist."""
