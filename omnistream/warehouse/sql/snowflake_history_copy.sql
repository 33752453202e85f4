-- Load the files. Snowflake keeps load metadata per table and file for 64 days and skips a file it has
-- loaded already (LOAD_SKIPPED), so a re-run loads nothing twice; FORCE stays off on purpose.
-- {files_clause} names the files of the external stage (`files = ('year=…/month=…/part-0.parquet', …)`, at
-- most 1000 a COPY); it is empty for the internal stage, which holds only what the loader PUT there.
-- {include_metadata} is `include_metadata = (source_file = metadata$filename)` unless switched off.
copy into {schema}.{table}
from @{schema}.{stage}
{files_clause}
file_format = (type = parquet)
match_by_column_name = case_insensitive
{include_metadata}
on_error = abort_statement;
