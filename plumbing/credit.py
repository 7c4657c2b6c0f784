"""Seeing the credit: which tokens each scheme rewards, and whether that is where the score came from.

    python abc_ppo.py --explain "TEXT"                        # each scheme's credit for each token
    python abc_ppo.py --log_samples 4                         # samples.jsonl and credit.html from a run
    python abc_ppo.py --preset mini --faithfulness 300        # or any --reward_model, --policy, --dataset

Faithfulness. ABC rests on one premise: the reward model's last-layer attention, read from the scored token,
points at the tokens the score came from. This measures it. Each held-out text is cut into a
prompt (its first k tokens) and a completion (the next tokens, at most `max_len`), scored as it
stands (no EOS added). The reference is leave-one-token-out occlusion: delete completion token t,
score the text again, and take
    e_t = |s(x, y) - s(x, y without y_t)|.
Each scheme's credit r_t (abc and abcd at beta = 1, i.e. the attention map alone) is compared
with e over the completion tokens of each text:
    rank correlation = Spearman(|r|, e), averaged over texts;
    top-1 agreement  = share of texts where argmax_t |r_t| = argmax_t e_t.
Uniform credit has no ranking; its top-1 is chance, mean(1 / n). Occlusion is itself only an
approximation of "what earned the score": deleting a token also shifts every later position and
leaves text the reward model never saw in training.
"""
import argparse
import html
import json
import os
import sys

import torch

from plumbing.attention import attention_paid, attention_row, attention_rows, completion_attention
from plumbing.estimators import integrated_gradients, kept_scores, shapley_values
from plumbing.models import is_decoder, last_index, logit_score, positions
from plumbing.presets import fail, load_texts


@torch.no_grad()
def rm_pass(rm, ids, mask):
    """One reward-model pass over right-padded rows. Returns the score read at every position [B, L]
    (the score is the one at the last real token), and the attention row of that last token in
    every layer, averaged over heads: [layers, B, L] (rows only: SDPA runs, no layer's map is built)."""
    with attention_rows(rm, last_index(mask)[:, None], every_layer=True) as rows:
        out = rm.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
    return logit_score(rm.score(out.last_hidden_state)), torch.stack([attention_row(rows, n) for n in range(len(rows))])


@torch.no_grad()
def policy_attention(policy, ids, mask, P):
    """ABC-D's signal for rows whose completion starts at column P: [B, G, G] (attention.completion_attention)."""
    with attention_rows(policy, torch.arange(P, ids.shape[1], device=ids.device)) as rows:
        policy.base_model(input_ids=ids, attention_mask=mask, position_ids=positions(mask))
    return completion_attention(rows, P)


@torch.no_grad()
def occlusion(rm, ids, mask, k, chunk=512, signed=False):
    """e[b, t] = |s(row b) - s(row b without completion token t)|, for the tokens after the first k: [B, G]
    (without the bars if signed: how much token t raised the score). Every deletion of every row is
    scored in batches of `chunk` rows, with the deletion shapley's coalitions use (reward.kept_scores)."""
    B, L = ids.shape
    G = L - k
    keep = mask[None].repeat(G, 1, 1)  # [G, B, L]: deletion t of every row, t-major
    keep[torch.arange(G), :, k + torch.arange(G)] = 0
    s_var = kept_scores(rm, ids.repeat(G, 1), keep.view(G * B, L), chunk).view(G, B)
    s_full = kept_scores(rm, ids, mask, chunk)
    e = (s_full[None] - s_var).T  # [B, G]
    return (e if signed else e.abs()) * mask[:, k:]


def ranks(x, mask):
    """Ranks within each row over the masked entries, ties given their average rank: [B, G] -> [B, G]."""
    m = mask.bool()
    less = ((x[:, None, :] < x[:, :, None]) & m[:, None, :]).sum(-1)  # [B, G]: entries below x_t
    equal = ((x[:, None, :] == x[:, :, None]) & m[:, None, :]).sum(-1)
    return (less + (equal + 1) / 2) * m


def spearman(x, y, mask):
    """Rank correlation per row over the masked entries; NaN where a row is constant: [B]."""
    m = mask.float()
    n = m.sum(1, keepdim=True)
    rx, ry = ranks(x, mask), ranks(y, mask)
    rx, ry = (rx - (rx * m).sum(1, keepdim=True) / n) * m, (ry - (ry * m).sum(1, keepdim=True) / n) * m
    return (rx * ry).sum(1) / ((rx ** 2).sum(1) * (ry ** 2).sum(1)).sqrt()


def top1(x, mask):
    """Index of each row's largest masked entry: [B, G] -> [B]."""
    return x.masked_fill(mask == 0, -float("inf")).argmax(1)


def encode(tok, texts, k, max_len):
    """Token rows of the texts with at least 2 completion tokens, cut to k + max_len tokens and
    right-padded: ids [N, L], mask [N, L]."""
    rows = [r[:k + max_len] for r in (tok(t)["input_ids"] for t in texts) if len(r) >= k + 2]
    if not rows:
        raise ValueError(f"no text has more than {k + 1} tokens")
    L = max(map(len, rows))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return (torch.tensor([r + [pad] * (L - len(r)) for r in rows]),
            torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in rows]))


@torch.no_grad()
def faithfulness(rm, tok, texts, k=3, max_len=15, policy=None, shapley=True):
    """{scheme: (mean rank correlation, top-1 agreement)} against occlusion, for sparse, uniform,
    abc with each layer's attention, red, abcd when a policy sharing `tok` is given, |phi| of ig (its
    default 16 steps), and |phi| of shapley (its default units and orders, orders seeded 0) unless
    shapley=False. Any attention
    kernel will do: the rows are read through reward.attention_rows."""
    device = next(rm.parameters()).device
    ids, mask = (x.to(device) for x in encode(tok, texts, k, max_len))
    comp = mask[:, k:].float()  # [N, G] completion tokens
    e = occlusion(rm, ids, mask, k)  # [N, G]
    scores, att = rm_pass(rm, ids, mask)  # [N, L], [layers, N, L]
    n = comp.sum(1)
    credit = {"sparse": torch.nn.functional.one_hot(n.long() - 1, comp.shape[1]).float()}
    credit |= {f"abc, layer {i}" + (" (last)" if i == len(att) - 1 else ""): a[:, k:] * comp for i, a in enumerate(att)}
    credit["red"] = ((scores[:, k:] - scores[:, k - 1:-1]) * comp).abs()  # |s_t - s_{t-1}| (reward.red)
    if policy is not None:  # the ranking of reward.abcd at beta 1, which only rescales this row
        credit["abcd"] = attention_paid(policy_attention(policy, ids, mask, k), comp)
    credit["ig"] = integrated_gradients(rm, ids, mask[:, :k], mask[:, k:])[0].abs()
    if shapley:
        s = scores[torch.arange(len(ids)), last_index(mask)]
        phi, _, _ = shapley_values(rm, ids, mask[:, :k], mask[:, k:], s, generator=torch.Generator().manual_seed(0))
        credit["shapley"] = phi.abs()
    truth = top1(e, comp)
    table = {"uniform (chance)": (None, (1 / n).mean().item())}  # no ranking to correlate
    for name, c in credit.items():
        rho = spearman(c, e, comp)
        table[name] = (rho[~rho.isnan()].mean().item(), (top1(c, comp) == truth).float().mean().item())
    return dict(texts=len(ids), prompt_tokens=k, max_completion_tokens=max_len, schemes=table)


def print_table(result, out=None):
    """The faithfulness table as markdown."""
    lines = [f"Credit faithfulness against occlusion: {result['texts']} texts, prompt = first "
             f"{result['prompt_tokens']} tokens, completion = up to {result['max_completion_tokens']} more.", "",
             "| credit | rank corr. with occlusion | top-1 agreement |", "|---|---|---|"]
    for name, (rho, hit) in result["schemes"].items():
        lines.append(f"| {name} | {'—' if rho is None else f'{rho:+.2f}'} | {hit:.2f} |")
    print("\n".join(lines), file=out)


def faithfulness_report(args, texts, tok, policy, rm, rm_tok):
    """abc_ppo.py --faithfulness N: the table for the first N texts of --dataset, with the prompt the
    middle of --prompt_len and the completion up to the longest --gen_len. abcd needs the policy to
    share the reward model's tokenizer (rm_tok is None then)."""
    if not is_decoder(rm):
        fail("--faithfulness needs a decoder reward model (GPT-2 style), which reads the score at the last token")
    try:
        result = faithfulness(rm, rm_tok or tok, texts[:args.faithfulness], sum(args.prompt_len) // 2,
                              args.gen_len[1], policy if rm_tok is None else None)
    except ValueError as e:
        fail(f"--faithfulness: {e}")
    print_table(result)
    if rm_tok is not None:
        print("(no abcd row: the policy's tokenizer differs from the reward model's)")
    return result


def colour(text, value, top, enabled):
    """Text on a background from red (negative) through none to green (positive)."""
    if not enabled or top == 0:
        return text
    a = min(abs(value) / top, 1.0)
    r, g, b = (int(255 - 255 * a), 255, int(255 - 255 * a)) if value >= 0 else (255, int(255 - 255 * a), int(255 - 255 * a))
    return f"\x1b[48;2;{r};{g};{b}m\x1b[30m{text}\x1b[0m"


@torch.no_grad()
def report(args, models, device, schemes):
    """--explain TEXT or --faithfulness N on the run's models (abc_ppo.Models). schemes: reward.py, handed
    in by abc_ppo.py, since the package never imports a script."""
    if args.explain:
        return explain(args, models, device, schemes)
    return faithfulness_report(args, load_texts(args.dataset, args.min_chars), models.tok, models.policy, models.rm,
                               models.rm_tok)


def explain(args, models, device, schemes):
    """Print the reward each scheme gives each completion token of --explain TEXT, where the first
    --prompt_len tokens are the prompt. No KL term: this is the RM's credit alone."""
    tok = models.tok
    ids = tok(args.explain)["input_ids"]
    k = args.prompt_len[0]
    if len(ids) <= k:
        fail(f"--explain text has {len(ids)} tokens; it needs more than the prompt's {k} (--prompt_len)")
    seq = torch.tensor([ids], device=device)
    prompt_mask, comp_mask = torch.ones(1, k, dtype=torch.long, device=device), torch.ones_like(seq[:, k:])
    s, _, prefix_scores = schemes.score_completions(models.rm, models.rm_tok, tok, seq, prompt_mask, comp_mask,
                                                    args.score_eos)
    # red needs a decoder RM; shapley and ig one that shares the policy's tokenizer, whose tokens they delete or scale
    names = [n for n in schemes.SCHEMES
             if not (n == "red" and prefix_scores is None or n in ("shapley", "ig") and models.rm_tok is not None)]
    paid = policy_attention(models.policy, seq, torch.ones_like(seq), k)  # [1, G, G]
    cols = {n: schemes.per_token_rewards(argparse.Namespace(**vars(args) | dict(reward=n)), models, seq, prompt_mask,
                                         comp_mask, paid, torch.Generator().manual_seed(args.seed))[1][0].tolist()
            for n in names}
    heads = [f"{n} b={args.beta:g}" if n in schemes.USES_BETA else n for n in names]
    top = max(abs(v) for c in cols.values() for v in c)
    tty = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    print(f"prompt {tok.decode(ids[:k])!r}   RM score {s.item():+.3f}"
          + (f"   red: s_0 = {prefix_scores[0, 0].item():+.3f}" if prefix_scores is not None else ""))
    print(f"{'token':16}" + "".join(f"{h:>14}" for h in heads))
    for t, tid in enumerate(ids[k:]):
        cells = [colour(f"{cols[n][t]:+14.3f}", cols[n][t], top, tty) for n in names]
        print(f"{repr(tok.decode([tid]))[:16]:16}" + "".join(cells))
    print(f"{'sum':16}" + "".join(f"{sum(cols[n]):+14.3f}" for n in names))


def write_samples(f, step, tok, exp, n):
    """Append n completions of this step's experience exp with the credit the scheme gave each token,
    the whitened GAE advantage PPO used, and the token ids, so that a sample can be scored again exactly."""
    P = exp.prompt_mask.shape[1]
    for b in range(n):
        m = int(exp.comp_mask[b].sum())
        prompt, ids = exp.seq[b, :P][exp.prompt_mask[b].bool()].tolist(), exp.seq[b, P:P + m].tolist()
        rounded = lambda x: [round(v, 4) for v in x[b, :m].tolist()]
        f.write(json.dumps(dict(step=step, score=round(exp.rm_score[b].item(), 4), prompt=tok.decode(prompt),
                                tokens=[tok.decode([t]) for t in ids], credit=rounded(exp.rm_credit),
                                advantage=rounded(exp.adv), prompt_ids=prompt, token_ids=ids)) + "\n")
    f.flush()


def write_credit_html(out_dir, scheme):
    """credit.html: one row per logged sample, each completion token coloured by its credit."""
    with open(os.path.join(out_dir, "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    top = max((abs(c) for x in samples for c in x["credit"]), default=0) or 1.0
    rows = []
    for x in samples:
        spans = "".join(f'<span style="background:rgba({"0,170,70" if c >= 0 else "220,40,40"},{min(abs(c) / top, 1):.2f})"'
                        f' title="{c:+.4f}">{html.escape(t)}</span>' for t, c in zip(x["tokens"], x["credit"]))
        rows.append(f'<tr><td>{x["step"]}</td><td>{x["score"]:+.2f}</td>'
                    f'<td><span class="prompt">{html.escape(x["prompt"])}</span>{spans}</td></tr>')
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"/><title>credit: {scheme}</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{padding:3px 10px;white-space:pre-wrap}}
td:last-child{{font-family:monospace;font-size:15px}} .prompt{{color:#888}} span{{border-radius:3px}}</style></head>
<body><h2>Per-token credit from the <code>{scheme}</code> reward (KL term not included)</h2>
<p>Grey: prompt. Green: positive credit, red: negative; the stronger the colour, the larger |credit|
(full colour = {top:.3f}). Hover a token for its value.</p>
<table><tr><th>step</th><th>RM score</th><th>prompt and completion</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
    with open(os.path.join(out_dir, "credit.html"), "w") as f:
        f.write(page)
