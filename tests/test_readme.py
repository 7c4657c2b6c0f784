"""The README's reading path points at the right lines of abc_ppo.py and reward.py."""
import os
import re

from conftest import ROOT


def definitions(name):
    """{function or class name: its line} in a top-level file, and the file's lines."""
    code = open(os.path.join(ROOT, name)).read().splitlines()
    return {m.group(2): i + 1 for i, line in enumerate(code) if (m := re.match(r"(def|class) (\w+)", line))}, code


def test_reading_path_line_numbers_match_the_code():
    readme = open(os.path.join(ROOT, "README.md")).read()
    path = readme[readme.index("## Reading the code"):readme.index("## The walkthrough")]
    rows = [row for row in path.splitlines() if row.startswith("| ") and "lines" in row and "lines 1–" not in row]
    assert len(rows) >= 10
    for row in rows:
        defined, _ = definitions("reward.py" if "`reward.py`" in row else "abc_ppo.py")
        first, last = map(int, re.search(r"lines (\d+)–(\d+)", row).groups())
        where = row.split("|")[2]  # the "where" column names what the lines hold
        names = [n for n in re.findall(r"`(\w+)`", where) if n in defined]
        assert names and all(first <= defined[n] <= last for n in names), row
    _, code = definitions("abc_ppo.py")
    assert "The masks" in code[int(re.search(r"one comment at line (\d+)", path).group(1)) - 1]
    assert len(code) == int(re.search(r"§9 `main`, lines \d+–(\d+)", path).group(1))  # main runs to the end
