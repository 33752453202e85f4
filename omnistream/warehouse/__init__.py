"""The warehouse: running the dbt project (dbt/) against DuckDB or Snowflake, and loading the history."""
