"""Libraries a command's process never uses, refused at import so that a library probing for them goes on without.

PyArrow imports pandas, when it is installed, on its first ``pa.array(list)`` or ``pa.table(dict)``, only to ask
whether the value is a pandas object (33 MB resident, 0.3 CPU-seconds); and it imports numpy with itself (20 MB),
though since Arrow 16 numpy is optional and only ``to_numpy()`` and numpy inputs need it. keyflow never uses pandas
(a development dependency only), and the ETL (``keyflow etl``) never uses numpy: the events and trends commands do,
so numpy is refused for the ETL's commands only (BENCHMARKS.md, issue 15). Arrow, DuckDB, Prefect and Dask's client
take the answer as "not installed"; an explicit import fails with one line saying why.
"""

from __future__ import annotations

import sys

# What each library is refused with, and the commands (their first word) whose process refuses it; None: every one.
REFUSED: dict[str, tuple[str, frozenset[str] | None]] = {
    "pandas": ("keyflow's commands run without pandas", None),
    "numpy": ("keyflow's ETL runs without numpy", frozenset({"etl"})),
}


class _Without:
    """An import finder that answers "not installed" for one library and its submodules."""

    def __init__(self, name: str, message: str) -> None:
        self.name, self.message = name, message

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == self.name or name.startswith(self.name + "."):
            raise ModuleNotFoundError(self.message, name=name)


def keep_out(name: str) -> None:
    """Refuse ``name`` in this process (a command's), unless it is already imported or already refused."""
    if name not in sys.modules and not any(isinstance(f, _Without) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _Without(name, REFUSED[name][0]))


def keep_pandas_out() -> None:
    """Refuse pandas in this process: no keyflow command uses it."""
    keep_out("pandas")


def keep_out_what_the_command_does_not_use(argv: list[str]) -> list[str]:
    """Refuse what the command ``argv`` names (its first word that is not an option) never uses; return those names."""
    command = next((a for a in argv if not a.startswith("-")), None)
    names = [n for n, (_, commands) in REFUSED.items() if commands is None or command in commands]
    for name in names:
        keep_out(name)
    return names
