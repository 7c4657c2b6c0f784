"""The README's reading path points at the right lines of abc_ppo.py and reward.py: each range starts where
its first named function or class starts and ends where its last one ends."""
import ast
import os
import re

from conftest import ROOT


def definitions(name):
    """{top-level function or class name: (its first line, decorators included; its last line)} of a file."""
    tree = ast.parse(open(os.path.join(ROOT, name)).read())
    return {n.name: (min([n.lineno] + [d.lineno for d in n.decorator_list]), n.end_lineno) for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_reading_path_line_numbers_match_the_code():
    readme = open(os.path.join(ROOT, "README.md")).read()
    path = readme[readme.index("## Reading the code"):readme.index("## The walkthrough")]
    rows = [row for row in path.splitlines() if row.startswith("| ") and "lines" in row and "lines 1–" not in row]
    assert len(rows) >= 10
    for row in rows:
        defined = definitions("reward.py" if "`reward.py`" in row else "abc_ppo.py")
        first, last = map(int, re.search(r"lines (\d+)–(\d+)", row).groups())
        where = row.split("|")[2]  # the "where" column names what the lines hold, in order
        names = [n for n in re.findall(r"`(\w+)`", where) if n in defined]
        assert names, row
        assert all(first <= defined[n][0] and defined[n][1] <= last for n in names), row  # each inside
        assert (first, last) == (defined[names[0]][0], defined[names[-1]][1]), row  # both ends exact
    code = open(os.path.join(ROOT, "abc_ppo.py")).read().splitlines()
    assert "The masks" in code[int(re.search(r"one comment at line (\d+)", path).group(1)) - 1]
    doc_end = int(re.search(r"`abc_ppo.py` lines 1–(\d+)", path).group(1))
    assert code[doc_end - 1] == '"""' and code[0].startswith('"""')  # the top docstring, whole


def test_the_verdict_table_is_the_frontier_studys_own():
    """Every row of the README's verdict table and of results.md's is a row that studies/frontier/frontier.py
    wrote to studies/frontier/frontier.md: no figure in the verdict is typed by hand."""
    written = set(open(os.path.join(ROOT, "studies/frontier/frontier.md")).read().splitlines())
    for doc, start, end in (("README.md", "## Which credit should I use?", "\n## "),
                            ("docs/results.md", "### The verdict table", "\n### ")):
        text = open(os.path.join(ROOT, doc)).read()
        section = text[text.index(start):]
        section = section[:section.index(end, len(start))]
        rows = [row for row in section.splitlines() if row.startswith("| ") and " ± " in row]
        assert len(rows) == 14, doc  # 2 settings x (4 KL + 3 compute budgets)
        assert [row for row in rows if row not in written] == [], doc
