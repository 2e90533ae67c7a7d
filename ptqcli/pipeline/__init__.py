"""The workflows the API sequences: ``calibrate``, the stages of one calibration (checks,
prepare, observe, table, rounding) that ``ptqcli.api.calibrate`` runs in order; and ``ptq run``,
the whole workflow from one TOML file, with a gate (``config`` reads and writes the file, ``run``
sequences the API's verbs, ``summary`` and ``junit`` write the reports)."""
