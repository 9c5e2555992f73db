"""A non-editable install, as a user gets it from `pip install .`: build the wheel, install it into a fresh venv and
run the commands from a folder outside the checkout (and once from inside the checkout's notebooks/).

The venv reuses this interpreter's installed dependencies through a ``.pth`` line (a real install would fetch torch
again), and the wheel itself is installed with ``--no-deps``: what is tested is the wheel's own contents.
"""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, cwd, env, timeout=300):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist",
                  REPO], cwd=tmp, env=os.environ)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next((tmp / "dist").glob("mtlkit-*.whl"))
    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp, env=os.environ)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp,
                     env=os.environ).stdout.strip())
    # the dependencies (torch, papermill, ...) of this interpreter, appended after the venv's own site-packages;
    # a plain path line does not run that folder's .pth files, so the editable mtlkit there stays invisible
    (site / "zz_reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                      "--ignore-installed", wheel],  # the editable mtlkit of the reused deps is not "installed"
                     cwd=tmp, env=os.environ)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MTLKIT_DATA_DIR", "VIRTUAL_ENV")}
    env.update(XDG_CACHE_HOME=str(tmp / "xdg"), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    outside = tmp / "elsewhere"
    outside.mkdir()
    return {"tmp": tmp, "mtlkit": venv / "bin" / "mtlkit", "python": python, "env": env, "outside": outside,
            "data": tmp / "xdg" / "mtlkit"}


def test_the_wheel_carries_the_registry_and_runs_from_its_own_site_packages(wheel_venv):
    w = wheel_venv
    where = _run([w["python"], "-c", "import mtlkit, mtlkit.data.real.registry as r; print(mtlkit.__file__); "
                  "print(r.REGISTRY_PATH.is_file())"], cwd=w["outside"], env=w["env"])
    assert where.returncode == 0, where.stderr
    path, has_registry = where.stdout.split()
    assert str(w["tmp"] / "venv") in path and has_registry == "True"


def test_data_commands_work_from_a_foreign_folder(wheel_venv):
    w, run = wheel_venv, lambda *a: _run([wheel_venv["mtlkit"], *a], cwd=wheel_venv["outside"], env=wheel_venv["env"])
    listed = run("data", "list")
    assert listed.returncode == 0, listed.stderr
    assert "cityscapes" in listed.stdout and str(w["data"]) in listed.stdout  # the per-user data folder
    steps = run("data", "download", "cityscapes")  # manual source: prints the steps, fetches nothing
    assert steps.returncode == 0 and str(w["data"] / "raw" / "cityscapes") in steps.stdout
    raw = w["tmp"] / "city-raw"
    assert run("data", "twin", "cityscapes", "--layout", "official", "--out", raw).returncode == 0
    prepared = run("data", "prepare", "cityscapes", "--raw", raw)
    assert prepared.returncode == 0, prepared.stderr
    assert (w["data"] / "prepared" / "cityscapes").is_dir()
    verified = run("data", "verify", "cityscapes", "--root", w["data"] / "prepared" / "cityscapes")
    assert verified.returncode == 0 and "cityscapes: OK" in verified.stdout, verified.stdout + verified.stderr
    assert not any(p.name == "data" for p in w["outside"].iterdir())  # nothing written into the working folder


def test_doctor_assignments_and_reproduce_from_a_foreign_folder(wheel_venv):
    w, run = wheel_venv, lambda *a: _run([wheel_venv["mtlkit"], *a], cwd=wheel_venv["outside"], env=wheel_venv["env"])
    doctor = run("doctor")
    assert doctor.returncode == 0, doctor.stdout
    assert "registry" in doctor.stdout and "--notebooks-dir" in doctor.stdout and "--source DIR" in doctor.stdout

    missing = run("assignments", "list")
    assert missing.returncode == 2 and "--source DIR" in missing.stderr and len(missing.stderr.splitlines()) == 1
    listed = run("assignments", "list", "--source", REPO / "assignments" / "source")
    assert listed.returncode == 0 and "PS1_joint" in listed.stdout

    missing = run("reproduce", "--preset", "unit")
    assert missing.returncode == 2 and "--notebooks-dir" in missing.stderr and str(w["outside"]) in missing.stderr
    nbdir = w["tmp"] / "my-notebooks"
    nbdir.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('PRESET = "smoke"\nOUT_DIR = "."\nDEVICE = "auto"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import json, pathlib, mtlkit\nfrom mtlkit.paths import data_dir\n"
        "pathlib.Path(OUT_DIR, 'metrics.json').write_text(json.dumps({'runs': {}, 'file': mtlkit.__file__, "
        "'data': str(data_dir())}))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbdir / "00_where.ipynb")
    done = run("reproduce", "--preset", "unit", "--notebooks-dir", nbdir, "--out", w["tmp"] / "runs")
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads((w["tmp"] / "runs" / "00_where" / "metrics.json").read_text())
    assert str(w["tmp"] / "venv") in seen["file"] and seen["data"] == str(w["data"])  # the kernel agrees


def test_inside_a_checkout_the_wheel_uses_its_notebooks_and_data(wheel_venv):
    w = wheel_venv
    where = _run([w["python"], "-c", "from mtlkit.paths import data_dir, notebooks_dir; print(data_dir()); "
                  "print(notebooks_dir())"], cwd=REPO / "notebooks", env=w["env"])
    assert where.stdout.split() == [str(REPO / "data"), str(REPO / "notebooks")], where.stderr
    listed = _run([w["mtlkit"], "reproduce", "--notebooks", "99"], cwd=REPO / "notebooks", env=w["env"])
    assert listed.returncode == 2 and "00_data_and_tasks" in listed.stderr  # found the checkout's notebooks
