"""The float graph every stage works on: load, check and prepare a model (``prepared``), fold
affine operators into convolutions (``fold``), index it (``index``), and the operator tables that
say how each operator takes part in quantization (``ops``)."""

from ptqcli.graph.index import GraphIndex, InputSpec, attr, input_specs, opset, text_attr
from ptqcli.graph.prepared import MIN_OPSET, Prepared, fingerprint, load, prepare, subgraph_note

__all__ = ["GraphIndex", "InputSpec", "MIN_OPSET", "Prepared", "attr", "fingerprint", "input_specs", "load",
           "opset", "prepare", "subgraph_note", "text_attr"]
