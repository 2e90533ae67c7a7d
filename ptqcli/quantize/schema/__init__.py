"""The JSON Schema of the scale table (``scale_table.schema.json``), read by
``ptqcli.quantize.scale_table.schema`` through ``importlib.resources``."""
