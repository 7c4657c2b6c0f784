# %% [markdown]
# # Dense reward for free: a walkthrough of ABC on the mini preset
#
# One prompt through the whole method, with the project's own functions: the policy samples a
# completion, the reward model scores it and says where it looked, five schemes turn that one score
# into per-token credit, and one PPO update uses it. Then a short sparse-against-abc run, and
# exercises.
#
# Runs as a script (`python walkthrough.py`, 7 minutes on 2 CPU cores) or as a notebook:
# open it in VS Code or Jupyter (`jupytext --to notebook walkthrough.py`). Figures are saved
# in `runs/walkthrough/`. Settings (environment variables): `WALKTHROUGH_STEPS` (PPO steps per
# run, 40), `WALKTHROUGH_SEEDS` (2), `WALKTHROUGH_MINI_DIR` (the mini cache, built on first use),
# `WALKTHROUGH_OUT` (where runs and figures go).

# %%
import json
import os
import sys

import matplotlib.pyplot as plt
import torch
import transformers

import abc_ppo
import credit
import mini
import presets
import reward

STEPS = int(os.environ.get("WALKTHROUGH_STEPS", 40))
SEEDS = int(os.environ.get("WALKTHROUGH_SEEDS", 2))
MINI_DIR = os.environ.get("WALKTHROUGH_MINI_DIR", mini.MINI_DIR)
OUT = os.environ.get("WALKTHROUGH_OUT", "runs/walkthrough")
os.makedirs(OUT, exist_ok=True)
mini.ensure(MINI_DIR)  # about two minutes the first time, then reused

# The same flags abc_ppo.py takes. --reward abcd loads the policy with eager attention, so that
# its attention can be read too.
args = abc_ppo.parse_args(["--preset", "mini", "--mini_dir", MINI_DIR, "--reward", "abcd", "--beta", "0.5"])
device = torch.device("cpu")
tok, policy, ref, rm, rm_tok = abc_ppo.load_models(args, device)
texts = presets.load_texts(args.dataset, args.min_chars)
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
score, attention, prefix_scores = abc_ppo.score_completions(rm, rm_tok, tok, seq, prompt_mask, comp_mask,
                                                            args.score_eos)  # [1], [1, G], [1, G+1]
print(f"RM score {score.item():+.3f}")
with torch.no_grad():
    att_map = rm(seq, attention_mask=torch.ones_like(seq), output_attentions=True).attentions[-1][0].mean(0)  # [L, L]
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
# ## 3. Five schemes' credit for the same completion
# `abc_ppo.per_token_rewards` holds the only lines where the schemes differ. sparse puts the whole
# score on the last token, uniform spreads it evenly, abc spreads a share beta by the RM's attention,
# red gives each token what it adds to the score (the sum is score - s_0), abcd uses the policy's
# own attention.

# %%
mask = comp_mask.float()
with torch.no_grad():
    policy_attention = abc_ppo.forward(policy, None, seq, torch.ones_like(seq), P, attention=True).attention
signals = dict(rm_score=score, mask=mask, attention=attention, prefix_scores=prefix_scores,
               policy_attention=policy_attention)
credits = {n: abc_ppo.per_token_rewards(n, args.beta, **signals)[0] for n in reward.REWARDS}
print(f"{'token':14}" + "".join(f"{n:>9}" for n in credits))
for t, w in enumerate(words(ids[P:])):
    print(f"{w!r:14}" + "".join(f"{c[t]:+9.3f}" for c in credits.values()))
print(f"{'sum':14}" + "".join(f"{c.sum():+9.3f}" for c in credits.values()))
fig, ax = plt.subplots(figsize=(10, 3.5))
G = mask.shape[1]
for i, (n, c) in enumerate(credits.items()):
    ax.bar(torch.arange(G) + (i - 2) * 0.16, c, width=0.16, label=n)
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
# ## 5. One PPO update
# A batch of rollouts, scored; rewards = credit - KL penalty; GAE advantages, whitened; then the
# clipped PPO loss on the whole batch. Before the first gradient step the policy is the one that
# sampled, so the ratio pi / pi_old is exactly 1 and nothing is clipped; after a few steps on the
# same batch it moves, and the clip range starts to bite.

# %%
def ppo_batch(policy, value_head, B=16, gen_len=(8, 15), seed=0):
    """Rollouts and everything PPO needs from them, as in abc_ppo.main's first two sections."""
    data_rng = torch.Generator().manual_seed(seed)
    prompt_len = torch.randint(args.prompt_len[0], args.prompt_len[1] + 1, (B,), generator=data_rng)
    prompt_ids, prompt_mask = abc_ppo.sample_prompts(texts, tok, prompt_len, data_rng)
    seq, comp_mask = abc_ppo.rollout(policy, tok, prompt_ids, prompt_mask,
                                     torch.randint(gen_len[0], gen_len[1] + 1, (B,), generator=data_rng))
    P, mask = prompt_ids.shape[1], comp_mask.float()
    attn_mask = torch.cat([prompt_mask, comp_mask], 1)
    score, attention, _ = abc_ppo.score_completions(rm, rm_tok, tok, seq, prompt_mask, comp_mask, args.score_eos)
    with torch.no_grad():
        old = abc_ppo.forward(policy, value_head, seq, attn_mask, P)
        kl = (old.logp - abc_ppo.forward(ref, None, seq, attn_mask, P).logp) * mask
    rewards = reward.abc(score, attention, mask, args.beta) - args.init_kl_coef * kl
    adv, returns = abc_ppo.gae(rewards, old.values, mask, args.gamma, args.lam)
    return dict(seq=seq, attn_mask=attn_mask, P=P, mask=mask, old=old, adv=abc_ppo.whiten(adv, mask),
                returns=returns, score=score, attention=attention)


def ppo_updates(policy, value_head, batch, lr, n=4):
    """n gradient steps on the same batch, printing the ratio, clip fraction and losses of each."""
    opt = torch.optim.Adam(list(policy.parameters()) + list(value_head.parameters()), lr=lr)
    old, mask = batch["old"], batch["mask"]
    for i in range(n):
        new = abc_ppo.forward(policy, value_head, batch["seq"], batch["attn_mask"], batch["P"])
        loss, stats = abc_ppo.ppo_loss(new.logp, old.logp, new.values, old.values, batch["adv"], batch["returns"],
                                       mask, args.cliprange, args.cliprange_value, args.vf_coef)
        ratio = torch.exp(new.logp - old.logp)[mask.bool()]
        print(f"update {i}: ratio in [{ratio.min():.4f}, {ratio.max():.4f}]  clip_frac {stats['clip_frac']:.3f}  "
              f"policy_loss {stats['policy_loss']:+.4f}  value_loss {stats['value_loss']:.4f}")
        opt.zero_grad()
        loss.backward()
        opt.step()


learner = abc_ppo.load_models(args, device)[1]  # a fresh copy of the policy to train
value_head = abc_ppo.ValueHead(learner.config.hidden_size)
ppo_updates(learner, value_head, ppo_batch(learner, value_head), lr=args.lr)

# %% [markdown]
# ## 6. Sparse against abc, same seeds
# The full loop, `abc_ppo.main`, for each scheme and seed. The paper's claim on its GPT-2 models:
# abc's reward rises faster. Here the runs are short; `run_imdb.sh` and `plot.py` run and report
# many seeds with ± 2 s.e.

# %%
def train(scheme, seed, *flags, name=None):
    """A short abc_ppo.py run; returns its metrics, one dict per step."""
    out = os.path.join(OUT, name or scheme, f"seed{seed}")
    abc_ppo.main(["--preset", "mini", "--mini_dir", MINI_DIR, "--reward", scheme, "--seed", str(seed),
                  "--steps", str(STEPS), "--out_dir", out, *flags])
    return [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]


runs = {scheme: [train(scheme, seed) for seed in range(SEEDS)] for scheme in ("sparse", "abc")}
fig, ax = plt.subplots(figsize=(7, 4))
for scheme, seeds in runs.items():
    mean = torch.tensor([[r["reward_mean"] for r in rows] for rows in seeds]).mean(0)
    ax.plot(mean, label=f"{scheme} (mean of {SEEDS} seeds)")
ax.set(xlabel="PPO step", ylabel="RM score (batch mean)", title="sparse vs abc, mini preset")
ax.legend()
show(fig, "sparse_vs_abc.png")

# %% [markdown]
# ## Exercises
# Each cell runs as it stands; change it and run it again.
#
# **1. beta = 0 against beta = 1.** beta = 0 is sparse; beta = 1 puts all the score where the RM
# looked. Compare the credit, then train both.

# %%
for beta in (0.0, 1.0):
    r = reward.abc(score, attention, mask, beta)[0]
    print(f"beta {beta}: " + " ".join(f"{c:+.2f}" for c in r.tolist()))
for beta in ("0", "1"):
    rows = train("abc", 0, "--beta", beta, name=f"abc-beta{beta}")
    print(f"beta {beta}: reward first step {rows[0]['reward_mean']:+.2f}, last step {rows[-1]['reward_mean']:+.2f}")

# %% [markdown]
# **2. Attention from another layer.** ABC reads the RM's last layer. mini's RM has a single
# block, so its last layer is also its first; pass a deeper `--reward_model` (with the policy's
# tokenizer) in `args` above to compare its layers. The policy has 4 layers: ABC-D's credit read
# from each of them differs.

# %%
with torch.no_grad():
    ones = torch.ones_like(seq)
    rm_layers = rm(seq, attention_mask=ones, output_attentions=True).attentions  # [1, heads, L, L] each
    policy_layers = policy(seq, attention_mask=ones, output_attentions=True).attentions
for i, a in enumerate(rm_layers):
    row = a[0, :, -1, P:].mean(0)[None]  # the scored token's row over the completion: [1, G]
    print(f"RM layer {i}, abc:     " + " ".join(f"{c:+.2f}" for c in reward.abc(score, row, mask, 1.0)[0].tolist()))
for i, a in enumerate(policy_layers):
    A = a[:, :, P:, P:].mean(1)  # [1, G, G] between completion tokens
    print(f"policy layer {i}, abcd: " + " ".join(f"{c:+.2f}" for c in reward.abcd(score, A, mask, 1.0)[0].tolist()))

# %% [markdown]
# **3. `min_new_tokens` and a negative KL.** `rollout` lets the policy end early. Forbid EOS for
# the first tokens and the samples no longer come from the policy, while the KL estimate
# log pi - log pi_ref still assumes they do. A policy that has moved mass onto EOS (here: EOS
# logit + 3) then pays a negative KL penalty: reward for free. PPO finds this over long runs (TRL
# issue #1002); here we build that policy directly.

# %%
def logp_more_eos(seq, P):
    """log pi(y_t) [B, G] for pi = the policy with its EOS logit raised by 3."""
    with torch.no_grad():
        logits = policy(seq, attention_mask=torch.ones_like(seq)).logits[:, P - 1:-1]
    logits[..., tok.eos_token_id] += 3.0
    return torch.log_softmax(logits, -1).gather(-1, seq[:, P:, None]).squeeze(-1)


def kl_estimate(min_new_tokens):
    """Mean over rollouts of sum_t log pi(y_t) - log pi_ref(y_t), sampling from pi with EOS forbidden
    for the first min_new_tokens tokens."""
    prompt_ids = seq[:, :P].repeat(64, 1)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # generate drops this all-ones mask, then warns that it is missing
    policy.generation_config.min_new_tokens = min_new_tokens
    policy.generation_config.sequence_bias = {(tok.eos_token_id,): 3.0}  # sample from pi, not pi_ref
    out, comp_mask = abc_ppo.rollout(policy, tok, prompt_ids, torch.ones_like(prompt_ids),
                                     torch.full((64,), 15))
    policy.generation_config.min_new_tokens, policy.generation_config.sequence_bias = None, None
    transformers.logging.set_verbosity(verbosity)
    with torch.no_grad():
        pi_ref = abc_ppo.forward(ref, None, out, torch.ones_like(out), P).logp
    return ((logp_more_eos(out, P) - pi_ref) * comp_mask).sum(1).mean().item()


print(f"KL estimate, EOS allowed:        {kl_estimate(0):+.3f}  (an estimate of KL(pi || pi_ref) >= 0)")
print(f"KL estimate, min_new_tokens=15: {kl_estimate(15):+.3f}  (negative: the penalty pays the policy)")

# %% [markdown]
# **4. Dropout on.** `load_models` keeps every model in eval mode. Turn dropout on and the first
# update's ratio is no longer 1: old and new log-probs come from different dropout masks, so PPO
# clips and reweights noise.

# %%
learner = abc_ppo.load_models(args, device)[1].train()  # dropout on
value_head = abc_ppo.ValueHead(learner.config.hidden_size)
ppo_updates(learner, value_head, ppo_batch(learner, value_head), n=2, lr=args.lr)

# %% [markdown]
# **5. Longer completions.** The paper's completions are 8-15 tokens. mini's policy writes 40-60
# token completions too (`--gen_len 40 60`); the sparse reward then sits further from most tokens.
# See where abc puts the credit in long completions, then train on them.

# %%
batch = ppo_batch(policy, abc_ppo.ValueHead(policy.config.hidden_size), B=4, gen_len=(40, 60))
abc_credit = reward.abc(batch["score"], batch["attention"], batch["mask"], 1.0)
for b in range(4):
    top = [tok.decode([int(batch["seq"][b, batch["P"] + t])]) for t in abc_credit[b].topk(3).indices.tolist()]
    print(f"{int(batch['mask'][b].sum())} tokens, score {batch['score'][b]:+.2f}; abc's top tokens: {top}")
rows = train("abc", 0, "--gen_len", "40", "60", name="abc-40-60")
print(f"40-60 tokens: reward first step {rows[0]['reward_mean']:+.2f}, last step {rows[-1]['reward_mean']:+.2f}, "
      f"completion length {rows[-1]['completion_len']:.1f}")
