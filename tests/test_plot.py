"""Tests for tools/report.py, plumbing/runs.py and the studies' analyses on a tiny hand-made OUT dir (numbers worked out by hand below)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import plumbing.runs  # noqa: E402
from conftest import load_script  # noqa: E402

report = load_script("tools/report.py")
beta_study = load_script("studies/beta/beta.py")
pooled = load_script("studies/builds/pooled.py")
horizon = load_script("studies/builds/horizon.py")

PNG = b"\x89PNG\r\n\x1a\n"


def line(step, r, kl=0.1, tg=1.0, ts=0.5, to=0.5):
    return json.dumps(dict(step=step, reward_mean=r, reward_std=1.0, kl=kl, kl_coef=0.05, policy_loss=0.0,
                           value_loss=0.0, entropy=1.0, clip_frac=0.0, approx_kl=0.0, completion_len=10.0,
                           time_generate=tg, time_score=ts, time_optimize=to))


def write(out, scheme, seed, lines, **flags):
    d = out / scheme / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if flags:  # a config.json as abc_ppo.py writes it, with the flags tools/report.py reads
        (d / "config.json").write_text(json.dumps(dict(flags=flags)))


@pytest.fixture
def out(tmp_path):
    # sparse: seed0 rewards [1,2,3,2]; seed1 [3,4,5,4] after dropping resume duplicates and the extra step 4.
    #   per-seed means 2, 4 -> 3.00 ± 2*std([2,4],ddof=1)/sqrt(2) = 2*sqrt(2)/sqrt(2) = 2.00; final 3.00
    #   seed-mean curve [2,3,4,3] -> best sparse = 4, which sparse never exceeds (> 4: "never",
    #   where >= would give step 2); s/step = 1+0.5+0.5 = 2.00
    write(tmp_path, "sparse", 0, [line(t, r) for t, r in enumerate([1, 2, 3, 2])])
    write(tmp_path, "sparse", 1, [line(0, 3), line(1, 100), line(2, 100),  # crashed, resumed from step 1
                                  line(1, 4), line(2, 5), line(3, 4), line(4, 1000)])  # step 4: longer run
    # abc: seeds [2,4,6,8], [3,5,5,7], [1,3,4,6] -> means 5, 5, 3.5 -> 4.50; std(ddof=1) = sqrt(0.75)
    #   -> 2*sqrt(0.75)/sqrt(3) = 1.00; final 4.50; curve [2,4,5,7] > 4 first at step 2 (>= 4: step 1)
    #   seed 2 has KL < 0 at step 2; times: seed0 totals t+1 = 1,2,3,4, others 1 -> (10+4+4)/12 = 1.50
    write(tmp_path, "abc", 0, [line(t, r, tg=t, ts=0, to=1) for t, r in enumerate([2, 4, 6, 8])])
    write(tmp_path, "abc", 1, [line(t, r, tg=1, ts=0, to=0) for t, r in enumerate([3, 5, 5, 7])])
    write(tmp_path, "abc", 2, [line(t, r, kl=[0.1, 0.0, -0.2, 0.3][t], tg=0.5, ts=0.25, to=0.25)
                               for t, r in enumerate([1, 3, 4, 6])])
    return tmp_path


def check_outputs(out):
    for name in ["reward.png", "kl.png"]:
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 1000
    md = (out / "results.md").read_text()
    assert "mean reward, steps 0-3 ± 2 s.e." in md
    assert "first step > best sparse" in md and "exceeds the best seed-mean sparse reward of steps 0-3" in md
    assert "| sparse | 2 | 3.00 ± 2.00 | - | 3.00 ± 2.00 (step 3) | never | 0.10 | 0 | 10.0 | 2.00 |" in md
    # abc at the last step: 8, 7, 6 -> 7 ± 2 * 1 / sqrt(3); lowest KL after step 0: seed 2's -0.2
    assert "| abc | 3 | 4.50 ± 1.00 | +2.00 ± 2.00 (2/2) | 7.00 ± 1.15 (step 3) | 2 | -0.20 | 1 | 10.0 | 1.50 |" in md
    # per seed, last reward / lowest KL; sparse has no seed 2
    assert "| 0 | 2.00 / 0.10 | 8.00 / 0.10 |" in md and "| 2 | - | 6.00 / -0.20 |" in md
    assert md.index("| sparse |") < md.index("| abc |")  # default order: sparse, uniform, abc, ...
    assert "Read 5 runs" in md


def test_load_runs(out):
    runs = plumbing.runs.load_runs(str(out))
    assert sorted(runs) == ["abc", "sparse"] and len(runs["sparse"]) == 2 and len(runs["abc"]) == 3
    assert runs["sparse"][1]["step"].tolist() == [0, 1, 2, 3]  # dedup keeps the last line, truncates to common
    assert runs["sparse"][1]["reward_mean"].tolist() == [3, 4, 5, 4]


def test_summarise_numbers(out):
    rows = {r["scheme"]: r for r in plumbing.runs.summarise(plumbing.runs.load_runs(str(out)))}
    s, a = rows["sparse"], rows["abc"]
    assert (s["early_mean"], s["early_2se"], *s["last"]) == pytest.approx((3.0, 2.0, 3.0, 2.0))
    assert (a["early_mean"], a["early_2se"], *a["last"]) == pytest.approx((4.5, 1.0, 7.0, 2 / 3 ** 0.5))
    assert (s["lowest_kl"], a["lowest_kl"]) == pytest.approx((0.1, -0.2))
    assert (s["first_best"], a["first_best"]) == ("never", 2)
    assert (s["kl_neg"], a["kl_neg"]) == (0, 1)
    assert (s["sec_per_step"], a["sec_per_step"]) == pytest.approx((2.0, 1.5))
    # abc - sparse, paired on the seeds both ran (0 and 1): 5 - 2 = 3, 5 - 4 = 1 -> 2 ± 2*sqrt(2)/sqrt(2), ahead on 2 of 2
    assert s["vs_sparse"] is None and a["vs_sparse"] == pytest.approx((2.0, 2.0, 2, 2))
    assert s["early_upto"] == a["early_upto"] == 3


def test_windows(out):
    # steps 0-1 only: sparse means 1.5, 3.5 -> 2.5 ± 2.0
    s, a = plumbing.runs.summarise(plumbing.runs.load_runs(str(out)), upto=1)
    assert s["scheme"] == "sparse" and s["early_upto"] == 1
    assert (s["early_mean"], s["early_2se"]) == pytest.approx((2.5, 2.0))
    # best sparse over steps 0-1 is 3 (not 4): sparse [2,3,4,3] first > 3 at step 2 (>= 3: step 1),
    # abc [2,4,5,7] first > 3 at step 1 (> 4, all steps: step 2)
    assert (s["first_best"], a["first_best"]) == (2, 1)


def test_no_sparse_and_one_seed(tmp_path):
    write(tmp_path, "abc", 0, [line(t, r) for t, r in enumerate([1, 2])])
    (r,) = report.main([str(tmp_path)])
    assert r["first_best"] is None and r["early_2se"] == 0.0 and r["early_mean"] == pytest.approx(1.5)
    assert "| abc | 1 | 1.50 ± 0.00 | - | 2.00 ± 0.00 (step 1) | - | 0.10 | 0 | 10.0 | 2.00 |" in (tmp_path / "results.md").read_text()


def test_never_and_order(out):
    write(out, "uniform", 0, [line(t, 0.0) for t in range(4)])
    rows = report.main([str(out), "--order", "abc"])
    assert [r["scheme"] for r in rows] == ["abc", "sparse", "uniform"]
    assert rows[2]["first_best"] == "never"
    # uniform's seed 0 mean 0 against sparse's 2: -2, one seed, so no spread
    assert "| uniform | 1 | 0.00 ± 0.00 | -2.00 ± 0.00 (0/1) | 0.00 ± 0.00 (step 3) | never | 0.10 | 0 | 10.0 | 2.00 |" \
        in (out / "results.md").read_text()


def test_main_function(out):
    report.main([str(out)])
    check_outputs(out)


def test_cli(out):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "report.py"), str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    check_outputs(out)


def test_bad_input(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "report.py"), str(d)], capture_output=True, text=True)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1 and str(d) in p.stderr
    with pytest.raises(SystemExit, match="not a readable directory"):
        report.main([str(tmp_path / "missing")])


def test_bad_line(tmp_path, capsys):
    write(tmp_path, "abc", 0, [line(0, 1.0), "{not json"])
    with pytest.raises(SystemExit, match="no metrics files found"):  # the only run is skipped
        report.main([str(tmp_path)])
    err = capsys.readouterr().err
    assert "skipped" in err and "metrics.jsonl:2: bad metrics line" in err


def test_smooth():
    # centred 3-step mean, fewer steps at the ends: (0+3)/2, (0+3+6)/3, (3+6+9)/3, (6+9)/2
    assert report.smooth([0, 3, 6, 9], 3).tolist() == pytest.approx([1.5, 3.0, 6.0, 7.5])
    assert report.smooth([[0, 3, 6, 9]], 1).tolist() == [[0, 3, 6, 9]]


SPARSE, ABC = ([1, 2, 3, 2], [3, 4, 5, 4]), ([2, 4, 6, 8], [3, 5, 5, 7])  # per-seed means 2, 4 and 5, 5


def study(out, gen_len, forced=False, beta=0.8, schemes=("sparse", "abc")):
    for scheme in schemes:
        for seed, rs in enumerate(SPARSE if scheme == "sparse" or beta == 0 else ABC):
            write(out, scheme, seed, [line(t, r) for t, r in enumerate(rs)], reward=scheme, beta=beta,
                  gen_len=gen_len, min_new_tokens=forced)
    return str(out)


def test_lengths(tmp_path):
    dirs = [study(tmp_path / "long", [90, 110], forced=True), study(tmp_path / "short", [8, 15])]
    studies = report.main(dirs + ["--lengths", str(tmp_path / "length")])
    assert [(x, eos) for x, _, eos, _ in studies] == [(11.5, "free EOS"), (100, "forced")]  # free first, by length
    md = (tmp_path / "length.md").read_text()
    # abc - sparse per seed: 5 - 2, 5 - 4 -> 2 ± 2 * sqrt(2) / sqrt(2)
    assert "| 8–15 | free EOS | abc (β 0.8) | 2 | 5.00 ± 0.00 | +2.00 ± 2.00 (2/2) |" in md
    assert "| 90–110 | forced | sparse | 2 | 3.00 ± 2.00 | - |" in md
    # KL at the last step 0.1 in every run, ± 0; s/step 1 + 0.5 + 0.5
    assert all(row.endswith("| 0.1 ± 0.0 | 2.00 |") for row in md.splitlines()[2:6])
    assert (tmp_path / "length.png").read_bytes()[:8] == PNG


def test_beta(tmp_path):
    dirs = [study(tmp_path / "b0", [8, 15], beta=0, schemes=["abc"]), study(tmp_path / "b1", [8, 15], beta=1.0)]
    beta_study.main(dirs + ["--out", str(tmp_path / "beta")])
    md = (tmp_path / "beta.md").read_text()
    assert "| 0 | 2 | 3.00 ± 2.00 | +0.00 ± 0.00 (0/2) | 7.94 |" in md
    assert "| 1 | 2 | 5.00 ± 0.00 | +2.00 ± 2.00 (2/2) | 8.8 |" in md
    assert "β = 0 against sparse on the same seeds (2): largest reward difference at any step 0." in md
    assert (tmp_path / "beta.png").read_bytes()[:8] == PNG


def build_study(out, models, sparse, abc, gen_len=(8, 15), mini_dir="nowhere"):
    """A study on one build: constant per-seed rewards, so each seed's mean is the given number."""
    for scheme, means in (("sparse", sparse), ("abc", abc)):
        for seed, m in enumerate(means):
            d = out / scheme / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "metrics.jsonl").write_text("\n".join(line(t, m) for t in range(3)) + "\n")
            flags = dict(reward=scheme, beta=0.8, gen_len=list(gen_len), min_new_tokens=False, mini_dir=mini_dir)
            (d / "config.json").write_text(json.dumps(dict(flags=flags, models=models)))
    return str(out)


def test_builds_are_pooled_only_when_asked(tmp_path):
    a, b = dict(policy="a" * 16, reward_model="b" * 16), dict(policy="c" * 16, reward_model="d" * 16)
    (tmp_path / "mini").mkdir()
    (tmp_path / "mini" / "manifest.json").write_text(json.dumps(dict(seed=4)))
    # on the seeds both ran, build a: d = 5-2, 5-4 = 3, 1 -> +2.00 ± 2.00; build b: d = 2-2, 6-4 = 0, 2 -> +1.00 ± 2.00
    dirs = [build_study(tmp_path / "a", a, [2, 4, 0], [5, 5, 9], mini_dir=str(tmp_path / "mini")),  # seed 2: a only
            build_study(tmp_path / "b", b, [2, 4], [2, 6])]
    with pytest.raises(SystemExit, match="2 different models"):  # a table never mixes builds unasked
        report.main(dirs + ["--lengths", str(tmp_path / "length")])
    by_setting = pooled.main(dirs + ["--out", str(tmp_path / "pooled")])
    # pooled: build means 2, 1 -> 1.50; their variance 0.5 is below the seed noise of a build's mean, 2/2 and
    # 2/2 -> 1, which is the floor: ± 2 * sqrt(1 / 2) = 1.41; sigma_build = 0; sigma_seed = sqrt(mean(2, 2))
    assert by_setting["8–15 free EOS"] == pytest.approx((1.5, 2 ** 0.5, 2))
    md = (tmp_path / "pooled.md").read_text()
    assert "| 8–15 free EOS | seed 4, aaaaaaaa/bbbbbbbb | 2 | +2.00 ± 2.00 (2/2) |" in md
    assert "| 8–15 free EOS | cccccccc/dddddddd | 2 | +1.00 ± 2.00 (1/2) |" in md
    assert ("| 8–15 free EOS | **pooled over 2 builds** | 4 | **+1.50 ± 1.41** (3/4); builds ahead 2/2; "
            "σ_build 0.00, σ_seed 1.41 |") in md
    assert (tmp_path / "pooled.png").read_bytes()[:8] == PNG
    with pytest.raises(SystemExit, match="two studies of setting 8–15 free EOS ran on build"):
        pooled.main(dirs + [dirs[0], "--out", str(tmp_path / "pooled")])


def test_horizon(tmp_path):
    def lam_study(name, lam, sparse, abc, last_len):
        """Constant per-seed rewards; the completion length at the last step, per scheme and seed, as given."""
        for scheme, means in (("sparse", sparse), ("abc", abc)):
            for seed, m in enumerate(means):
                rows = [json.loads(line(t, m)) | dict(completion_len=last_len[scheme][seed] if t == 2 else 50.0)
                        for t in range(3)]
                write(tmp_path / name, scheme, seed, map(json.dumps, rows), reward=scheme, beta=0.8, gen_len=[90, 110],
                      min_new_tokens=False, **({} if lam is None else dict(lam=lam)))
        return str(tmp_path / name)

    same = dict(sparse=[10, 10], abc=[20, 30])
    # lambda 0.95 (no --lam in config.json: the default): d = 5-2, 5-4 = 3, 1 -> +2.00 ± 2.00
    # lambda 0.5: d = 5-1, 3-1 = 4, 2 -> +3.00 ± 2.00; the move from 0.95, paired: 1, 1 -> +1.00 ± 0.00
    # sparse's last lengths at 0.5: 4, 6 -> 5.0 ± 2 * sqrt(2) / sqrt(2)
    dirs = [lam_study("a", None, [2, 4], [5, 5], same), lam_study("b", 0.5, [1, 1], [5, 3], dict(sparse=[4, 6], abc=[20, 30]))]
    points = horizon.main(dirs + ["--out", str(tmp_path / "horizon")])
    assert [p[:3] for p in points["90–110 free EOS"]] == [(0.5, 3.0, 2.0), (0.95, 2.0, 2.0)]
    md = (tmp_path / "horizon.md").read_text()
    assert "| 90–110 free EOS | 0.5 | 2 | 1.00 | 4.00 | +3.00 ± 2.00 (2/2) | +1.00 ± 0.00 | 5.0 ± 2.0 / 25.0 ± 10.0 |" in md
    assert "| 90–110 free EOS | 0.95 | 2 | 3.00 | 5.00 | +2.00 ± 2.00 (2/2) | - | 10.0 ± 0.0 / 25.0 ± 10.0 |" in md
    assert (tmp_path / "horizon.png").read_bytes()[:8] == PNG
    with pytest.raises(SystemExit, match="two studies of setting 90–110 free EOS ran at λ 0.5"):
        horizon.main(dirs + [dirs[1], "--out", str(tmp_path / "horizon")])


def test_eval_png_from_eval_jsonl(out):
    """Runs that evaluated get eval.png: gold and proxy against KL and against training seconds."""
    for scheme, gold in (("sparse", 1.0), ("abc", 2.0)):
        for seed in (0, 1):
            rows = [dict(step=s, proxy_mean=gold + s, proxy_se=0.1, gold_mean=gold + s / 2, gold_se=0.1, kl=2.0 * s,
                         kl_se=0.1, completion_len=10.0, distinct_2=0.9, completions=8, rm_rows=16 * s,
                         train_seconds=1.5 * s, eval_seconds=0.2) for s in (0, 2, 4)]
            (out / scheme / f"seed{seed}" / "eval.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    assert set(report.read_evals(str(out))) == {"sparse", "abc"}
    report.main([str(out)])
    assert (out / "eval.png").read_bytes()[:8] == PNG


frontier = load_script("studies/frontier/frontier.py")


def test_the_frontier_reads_each_run_where_it_spends_its_budget():
    """By hand: KL [0, 4, 12] with gold [0, 2, 6] reaches KL 8 halfway from the 2nd to the 3rd evaluation
    (gold 4); KL 2 halfway to the 2nd (gold 1); KL 20 never (its last, 6). A KL that dips back below the budget
    after reaching it is read at the first crossing."""
    kl, gold = np.array([0.0, 4.0, 12.0]), np.array([0.0, 2.0, 6.0])
    assert [frontier.read_at(kl, gold, k) for k in (8, 2, 20)] == [4.0, 1.0, 6.0]
    assert frontier.read_at(np.array([0.0, 10.0, 3.0]), np.array([0.0, 5.0, 9.0]), 5) == 2.5
    run = lambda kl, gold, proxy: dict(kl=np.array(kl), gold_mean=np.array(gold), proxy_mean=np.array(proxy),  # noqa: E731
                                       step=np.array([0.0, 10.0, 20.0]))
    seeds = {0: {"0.1": run([0, 4, 12], [0, 2, 6], [1, 4, 9]), "0.4": run([0, 1, 3], [0, 3, 3], [1, 1, 1])}}
    # KL 8: the first run reads gold 4, the second never gets there and reads its last, 3 -> the best, 4.
    assert frontier.frontier(seeds, "gold_mean", 8, lambda r: r["kl"]) == {0: 4.0}
    # compute, at a ratio of 2: 20 sparse steps are step 10 -> gold 2 and 3 -> 3.
    assert frontier.frontier(seeds, "gold_mean", 20, lambda r: r["step"] * 2) == {0: 3.0}
    # over-optimisation at KL 8: proxy - gold read there, 6.5 - 4 = 2.5 and (never there) 1 - 3 = -2, less step
    # 0's 1 each: 1.5 and -3, mean -0.75.
    assert frontier.overoptimisation(seeds, 8) == {0: -0.75}


def test_the_gao_fit_recovers_its_curve_and_the_pairing_counts_seeds_ahead():
    d = np.sqrt(np.array([0.0, 1.0, 4.0, 9.0, 16.0]))
    gold = d * (2.0 - 0.5 * np.log(np.where(d > 0, d, 1)))  # alpha 2, beta 0.5, gold_0 = 0
    by_coef = {"c": dict(kl=d ** 2, gold_mean=gold + 7.0)}  # a constant offset: the fit reads the gain
    assert frontier.gao_fit(by_coef, 4.0) == pytest.approx(2 * (2.0 - 0.5 * np.log(2)))
    assert frontier.gao_fit(by_coef, 25.0) is None  # beyond the runs' largest KL: no extrapolation
    assert frontier.paired({0: 3.0, 1: 1.0, 2: 5.0}, {0: 1.0, 1: 2.0}) == "+0.50 ± 3.00 (1/2)"
    # bold only where the interval excludes 0: d = [2, 3], sd 0.71, 2 s.e. 1.00
    assert frontier.paired({0: 3.0, 1: 1.0}, {0: 1.0, 1: 2.0}, bold=True) == "+0.50 ± 3.00 (1/2)"
    assert frontier.paired({0: 2.0, 1: 3.0}, {0: 0.0, 1: 0.0}, bold=True) == "**+2.50 ± 1.00 (2/2)**"
    assert frontier.paired({0: 0.0, 1: 0.0}, {0: 2.0, 1: 3.0}) == "−2.50 ± 1.00 (0/2)"


def test_the_frontier_mechanism_recomputes_each_schemes_credit_on_its_samples(tiny, policy_tok, tmp_path):
    """sample_credit gives each evaluation sample its scheme's credit as training did (per_token_rewards on the
    run's RM and flags): sparse's is the RM's score on the last token, every scheme's row sums to the score
    (red's to score - s_0), and on the tiny RM, which scores by ' good', the credit of abc, red and shapley
    (β 1: none of it held back for the last token) ranks ' good' first in every completion."""
    import reward
    import torch
    from conftest import pad

    good = policy_tok(" good")["input_ids"]
    assert len(good) == 1
    texts = [" was very good and the plot", " the movie is good", " a good film and music", " the film was good"]
    samples = [dict(step=80, prompt="the film", completion_ids=policy_tok(t)["input_ids"]) for t in texts]
    prompt = policy_tok("the film")["input_ids"]
    seq, _ = pad([prompt + x["completion_ids"] for x in samples], policy_tok.pad_token_id, side="right")
    comp_mask = pad([x["completion_ids"] for x in samples], 0, side="right")[1]
    prompt_mask = torch.ones(len(samples), len(prompt), dtype=torch.long)
    rm = frontier.rm_and_tokenizers(tiny["policy"], tiny["reward_model"])[0]
    score, _, prefix = reward.score_completions(rm, None, policy_tok, seq, prompt_mask, comp_mask, 1)  # [B], [B, G+1]
    flags = dict(policy=tiny["policy"], reward_model=tiny["reward_model"], beta=1.0, score_eos=1, shapley_units=16,
                 shapley_perms=8, ig_steps=8, seed=0)
    credited = {}
    for scheme in ("sparse", "abc", "red", "shapley", "ig"):
        run = tmp_path / scheme
        run.mkdir()
        (run / "config.json").write_text(json.dumps(dict(flags=flags | dict(reward=scheme))))
        (run / "eval_samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in samples))
        credited[scheme] = frontier.sample_credit(str(run), chunk=3)  # two chunks of unequal width
        assert [ids for ids, _ in credited[scheme]] == [x["completion_ids"] for x in samples]
        total = score - prefix[:, 0] if scheme == "red" else score
        assert [sum(c) for _, c in credited[scheme]] == pytest.approx(total.tolist(), abs=1e-4)
    for (ids, credit), s in zip(credited["sparse"], score.tolist()):
        assert credit[:-1] == [0.0] * (len(ids) - 1) and credit[-1] == pytest.approx(s)
    for scheme in ("abc", "red", "shapley"):
        assert frontier.top_tokens(credited[scheme], n=1) == [(good[0], 1.0)], scheme
    assert frontier.per_completion(good[0], credited["abc"]) == 1.0
    assert frontier.top_tokens([([5, 6], [0.1, 0.3]), ([6, 7], [0.5, 0.2]), ([8], [1.0])]) == [(6, 2 / 3), (8, 1 / 3)]
