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


def cycle(graph):
    """A circle in {module: modules it imports}, as a list that starts and ends with the same module; None."""
    done, path = set(), []

    def visit(m):
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return None
        path.append(m)
        found = next((c for n in sorted(graph.get(m, ())) if (c := visit(n))), None)
        path.pop()
        done.add(m)
        return found

    return next((c for m in sorted(graph) if (c := visit(m))), None)


def test_the_project_import_graph_has_no_circle():
    names = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py"))}
    graph = {n: imported(os.path.join(ROOT, n + ".py")) & names - {n} for n in names}
    assert cycle(graph) is None, " -> ".join(cycle(graph))
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail


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
