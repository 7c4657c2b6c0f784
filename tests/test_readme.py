"""The README's reading path points at the right lines of abc_ppo.py."""
import os
import re

from conftest import ROOT


def test_reading_path_line_numbers_match_the_code():
    readme = open(os.path.join(ROOT, "README.md")).read()
    path = readme[readme.index("## Reading the code"):readme.index("## The walkthrough")]
    code = open(os.path.join(ROOT, "abc_ppo.py")).read().splitlines()
    defined = {m.group(2): i + 1 for i, line in enumerate(code) if (m := re.match(r"(def|class) (\w+)", line))}
    rows = [row for row in path.splitlines() if row.startswith("| ") and "lines" in row and "abc_ppo" not in row
            and "reward.py" not in row]
    assert len(rows) == 8
    for row in rows:
        first, last = map(int, re.search(r"lines (\d+)–(\d+)", row).groups())
        names = [n for n in re.findall(r"`(\w+)`", row) if n in defined]
        assert names and all(first <= defined[n] <= last for n in names), row
    mask_line = int(re.search(r"one comment at line (\d+)", path).group(1))
    assert "The masks" in code[mask_line - 1]
    reward_lines = len(open(os.path.join(ROOT, "reward.py")).read().splitlines())
    assert reward_lines == int(re.search(r"all (\d+) lines", path).group(1))
