"""The imports form a tree: the root scripts import plumbing/, plumbing/ never imports a root script, tools/
and studies/ import plumbing/ (and reward.py) but never each other, no module imports abc_ppo.py, and
there is no circle."""
import ast
import glob
import os
import subprocess
import sys

from conftest import ROOT, tiny_args

ROOT_SCRIPTS = {"abc_ppo", "reward", "walkthrough"}  # the reading set, at the repository's root


def imported(path):
    """Every project module an import statement in the file names, at any depth (inside functions too),
    as dotted names: `from plumbing import credit` is plumbing.credit, `import reward` is reward."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def project_modules():
    """{dotted name: path} of every Python file of the project outside tests/ and bench/."""
    paths = glob.glob(os.path.join(ROOT, "*.py")) + glob.glob(os.path.join(ROOT, "plumbing", "*.py")) \
        + glob.glob(os.path.join(ROOT, "tools", "*.py")) + glob.glob(os.path.join(ROOT, "studies", "**", "*.py"),
                                                                  recursive=True)
    return {os.path.relpath(p, ROOT)[:-3].replace(os.sep, "."): p for p in paths}


def graph():
    """{module: the project modules it imports}."""
    modules = project_modules()
    return {m: {n for n in imported(p) if n in modules and n != m} for m, p in modules.items()}


def test_the_root_shows_the_reading_set():
    assert {m for m in project_modules() if "." not in m} == ROOT_SCRIPTS


def test_the_package_never_imports_a_script():
    g = graph()
    assert len([m for m in g if m.startswith("plumbing.")]) >= 10
    assert {m: sorted(deps & ROOT_SCRIPTS) for m, deps in g.items() if m.startswith("plumbing.") and deps & ROOT_SCRIPTS} == {}


def test_tools_and_studies_never_import_each_other():
    g = graph()
    outside = lambda m: m.startswith(("tools.", "studies."))
    assert [m for m in g if m.startswith("tools.")] and [m for m in g if m.startswith("studies.")]
    assert {m: sorted(filter(outside, deps)) for m, deps in g.items() if outside(m) and any(map(outside, deps))} == {}


def test_only_the_walkthrough_imports_abc_ppo():
    assert sorted(m for m, deps in graph().items() if "abc_ppo" in deps) == ["walkthrough"]


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
    g = graph()
    assert cycle(g) is None, " -> ".join(cycle(g))
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail
    g["plumbing.presets"] = g["plumbing.presets"] | {"plumbing.mini"}  # the circle an earlier layout had
    assert cycle(g) is not None


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
