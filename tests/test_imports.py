"""The import graph has no circle: abc_ppo.py imports its modules, and no module imports abc_ppo."""
import ast
import glob
import os
import subprocess
import sys

from conftest import ROOT, tiny_args

SCRIPTS = {"abc_ppo.py", "walkthrough.py"}  # walkthrough.py drives abc_ppo.py, as the tests do; nothing imports it


def imported(path):
    """Every module name an import statement in the file names, at any depth (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_imports_abc_ppo():
    modules = [p for p in glob.glob(os.path.join(ROOT, "*.py")) if os.path.basename(p) not in SCRIPTS]
    assert len(modules) >= 8  # reward, presets, credit, checkpoints, retokenize, speed, mini, plot
    assert [os.path.basename(p) for p in modules if "abc_ppo" in imported(p)] == []


def test_the_script_is_loaded_once(tiny, tmp_path):
    # Run as a script (__main__) for --explain, --faithfulness and a training step, the paths that
    # used to import abc_ppo a second time as a module.
    code = ("import runpy, sys\n"
            "for argv in sys.argv[1:]:\n"
            "    sys.argv = ['abc_ppo.py', *argv.split('|')]\n"
            "    runpy.run_path('abc_ppo.py', run_name='__main__')\n"
            "assert 'abc_ppo' not in sys.modules, 'abc_ppo.py was imported as a module'\n")
    runs = [tiny_args(tiny, tmp_path, "--explain", "the film was good", "--prompt_len", "2"),
            tiny_args(tiny, tmp_path, "--faithfulness", "5"),
            tiny_args(tiny, tmp_path, "--steps", "1")]
    r = subprocess.run([sys.executable, "-c", code, *("|".join(a) for a in runs)], cwd=ROOT, capture_output=True,
                       text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr[-2000:]
