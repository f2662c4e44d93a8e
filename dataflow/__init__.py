"""The dataflow job type (issue 15): producers feed binlog servers, one chain per binlog passes the
records through a DDL barrier to sink files, exactly once across failures; a report checks the files
and measures. docs/dataflow.md has the design and the argument."""
