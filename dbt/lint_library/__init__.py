"""What sqlfluff's jinja templater needs, beyond its dbt builtins, to render the models without a database.

`adapter.dispatch` resolves to the DuckDB (default) variant of a macro, as dbt does on the local target, and
`dbt.date_spine` renders a DuckDB series; linting then sees the SQL the local target runs.
"""

from __future__ import annotations

from typing import Any

from jinja2 import pass_context
from jinja2.runtime import Context


class _Adapter:
    @pass_context
    def dispatch(self, context: Context, macro_name: str, macro_namespace: str | None = None) -> Any:
        for prefix in ("duckdb__", "default__"):
            macro = context.get(prefix + macro_name)
            if macro is not None:
                return macro
        raise KeyError(f"no duckdb__ or default__ variant of macro {macro_name!r}")

    def quote(self, identifier: str) -> str:
        return f'"{identifier}"'


class _Dbt:
    def date_spine(self, datepart: str, start_date: str, end_date: str) -> str:
        return (
            f"select cast(generate_series as date) as date_{datepart} "
            f"from generate_series({start_date}, {end_date}, interval 1 {datepart})"
        )


adapter = _Adapter()
dbt = _Dbt()
