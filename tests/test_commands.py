"""Every command that the README and the docs show names a file that exists, and each Python tool among
them answers --help (a study script is only checked to exist: running it starts hours of runs)."""
import glob
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

DOCS = ["README.md", *glob.glob("docs/*.md", root_dir=ROOT), *glob.glob("studies/**/*.md", root_dir=ROOT, recursive=True)]
COMMAND = re.compile(r"(?:^|[\s`(])(python |bash |\./)([\w./-]+\.(?:py|sh))\b")  # ./x.sh runs under bash


def documented():
    """{(interpreter, path): the first document that shows it}."""
    found = {}
    for doc in DOCS:
        for m in COMMAND.finditer(open(os.path.join(ROOT, doc)).read()):
            found.setdefault(("python" if m.group(1) == "python " else "bash", m.group(2).removeprefix("./")), doc)
    return found


def test_the_docs_show_commands_of_every_kind():
    paths = {path for _, path in documented()}
    for expected in ("abc_ppo.py", "tools/report.py", "tools/build_mini.py", "tools/mechanism.py", "bench/bench_step.py",
                     "studies/builds/study.sh", "studies/beta/beta.py", "studies/builds/pooled.py", "run_imdb.sh"):
        assert expected in paths


@pytest.mark.parametrize("interpreter, path", sorted(documented()))
def test_each_documented_command_runs(interpreter, path):
    where = documented()[interpreter, path]
    assert os.path.isfile(os.path.join(ROOT, path)), f"{where} shows {interpreter} {path}, which does not exist"
    source = open(os.path.join(ROOT, path)).read()
    if interpreter == "python" and "argparse" in source and path != "walkthrough.py":
        r = subprocess.run([sys.executable, path, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert r.returncode == 0 and "usage" in r.stdout, f"{path} --help: {r.stderr[-500:]}"
