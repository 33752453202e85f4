-- Load the named files. Snowflake keeps load metadata per table and file for 64 days and skips a file it has
-- loaded already (LOAD_SKIPPED), so a re-run loads nothing twice; FORCE stays off on purpose.
-- {include_metadata} is `include_metadata = (source_file = metadata$filename)` unless switched off.
copy into {schema}.{table}
from @{schema}.{stage}
files = ({files})
file_format = (type = parquet)
match_by_column_name = case_insensitive
{include_metadata}
on_error = abort_statement;
