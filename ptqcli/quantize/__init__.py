"""From observations to a scale table: the integer groups of the graph (``plan``), which tensors
share a scale (``scale_groups``), ranges and precisions (``decide``), scales and zero points
(``qparams``), the per-tensor method search (``autosearch``) and the table file
(``scale_table``, with its JSON Schema in ``schema/``)."""
