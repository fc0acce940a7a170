"""A line reader process (:mod:`tasks.io.line_workers`): ``python -m tasks.io.line_worker_main``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType


class NoPandas(MetaPathFinder):
    """Refuses to import pandas.

    pyarrow imports pandas at its first array conversion, only to recognise pandas objects: half a second of CPU and
    60 MB in every worker, which converts NumPy arrays and lists only. Without pandas, pyarrow skips that check.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        """Raise ``ModuleNotFoundError`` for pandas and its submodules; other modules are left to the next finders."""
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError(f"{fullname} is not imported by a line reader process", name=fullname)
        return None


def main() -> None:
    """Serve files until the parent closes this process's input."""
    sys.meta_path.insert(0, NoPandas())
    from tasks.io.line_workers import serve

    serve()


if __name__ == "__main__":
    main()
