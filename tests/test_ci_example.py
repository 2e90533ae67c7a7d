"""The CI examples in the README work: the GitHub Actions workflow's commands, run as written on
the sample model laid out as the README's quantize.toml expects, and the GitLab job's agreement
with them.  The one step not run is "Install ptq": the test runs in the environment it would
create, with this checkout's ptq first on PATH."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import yaml
from conftest import ROOT, SAMPLES, valid_junit

INSTALL = "Install ptq"


def readme_blocks(language: str, after: str) -> list[str]:
    """The ```language blocks of the README's section that starts at the heading ``after``."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(after):]
    section = section[:section.index("\n### ", 1)]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


SECTION = "### `ptq run CONFIG.toml`"


def project(tmp_path: pathlib.Path) -> pathlib.Path:
    """A repository as the README's example has it: quantize.toml, models/, data/ (the first
32 calibration and 64 evaluation samples of the sample data)."""
    (tmp_path / "models").mkdir()
    shutil.copy(SAMPLES / "digits_cnn.onnx", tmp_path / "models" / "digits_cnn.onnx")
    for name, count in (("calib", 32), ("eval", 64)):  # fewer samples than the sample data: a fast test
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for f in sorted((SAMPLES / "digits" / name).glob("*.npy"))[:count]:
            shutil.copy(f, folder / f.name)
    labels = (SAMPLES / "digits" / "eval" / "labels.csv").read_text().splitlines()
    (tmp_path / "data" / "eval" / "labels.csv").write_text("\n".join(labels[:65]) + "\n")
    (config,) = readme_blocks("toml", SECTION)
    (tmp_path / "quantize.toml").write_text(config)
    return tmp_path


def test_the_github_workflow_runs_as_written(tmp_path):
    workflows = [yaml.safe_load(b) for b in readme_blocks("yaml", SECTION)]
    github = next(w for w in workflows if "jobs" in w)
    (job,) = github["jobs"].values()
    steps = job["steps"]
    assert [s["name"] for s in steps if "run" in s][0] == INSTALL
    assert "pip install" in next(s["run"] for s in steps if s.get("name") == INSTALL)
    folder = project(tmp_path)
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    ran = []
    for step in steps:
        if "run" not in step or step["name"] == INSTALL:
            continue
        done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, (step["name"], done.stdout, done.stderr)
        ran.append(step["run"])
    assert ran == ["ptq run quantize.toml", "ptq run --print-config quantize.toml"]
    uploads = [s["with"] for s in steps if "with" in s and ("path" in s["with"] or "report_paths" in s["with"])]
    (artifacts,) = [u["path"] for u in uploads if "path" in u]
    (report,) = [u["report_paths"] for u in uploads if "report_paths" in u]
    assert (folder / artifacts / "digits_cnn.int8.onnx").is_file() and (folder / artifacts / "summary.json").is_file()
    valid_junit(folder / report)


def test_the_gitlab_job_runs_the_same_commands_and_reads_the_same_report():
    workflows = [yaml.safe_load(b) for b in readme_blocks("yaml", SECTION)]
    github = next(w for w in workflows if "jobs" in w)
    (gitlab,) = [w for w in workflows if "jobs" not in w]
    (job,) = gitlab.values()
    commands = [s["run"] for s in next(iter(github["jobs"].values()))["steps"] if "run" in s]
    assert job["script"] == commands[:2]
    report = next(s["with"]["report_paths"] for s in next(iter(github["jobs"].values()))["steps"]
                  if "report_paths" in s.get("with", {}))
    assert job["artifacts"]["reports"]["junit"] == report and job["artifacts"]["when"] == "always"
