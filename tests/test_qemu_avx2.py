"""ONNX Runtime's x86 AVX2 kernels (no VNNI), whatever CPU the suite runs on.

``qemu-x86_64 -cpu Haswell`` shows ONNX Runtime a CPU with AVX2 and FMA but no VNNI, so it
dispatches the kernels that add uint8 x int8 products in saturating int16 pairs.  The sample
CNN's default export (``--cpu any``) and an unsafe one (``--cpu x86-vnni``, full 8-bit weights)
run there, inside ``ptq simulate --cpu x86-avx2 --per-layer``: ONNX Runtime's codes on every
quantized tensor are compared with the simulator's model of those kernels, and the default
export's accuracy with the reference arithmetic run natively.  ``make test`` installs qemu-user.
"""

import json
import platform
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from ptqcli import api
from ptqcli.analysis.evaluate import read_labels
from ptqcli.observe.dataset import list_samples
from ptqcli.quantize.decide import CalibrationOptions

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                                reason="x86 kernels: qemu-x86_64 runs the x86 build of this virtualenv's Python")
SAMPLES = 24

SCRIPT = """
import json, sys
from ptqcli.observe.dataset import ImageSpec
from ptqcli.sim.report import simulation_report
from contextlib import nullcontext
model, data, labels, limit, *tables = sys.argv[1:]
out = {}
for table in tables:
    report = simulation_report(model, table, data, labels=labels, batch_size=None, limit=int(limit), image=ImageSpec(),
                               per_layer=True, requant="fp32", cpu="x86-avx2", progress=lambda n: nullcontext(lambda k: None))
    out[table] = report.as_json()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def under_qemu(tmp_path_factory, cnn_model, calib_dir, eval_dir):
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.fail("qemu-x86_64 not found: `make test` installs Debian's qemu-user (or: apt-get install qemu-user)")
    out = tmp_path_factory.mktemp("qemu")
    tables = {}
    for cpu in ("any", "x86-vnni"):
        r = api.calibrate(cnn_model, data=calib_dir, output=out / f"{cpu}.json", options=CalibrationOptions(cpu=cpu))
        tables[cpu] = r.table_path
    cmd = [qemu, "-cpu", "Haswell", sys.executable, "-c", SCRIPT, str(cnn_model), str(eval_dir),
           str(eval_dir / "labels.csv"), str(SAMPLES)] + [str(t) for t in tables.values()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = json.loads(done.stdout)
    return tables, {cpu: reports[str(path)] for cpu, path in tables.items()}


def test_qemu_runs_the_saturating_kernels(under_qemu):
    _, reports = under_qemu
    for report in reports.values():
        assert report["ort_arithmetic"]["cpu"] == "x86-avx2"  # else this file proves nothing


def test_the_simulator_predicts_every_code_of_the_avx2_kernels(under_qemu):
    _, reports = under_qemu
    for cpu, report in reports.items():
        layers = report["layers"]
        assert len(layers) >= 10
        assert all(layer["codes_equal"] == 1.0 for layer in layers), (cpu, layers)
        assert report["accuracy"]["sim"] == report["accuracy"]["ort"]


def test_the_default_export_does_not_saturate_and_the_unsafe_one_does_where_the_simulator_says(under_qemu):
    _, reports = under_qemu
    assert reports["any"]["saturations"] == []
    saturated = {s["node"]: s["count"] for s in reports["x86-vnni"]["saturations"]}
    assert saturated.get("/stem/stem.0/Conv", 0) > 1000  # the first Conv sees raw image codes near 255
    assert reports["x86-vnni"]["accuracy"]["ort"] < reports["any"]["accuracy"]["ort"]


def test_the_default_export_on_avx2_keeps_the_accuracy_of_the_reference_arithmetic(under_qemu, tmp_path, cnn_model,
                                                                                    eval_dir):
    tables, reports = under_qemu
    qdq = api.export(cnn_model, tables["any"], tmp_path / "any.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(qdq), options, providers=["CPUExecutionProvider"])
    files = list_samples(eval_dir, limit=SAMPLES)
    labels = read_labels(eval_dir / "labels.csv")
    pred = session.run(None, {"image": np.concatenate([np.load(f) for f in files])})[0].argmax(1)
    reference = float(np.mean(pred == np.array([labels[f.name] for f in files])))
    assert reports["any"]["accuracy"]["ort"] == reference
