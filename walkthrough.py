# %% [markdown]
# # Dense reward for free: a walkthrough of ABC on the mini preset
#
# One prompt through the whole method, with the project's own functions: the policy samples a
# completion, the reward model scores it and says where it looked, six schemes turn that one score
# into per-token credit, GAE turns credit into advantages, and PPO updates on them, with the very
# step code `abc_ppo.main` runs. Then a short sparse-against-abc run, and exercises.
#
# Runs as a script (`python walkthrough.py`, about 3 minutes on 2 CPU cores) or as a notebook:
# open it in VS Code or Jupyter (`jupytext --to notebook walkthrough.py`). Figures are saved
# in `runs/walkthrough/`. Settings (environment variables): `WALKTHROUGH_STEPS` (PPO steps per
# run, 40), `WALKTHROUGH_SEEDS` (2), `WALKTHROUGH_MINI_DIR` (the mini cache, built on first use),
# `WALKTHROUGH_OUT` (where runs and figures go).

# %%
import argparse
import contextlib
import copy
import json
import os
import sys

import matplotlib.pyplot as plt
import torch
import transformers
from transformers import GenerationConfig

import abc_ppo
from plumbing import credit
from plumbing import mini
from plumbing import presets
import reward
import plumbing.attention
import plumbing.estimators

STEPS = int(os.environ.get("WALKTHROUGH_STEPS", 40))
SEEDS = int(os.environ.get("WALKTHROUGH_SEEDS", 2))
MINI_DIR = os.environ.get("WALKTHROUGH_MINI_DIR", mini.MINI_DIR)
OUT = os.environ.get("WALKTHROUGH_OUT", "runs/walkthrough")
os.makedirs(OUT, exist_ok=True)
mini.ensure(MINI_DIR)  # about two minutes the first time, then reused

# The same flags abc_ppo.py takes; with --reward abcd the policy's attention is read too. The models
# are loaded once; a policy to train is a copy.
args = abc_ppo.parse_args(["--preset", "mini", "--mini_dir", MINI_DIR, "--reward", "abcd", "--beta", "0.5"])
device = torch.device("cpu")
models = abc_ppo.load_models(args, device)
tok, policy, ref, rm = models.tok, models.policy, models.ref, models.rm
texts = presets.load_texts(args.dataset, args.min_chars)
no_autocast = contextlib.nullcontext()  # abc_ppo.main's autocast, off on a CPU
torch.manual_seed(0)


def show(fig, name):
    """Save the figure under OUT, and draw it when running as a notebook (a script goes on)."""
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, name), dpi=110)
    if "ipykernel" in sys.modules:
        plt.show()
    plt.close(fig)


def words(ids):
    return [tok.decode([i]) for i in ids]


def flags(**changes):
    """args with some flags changed, e.g. flags(reward="sparse")."""
    return argparse.Namespace(**{**vars(args), **changes})


# %% [markdown]
# ## 1. One prompt, and a completion sampled token by token
# The state is the prompt plus the tokens so far, `x + y_<t`; the action is the next token `y_t`,
# sampled from the policy's full distribution (no top-k, no top-p). The episode ends at EOS or at
# the length limit. `abc_ppo.rollout` does the same for a whole batch in one `generate` call.

# %%
prompt = tok(texts[0])["input_ids"][:4]
ids = list(prompt)
print("prompt:", repr(tok.decode(prompt)))
with torch.no_grad():
    for t in range(15):
        x = torch.tensor([ids])
        probs = torch.softmax(policy(x, attention_mask=torch.ones_like(x)).logits[0, -1], -1)  # pi(. | x, y_<t)
        y = int(torch.multinomial(probs, 1))
        ids.append(y)
        best = tok.decode([int(probs.argmax())])
        print(f"t={t:2d}  {tok.decode([y])!r:14}  p={probs[y]:.3f}   most likely: {best!r}")
        if y == tok.eos_token_id:
            break
P = len(prompt)
seq = torch.tensor([ids])  # [1, P+G]
prompt_mask, comp_mask = torch.ones(1, P, dtype=torch.long), torch.ones_like(seq[:, P:])  # no padding here
print("completion:", repr(tok.decode(ids[P:])))

# %% [markdown]
# ## 2. The reward model's score, and where it looked
# One forward pass of the RM gives the score, read at the last token, and that token's last-layer
# attention, averaged over heads. ABC's premise: this attention row points at the tokens that
# earned the score.

# %%
score, attention, prefix_scores = reward.score_completions(rm, models.rm_tok, tok, seq, prompt_mask, comp_mask,
                                                           args.score_eos)  # [1], [1, G], [1, G+1]
print(f"RM score {score.item():+.3f}")
with torch.no_grad(), plumbing.attention.attention_rows(rm, torch.arange(len(ids))) as rows:  # every query's row
    rm(seq, attention_mask=torch.ones_like(seq))
att_map = rows[-1][0]  # [L, L]: the last layer, averaged over heads
fig, ax = plt.subplots(figsize=(7, 6))
ax.imshow(att_map, cmap="viridis")
ax.set_xticks(range(len(ids)), words(ids), rotation=90)
ax.set_yticks(range(len(ids)), words(ids))
ax.axhline(len(ids) - 1.5, color="w", lw=1)  # below this line: the scoring token's row, ABC's row
ax.axvline(P - 0.5, color="w", lw=1, ls="--")  # right of this line: the completion
ax.set(title="RM last-layer attention (mean over heads); bottom row: from the scored token",
       xlabel="attended token", ylabel="query token")
show(fig, "attention.png")

# %% [markdown]
# ## 3. Seven schemes' credit for the same completion
# `reward.per_token_rewards` is the one place where the schemes differ. sparse puts the whole
# score on the last token, uniform spreads it evenly, abc spreads a share beta by the RM's attention,
# red gives each token what it adds to the score (the sum is score - s_0), abcd uses the policy's
# own attention, shapley each token's Shapley value, from the RM's score of every coalition of
# the completion's tokens, and ig its integrated gradient, from m RM passes forward and backward with the
# completion's embeddings scaled from 0 to 1 (the two schemes that cost more RM passes).

# %%
mask = comp_mask.float()
paid = credit.policy_attention(policy, seq, torch.ones_like(seq), P)  # [1, G, G]: the policy's attention, for abcd
credits, rm_rows = {}, {}
for n in reward.SCHEMES:
    _, c, rm_rows[n] = reward.per_token_rewards(flags(reward=n), models, seq, prompt_mask, comp_mask, paid)
    credits[n] = c[0]
print(f"shapley: {rm_rows['shapley'] - 1} coalitions scored by the RM, besides the one pass the other schemes need; "
      f"ig: {rm_rows['ig'] - 1} rows, {args.ig_steps} of them with a backward pass")
print(f"{'token':14}" + "".join(f"{n:>9}" for n in credits))
for t, w in enumerate(words(ids[P:])):
    print(f"{w!r:14}" + "".join(f"{c[t]:+9.3f}" for c in credits.values()))
print(f"{'sum':14}" + "".join(f"{c.sum():+9.3f}" for c in credits.values()))
fig, ax = plt.subplots(figsize=(10, 3.5))
G = mask.shape[1]
for i, (n, c) in enumerate(credits.items()):
    ax.bar(torch.arange(G) + (i - 3) * 0.12, c, width=0.12, label=n)
ax.set_xticks(range(G), words(ids[P:]), rotation=45)
ax.axhline(0, color="k", lw=0.8)
ax.set(ylabel="credit r_t (no KL term)", title=f"Per-token credit, beta = {args.beta}")
ax.legend(ncol=5)
show(fig, "credit.png")

# %% [markdown]
# ## 4. Does the attention point where the score came from?
# The faithfulness check compares each scheme's credit with occlusion: delete one completion token,
# score again, and see how much the score moves. Chance for top-1 is the uniform row.

# %%
table = credit.faithfulness(rm, tok, texts[:100], k=3, max_len=15, policy=policy)
credit.print_table(table)

# %% [markdown]
# ## 5. One PPO step, with the code `abc_ppo.main` runs
# A batch of rollouts (`sample_prompts`, `rollout`); `experience` scores them, computes the
# rewards r_t = credit_t - kl_coef * KL_t and the GAE advantages; `ppo_update` takes Adam steps on
# the clipped PPO loss. Here each update is one pass over the whole batch, to watch the ratio:
# before the first gradient step the policy is the one that sampled, so pi / pi_old is exactly 1
# and nothing is clipped; after a few steps on the same batch it moves, and the clip range bites.

# %%
def batch(policy, B=16, gen_len=(8, 15), seed=0):
    """A batch of rollouts from `policy`, drawn as abc_ppo.main draws them: seq, prompt_mask, comp_mask."""
    data_rng = torch.Generator().manual_seed(seed)
    prompt_ids, prompt_mask, lengths = abc_ppo.sample_prompts(texts, tok, flags(batch_size=B, gen_len=gen_len), data_rng)
    seq, comp_mask = abc_ppo.rollout(policy, tok, prompt_ids, prompt_mask, lengths)
    return seq, prompt_mask, comp_mask


def ppo_updates(learner, value_head, rollouts, scheme="abc", n=4):
    """n full-batch updates on the same rollouts with abc_ppo.ppo_update, printing the ratio range,
    clip fraction and losses before each."""
    a = flags(reward=scheme, ppo_epochs=1, mini_batch_size=len(rollouts[0]))
    exp = abc_ppo.experience(a, models._replace(policy=learner), value_head, *rollouts, args.init_kl_coef,
                             no_autocast)
    opt = torch.optim.Adam(list(learner.parameters()) + list(value_head.parameters()), lr=args.lr)
    attn_mask, m = torch.cat([exp.prompt_mask, exp.comp_mask], 1), exp.comp_mask.float()
    for i in range(n):
        with torch.no_grad():
            new = abc_ppo.forward(learner, value_head, exp.seq, attn_mask, exp.prompt_mask.shape[1])
        ratio = torch.exp(new.logp - exp.old.logp)[m.bool()]
        stats = abc_ppo.ppo_update(a, learner, value_head, opt, exp, torch.Generator().manual_seed(i), no_autocast)
        print(f"update {i}: ratio in [{ratio.min():.4f}, {ratio.max():.4f}]  clip_frac {stats['clip_frac']:.3f}  "
              f"policy_loss {stats['policy_loss']:+.4f}  value_loss {stats['value_loss']:.4f}")


learner = copy.deepcopy(policy)  # a fresh copy of the policy to train
ppo_updates(learner, abc_ppo.ValueHead(learner.config.hidden_size), batch(learner))

# %% [markdown]
# ## 6. The mechanism: how far GAE carries the reward back
# For one completion: per token, the reward r_t (credit minus the KL penalty), the value V_t and
# the advantage A_t (before whitening), under sparse and under abc, on the same rollouts and the
# same critic. With gamma = 1 and lambda = 0.95, and a critic that knows nothing yet (V close to 0),
# A_t is about sum_k 0.95^k r_{t+k}: a sparse reward reaches the token k places before the end
# at 0.95^k of its size, 0.60 at 10 tokens back, 0.08 at 50 and 0.006 at 100. ABC puts the
# reward on the tokens the RM looked at, wherever they are.

# %%
torch.manual_seed(0)
value_head = abc_ppo.ValueHead(policy.config.hidden_size)  # an untrained critic, shared by both schemes
rollouts = batch(policy, B=4, gen_len=(15, 15))
mech = {s: abc_ppo.experience(flags(reward=s, beta=0.8), models, value_head, *rollouts, args.init_kl_coef, no_autocast)
        for s in ("sparse", "abc")}


def mechanism(mech, b, name):
    """The table (every token, or every k-th of a long completion) and figure of r_t, V_t and A_t for row b."""
    e = next(iter(mech.values()))
    n, P = int(e.comp_mask[b].sum()), e.prompt_mask.shape[1]
    m = e.comp_mask.float()
    adv = {s: abc_ppo.gae(x.rewards, x.old.values, m, args.gamma, args.lam)[0] for s, x in mech.items()}
    toks = words(e.seq[b, P:P + n].tolist())
    print(f"score {e.rm_score[b]:+.2f}; {'token':14}" + "".join(f"{c:>10}" for c in
          ("r sparse", "r abc", "V", "A sparse", "A abc")))
    for t in sorted({*range(0, n, max(1, n // 15)), n - 1}):  # at most about 16 rows
        print(f"{'':14}{toks[t]!r:14}{mech['sparse'].rewards[b, t]:+10.3f}{mech['abc'].rewards[b, t]:+10.3f}"
              f"{e.old.values[b, t]:+10.3f}{adv['sparse'][b, t]:+10.3f}{adv['abc'][b, t]:+10.3f}")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.5), sharex=True)
    for s, x in mech.items():
        a1.plot(x.rewards[b, :n], "o-", label=f"r_t, {s}")
        a2.plot(adv[s][b, :n], "o-", label=f"A_t, {s}")
    a2.plot(e.old.values[b, :n], "k--", label="V_t")
    for a in (a1, a2):
        a.set_xticks(range(n), toks, rotation=60)
        a.axhline(0, color="k", lw=0.6)
        a.legend()
    a1.set(title="reward r_t = credit - KL penalty")
    a2.set(title="GAE advantage A_t (gamma 1, lambda 0.95)")
    show(fig, name)


mechanism(mech, 0, "mechanism.png")

# %% [markdown]
# ## 7. Sparse against abc, same seeds
# The full loop, `abc_ppo.main`, for each scheme and seed. The paper's claim on its GPT-2 models:
# abc's reward rises faster. Here the runs are short; `run_imdb.sh` and `tools/report.py` run and report
# many seeds with ± 2 s.e.

# %%
def train(scheme, seed, *extra, name=None, steps=STEPS):
    """A short abc_ppo.py run; returns its metrics, one dict per step."""
    out = os.path.join(OUT, name or scheme, f"seed{seed}")
    abc_ppo.main(["--preset", "mini", "--mini_dir", MINI_DIR, "--reward", scheme, "--seed", str(seed),
                  "--steps", str(steps), "--out_dir", out, *extra])
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


runs = {scheme: [train(scheme, seed) for seed in range(SEEDS)] for scheme in ("sparse", "abc")}
fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
for scheme, seeds in runs.items():
    for key, ax in (("reward_mean", a1), ("explained_variance", a2)):
        ax.plot(torch.tensor([[r[key] for r in rows] for rows in seeds]).mean(0), label=f"{scheme} ({SEEDS} seeds)")
a1.set(xlabel="PPO step", ylabel="RM score (batch mean)", title="sparse vs abc, mini preset")
a2.set(xlabel="PPO step", ylabel="1 - Var(R - V) / Var(R)", title="the critic's explained variance")
a1.legend(), a2.legend()
show(fig, "sparse_vs_abc.png")

# %% [markdown]
# ## Exercises
#
# **1. Predict, then check: beta = 0.** `reward.abc` with beta = 0 gives
# `0 * score * a_t + 1 * score * [t = last]`. Will a run of abc at beta = 0 give the same
# numbers as the sparse run of the same seed, exactly, or only close? Write your answer in
# `PREDICTION` ("exact" or "close"), then run the cell.

# %%
PREDICTION = None
n = min(3, STEPS)
beta0 = train("abc", 0, "--beta", "0", name="abc-beta0", steps=n)
same = all({k: v for k, v in a.items() if not k.startswith("time")} == {k: v for k, v in b.items()
           if not k.startswith("time")} for a, b in zip(beta0, runs["sparse"][0][:n]))
answer = "exact" if same else "close"
print(f"abc at beta 0 against sparse, first {n} steps of seed 0: {answer}"
      + ("" if PREDICTION is None else f"; you predicted {PREDICTION!r}: {'right' if PREDICTION == answer else 'wrong'}"))
# Exact: 0 * x is 0 and y + 0 is y in floating point, so the credit, and then every sample,
# update and number, is the same. Now the other end, beta = 1: all credit where the RM looked.
beta1 = train("abc", 0, "--beta", "1", name="abc-beta1")
print(f"beta 1: reward first step {beta1[0]['reward_mean']:+.2f}, last step {beta1[-1]['reward_mean']:+.2f}; "
      f"sparse, same seed: {runs['sparse'][0][0]['reward_mean']:+.2f}, {runs['sparse'][0][-1]['reward_mean']:+.2f}")

# %% [markdown]
# **2. Write it yourself: GAE.** Fill in `my_gae` with the formulas of `abc_ppo.gae`'s docstring
# (delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lambda A_{t+1}, V = 0 after the last
# real token), then run the cell: it checks yours against the project's on section 6's batch.
# Before you run it, predict A_0 for the sparse row when every r_t but the last is 0 and V = 0.

# %%
def my_gae(rewards, values, mask, gamma, lam):
    """Return the advantages [B, T]. Replace this line with your code."""
    return None


e = mech["sparse"]
m = e.comp_mask.float()
mine = my_gae(e.rewards, e.old.values, m, args.gamma, args.lam)
theirs = abc_ppo.gae(e.rewards, e.old.values, m, args.gamma, args.lam)[0]
if mine is None:
    print("my_gae is not written yet; abc_ppo.gae gives A_0 =", [round(x, 3) for x in theirs[:, 0].tolist()])
else:
    print("my_gae matches abc_ppo.gae:", torch.allclose(mine * m, theirs, atol=1e-5))
n0 = int(m[0].sum())
only_last = torch.zeros_like(m[:1])
only_last[0, n0 - 1] = e.rm_score[0]
print(f"with only the score {e.rm_score[0]:+.3f} on token {n0 - 1} and V = 0: A_0 = "
      f"{abc_ppo.gae(only_last, torch.zeros_like(only_last), m[:1], 1.0, 0.95)[0][0, 0]:+.4f}"
      f" = 0.95^{n0 - 1} * score = {0.95 ** (n0 - 1) * e.rm_score[0]:+.4f}")

# %% [markdown]
# **3. Attention from another layer.** ABC reads the RM's last layer. mini's RM has a single
# block, so its last layer is also its first; pass a deeper `--reward_model` (with the policy's
# tokenizer) in `args` above to compare its layers. The policy has 4 layers: ABC-D's credit read
# from each of them differs.

# %%
L = seq.shape[1]
with torch.no_grad(), plumbing.attention.attention_rows(rm, torch.tensor([L - 1]), every_layer=True) as rm_layers:
    rm(seq, attention_mask=torch.ones_like(seq))  # the scored token's row in each layer: [1, 1, L] each
with torch.no_grad(), plumbing.attention.attention_rows(policy, torch.arange(P, L), every_layer=True) as policy_layers:
    policy(seq, attention_mask=torch.ones_like(seq))  # the completion tokens' rows in each layer: [1, G, L] each
for i, a in enumerate(rm_layers):
    row = a[:, 0, P:]  # the scored token's row over the completion: [1, G]
    print(f"RM layer {i}, abc:     " + " ".join(f"{c:+.2f}" for c in reward.abc(score, row, mask, 1.0)[0].tolist()))
for i, a in enumerate(policy_layers):
    A = a[:, :, P:]  # [1, G, G] between completion tokens
    print(f"policy layer {i}, abcd: " + " ".join(f"{c:+.2f}" for c in reward.abcd(score, A, mask, 1.0)[0].tolist()))

# %% [markdown]
# **4. `min_new_tokens` and a negative KL.** `rollout` lets the policy end early. Forbid EOS for
# the first tokens and the samples no longer come from the policy, while the KL estimate
# log pi - log pi_ref still assumes they do. A policy that has moved mass onto EOS (here: EOS
# logit + 5) then pays a negative KL penalty: reward for free. PPO finds this over long runs (TRL
# issue #1002); here we build that policy directly. Predict the sign of each estimate first.

# %%
def logp_more_eos(seq, P):
    """log pi(y_t) [B, G] for pi = the policy with its EOS logit raised by 5."""
    with torch.no_grad():
        logits = policy(seq, attention_mask=torch.ones_like(seq)).logits[:, P - 1:-1]
    logits[..., tok.eos_token_id] += 5.0
    return torch.log_softmax(logits, -1).gather(-1, seq[:, P:, None]).squeeze(-1)


def kl_estimate(min_new_tokens):
    """Mean over rollouts of sum_t log pi(y_t) - log pi_ref(y_t), sampling from pi with EOS forbidden
    for the first min_new_tokens tokens."""
    prompt_ids, eos = seq[:, :P].repeat(256, 1), tok.eos_token_id
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # generate drops this all-ones mask, then warns that it is missing
    # Not abc_ppo.rollout, which samples from the policy itself and nothing else: here EOS + 5 (pi, not
    # pi_ref) and, for the first min_new_tokens tokens, no EOS at all.
    gen = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, max_new_tokens=15, min_new_tokens=min_new_tokens,
                           sequence_bias={(eos,): 5.0}, pad_token_id=eos, eos_token_id=eos)
    out = policy.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids), generation_config=gen)
    transformers.logging.set_verbosity(verbosity)
    is_eos = out[:, P:] == eos  # the completion runs to its first EOS, as rollout's comp_mask does
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), is_eos.shape[1])
    comp_mask = (torch.arange(is_eos.shape[1]) <= first[:, None]).long()
    with torch.no_grad():
        pi_ref = abc_ppo.forward(ref, None, out, torch.ones_like(out), P).logp
    return ((logp_more_eos(out, P) - pi_ref) * comp_mask).sum(1).mean().item()


print(f"KL estimate, EOS allowed:        {kl_estimate(0):+.3f}  (an estimate of KL(pi || pi_ref) >= 0)")
print(f"KL estimate, min_new_tokens=15: {kl_estimate(15):+.3f}  (negative: the penalty pays the policy)")

# %% [markdown]
# **5. Dropout on.** `load_models` keeps every model in eval mode. Turn dropout on and the first
# update's ratio is no longer 1: old and new log-probs come from different dropout masks, so PPO
# clips and reweights noise.

# %%
learner = copy.deepcopy(policy).train()  # dropout on
ppo_updates(learner, abc_ppo.ValueHead(learner.config.hidden_size), batch(learner), n=2)

# %% [markdown]
# **6. Longer completions.** The paper's completions are 8-15 tokens; its effect is largest at
# 90-160. Section 6 said a sparse reward fades as 0.95^k over the k tokens before the end. Look at
# the mechanism on a long completion of mini's, then train on 40-60 tokens for half the steps.

# %%
rollouts = batch(policy, B=4, gen_len=(40, 60))
mechanism({s: abc_ppo.experience(flags(reward=s, beta=0.8), models, value_head, *rollouts, args.init_kl_coef,
                                 no_autocast) for s in ("sparse", "abc")}, 0, "mechanism-40-60.png")
rows = train("abc", 0, "--gen_len", "40", "60", name="abc-40-60", steps=max(1, STEPS // 2))
print(f"40-60 tokens: reward first step {rows[0]['reward_mean']:+.2f}, last step {rows[-1]['reward_mean']:+.2f}, "
      f"completion length {rows[-1]['completion_len']:.1f}")
