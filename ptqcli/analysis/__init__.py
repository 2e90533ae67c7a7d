"""Measuring a quantized model: metrics (``metrics``), float vs quantized on a data folder
(``evaluate``, ``report``) and layerwise sensitivity (``sensitivity``)."""
