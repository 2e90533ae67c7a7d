"""The JUnit XML report of ``ptq run`` (``outputs.junit``), in the form CI systems read.

Jenkins (junit plugin), GitLab (``artifacts:reports:junit``), GitHub actions that publish test
results and Azure Pipelines all read the Ant JUnit format: a ``testsuites`` root holding
``testsuite`` elements with counts (``tests``, ``failures``, ``errors``, ``skipped``) and a
``time`` in seconds; each ``testcase`` has a ``name`` and ``classname`` and at most one of
``failure`` (a check that did not hold), ``error`` (the test could not run) or ``skipped``, each
with a ``message`` attribute and text.  Here each stage and each check of the gate is a test
case, in a fixed order; no timestamp or host name, so that only the times change between runs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptqcli.pipeline.run import RunResult

CLASSNAME = "ptq.run"


def _seconds(x: float) -> str:
    return f"{x:.3f}"


def as_xml(result: RunResult) -> bytes:
    """The report as UTF-8 XML with a declaration."""
    from ptqcli.pipeline.run import failed
    from ptqcli.pipeline.summary import as_text

    cases: list[ET.Element] = []
    for stage in result.stages:
        case = ET.Element("testcase", {"name": stage.name, "classname": CLASSNAME, "time": _seconds(stage.seconds)})
        if stage.status == "error":
            ET.SubElement(case, "error", {"message": stage.message, "type": "PtqError"}).text = stage.message
        elif stage.status == "skipped":
            ET.SubElement(case, "skipped", {"message": stage.message})
        cases.append(case)
    for name in ("max_drop", "min_sqnr"):
        limit = getattr(result.config.gate, name)
        if limit is None:
            continue
        case = ET.Element("testcase", {"name": f"gate {name}", "classname": CLASSNAME, "time": _seconds(0.0)})
        check = next((c for c in result.checks if c.name == name), None)
        stage = failed(result.stages)
        if check is None and stage is not None:
            ET.SubElement(case, "skipped", {"message": f"not run: {stage} failed"})
        elif check is None:  # the gate could not be measured
            reason = str(result.error) if result.error is not None else "not measured"
            ET.SubElement(case, "error", {"message": reason, "type": "PtqError"}).text = reason
        elif not check.passed:
            ET.SubElement(case, "failure", {"message": check.text, "type": "GateFailed"}).text = check.text
        else:
            ET.SubElement(case, "system-out").text = check.text
        cases.append(case)
    counts = {kind: sum(1 for c in cases if c.find(kind) is not None) for kind in ("failure", "error", "skipped")}
    attrs = {"tests": str(len(cases)), "failures": str(counts["failure"]), "errors": str(counts["error"]),
             "skipped": str(counts["skipped"]), "time": _seconds(result.seconds)}
    root = ET.Element("testsuites", {"name": "ptq run", **attrs})
    suite = ET.SubElement(root, "testsuite", {"name": result.name, **attrs})
    properties = ET.SubElement(suite, "properties")
    config = result.config
    for key, value in (("model", config.model), ("quantized_model", config.outputs.model),
                       ("table", config.outputs.table), ("method", config.calibrate.options.method),
                       ("status", result.status), ("exit_code", result.exit_code)):
        ET.SubElement(properties, "property", {"name": key, "value": str(value)})
    suite.extend(cases)
    ET.SubElement(suite, "system-out").text = as_text(result)
    ET.indent(root, space=" ")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
