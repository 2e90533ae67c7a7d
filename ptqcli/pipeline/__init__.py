"""``ptq run``: the whole workflow from one TOML file, with a gate (``config`` reads and writes
the file, ``run`` sequences the API's verbs, ``summary`` and ``junit`` write the reports)."""
