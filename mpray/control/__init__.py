"""The control store (the paper's GCS as a SQLite file per node) and the tools that read it:
sessions, the recorder and writer, the state API's queries, the timeline, logs, the report."""
