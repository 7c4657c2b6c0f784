"""PPO for RLHF with dense rewards from the reward model's attention (ABC).

Chan, Sun, Holt, van der Schaar, "Dense Reward for Free in Reinforcement Learning from
Human Feedback", ICML 2024. A reward model (RM) gives one score per completion. Instead
of putting it all on the last token, ABC spreads it with the RM's own last-layer
attention a_t from the scoring position over the completion tokens:

    r_t = beta * score * a_t + (1 - beta) * score * [t = last] - kl_coef * (log p(y_t) - log p_ref(y_t))

Read top to bottom: arguments, data, models and value head, rollout, policy forward, GAE, PPO loss,
one PPO step, evaluation, training loop. reward.py is the reward side: the schemes, the one call that picks one,
and the RM's forward pass. What a first reading may skip lives in plumbing/ (presets and flag checks,
checkpoints, the attention-row kernel, the estimators, CPU speed settings, the credit views); in main,
the lines that are scaffolding rather than the algorithm say so.

Left out, as in the paper's setup (TRL 0.7.4's PPOTrainer with its IMDb defaults), so that the runs
compare with the paper's: no gradient clipping (its max_grad_norm was None), no entropy bonus (the
KL penalty against the reference is what keeps the policy from collapsing), and no learning-rate
schedule (a constant Adam learning rate).

    python abc_ppo.py --reward abc --beta 0.5
"""
import argparse
import contextlib
import random
import time
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import GenerationConfig

import reward
from plumbing import checkpoints, credit, estimators, evaluation, mini, presets, speed
from plumbing.attention import KERNEL, attention_rows, completion_attention
from plumbing.models import is_decoder, positions


# 1. Arguments ------------------------------------------------------------------------------------
def parse_args(argv=None):
    """The defaults are the paper's TRL 0.7.4 IMDb configuration. --preset mini (which auto picks when
    the hub is unreachable) swaps those marked [preset] for presets.MINI's; a flag given always wins."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=presets.EPILOG,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("what to train: models, prompts, completions")
    g.add_argument("--preset", default="auto", choices=["auto", "paper", "mini"],
                   help="auto: paper if the hub answers or its models are cached, else mini")
    g.add_argument("--mini_dir", default=mini.MINI_DIR, help="the mini build: the committed data/mini, or a cache")
    g.add_argument("--policy", default="lvwerra/gpt2-imdb", help="causal LM: hub name or local dir [preset]")
    g.add_argument("--reward_model", default="XanderJC/gpt2-rm-imdb", help="sequence classifier [preset]")
    g.add_argument("--dataset", default="stanfordnlp/imdb", help="hub name, dir, or .csv/.jsonl with 'text' [preset]")
    g.add_argument("--min_chars", type=int, default=200, help="keep texts longer than this [preset]")
    g.add_argument("--score_eos", type=int, default=0, choices=[0, 1], help="1: the RM reads a final EOS [preset]")
    # TRL's LengthSampler(2, 8) and (8, 16) exclude the upper end: prompts of 2-7 tokens, completions of 8-15.
    g.add_argument("--prompt_len", type=int, nargs="+", default=[2, 7], metavar="N",
                   help="prompt = first MIN [MAX] tokens of a text [preset]")
    g.add_argument("--gen_len", type=int, nargs=2, default=[8, 15], metavar=("MIN", "MAX"),
                   help="completion length, MIN..MAX")
    g.add_argument("--min_new_tokens", action="store_true",
                   help="forbid EOS before each completion's drawn length, the paper's protocol (off: see rollout)")
    g = p.add_argument_group("PPO")
    g.add_argument("--steps", type=int, default=150, help="PPO steps, one batch of rollouts each [preset]")
    g.add_argument("--batch_size", type=int, default=16, help="rollouts per step")
    g.add_argument("--mini_batch_size", type=int, default=1, help="rollouts per gradient step (the paper's 1)")
    g.add_argument("--ppo_epochs", type=int, default=4, help="passes over each batch")
    g.add_argument("--lr", type=float, default=1.41e-5, help="Adam learning rate [preset]")
    g.add_argument("--cliprange", type=float, default=0.2, help="PPO ratio clip")
    g.add_argument("--cliprange_value", type=float, default=0.2, help="value clip around the old value")
    g.add_argument("--vf_coef", type=float, default=0.1, help="value loss weight")
    g = p.add_argument_group("KL and GAE")
    g.add_argument("--init_kl_coef", type=float, default=0.2, help="initial KL penalty coefficient")
    g.add_argument("--kl_coef", type=float, metavar="C",
                   help="hold the KL coefficient fixed at C, the adaptive controller off (as for a reward-KL frontier)")
    g.add_argument("--target_kl", type=float, default=6.0, help="adaptive KL controller target")
    g.add_argument("--kl_horizon", type=float, default=10000, help="adaptive KL controller horizon")
    g.add_argument("--gamma", type=float, default=1.0, help="discount")
    g.add_argument("--lam", type=float, default=0.95, help="GAE lambda")
    g = p.add_argument_group("credit schemes (reward.py)")
    g.add_argument("--reward", default="abc", choices=reward.SCHEMES, help="the credit scheme")
    g.add_argument("--beta", type=float, default=0.5, help="abc, abcd, shapley, ig: share of the score spread as credit")
    g.add_argument("--shapley_units", type=int, default=16, metavar="M",
                   help="shapley: players per completion, its tokens up to M, else M contiguous spans")
    g.add_argument("--shapley_perms", type=int, default=8, metavar="K",
                   help=f"shapley: above {estimators.EXACT_UNITS} units, K random orders, each with its reverse")
    g.add_argument("--ig_steps", type=int, default=16, metavar="M",
                   help="ig: points of the midpoint rule, each an RM pass forward and backward (1: one gradient)")
    g = p.add_argument_group("run and output")
    g.add_argument("--seed", type=int, default=0, help="a CPU run with the same seed repeats exactly")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: cuda if there is one")
    g.add_argument("--bf16", action="store_true", help="CUDA only: bfloat16 autocast; weights and Adam stay float32")
    g.add_argument("--out_dir", default="runs/abc", help="metrics.jsonl, checkpoint/, samples.jsonl, credit.html")
    g.add_argument("--save_every", type=int, default=50, help="checkpoint every N steps (and at the end)")
    g.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoint")
    g.add_argument("--log_samples", type=int, default=0, metavar="N",
                   help="log N completions a step with their credit: samples.jsonl, credit.html")
    g.add_argument("--eval_every", type=int, default=20, metavar="E",
                   help="evaluate before the first update, every E steps and after the last: eval.jsonl (0: off)")
    g.add_argument("--eval_prompts", type=int, default=64, metavar="N", help="evaluation: fixed prompts, the same every run")
    g.add_argument("--eval_samples", type=int, default=2, metavar="K", help="evaluation: completions of each prompt")
    g.add_argument("--gold_rm", help="evaluation's gold judge, a sequence classifier the policy never trains against "
                                     "(mini: MINI_DIR/gold_rm where the build has one)")
    g.add_argument("--explain", metavar="TEXT", help="print each scheme's credit for each token of TEXT, then exit")
    g.add_argument("--faithfulness", type=int, metavar="N",
                   help="print how each scheme's credit matches occlusion on N texts, then exit")
    return presets.resolve(p, argv)  # the preset's defaults, then the checks: one line and exit 2 on bad input


# 2. Data: review openings as prompts. -------------------------------------------------------------
def sample_prompts(texts, tok, args, data_rng, device="cpu", B=None):
    """B (default --batch_size) random review openings, row b cut to a length drawn from --prompt_len (MIN..MAX)
    and left-padded for generation, and each row's completion length drawn from --gen_len (MIN..MAX).
    Returns ids [B, P], prompt_mask [B, P] and completion lengths [B], on device."""
    B, prompt_len, gen_len = B or args.batch_size, args.prompt_len, args.gen_len
    prompt_lens = torch.randint(prompt_len[0], prompt_len[1] + 1, (B,), generator=data_rng)
    lengths = torch.randint(gen_len[0], gen_len[1] + 1, (B,), generator=data_rng)
    idx = torch.randint(len(texts), (B,), generator=data_rng).tolist()
    # 500 characters hold far more than the few tokens a prompt keeps; no need to tokenise a whole review.
    ids = [tok(texts[i][:500])["input_ids"][:n] for i, n in zip(idx, prompt_lens.tolist())]
    P = max(len(x) for x in ids)
    # Left padding keeps every prompt's last token at column P-1, where generation continues.
    input_ids = torch.tensor([[tok.pad_token_id] * (P - len(x)) + x for x in ids])
    prompt_mask = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in ids])
    return input_ids.to(device), prompt_mask.to(device), lengths.to(device)


# 3. Models: policy, frozen reference, reward model, gold judge; then the value head. ---------------
class Models(NamedTuple):
    tok: object  # the policy's tokenizer
    policy: torch.nn.Module  # the causal LM being trained
    ref: torch.nn.Module  # a frozen copy of it, the KL reference
    rm: torch.nn.Module  # the frozen reward model, a sequence classifier: the proxy PPO optimises
    rm_tok: object  # the RM's own tokenizer, or None when it shares the policy's
    gold: tuple = ()  # the gold RM that evaluation reads and training never does: its members, or none
    gold_tok: object = None  # their own tokenizer, or None when they share the policy's


def load_models(args, device):
    """The policy, a frozen copy of it as the KL reference, the frozen reward model and, for evaluation,
    the frozen gold RM's members, all in eval mode: with dropout on, the PPO ratio would leave 1 on the first update
    from noise alone."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.disable_progress_bar()  # keep the terminal for the training bar and one-line errors
    presets.check_architectures(args.policy, args.reward_model)  # before minutes of loading
    tok, rm_tok = presets.load_tokenizer(args.policy), presets.load_tokenizer(args.reward_model)
    # All three run SDPA in every layer, through KERNEL (plumbing/attention.py), which can also hand over the last
    # layer's query and keys: ABC reads the RM's attention row, ABC-D the policy's, with no
    # [B, heads, L, L] map. The reference uses the policy's kernel, so at step 0 log p - log p_ref
    # is exactly 0. float32 weights whatever the checkpoint holds (--bf16 is autocast, not bfloat16 weights).
    kw = dict(dtype=torch.float32, attn_implementation=KERNEL)
    policy = presets.load("policy", AutoModelForCausalLM, args.policy, **kw).to(device).eval()
    ref = presets.load("policy", AutoModelForCausalLM, args.policy, **kw).to(device).eval().requires_grad_(False)
    rm = presets.load("reward model", AutoModelForSequenceClassification, args.reward_model,
                      **kw).to(device).eval().requires_grad_(False)
    if rm_tok.get_vocab() == tok.get_vocab() and is_decoder(rm):
        rm_tok = None  # shared tokenizer: the RM reads the policy's token ids directly (the fast path)
    presets.check_models(args, policy, rm, rm_tok)  # what the schemes need of the RM, labels, positions, logits
    if not (args.eval_every and args.gold_rm):
        return Models(tok, policy, ref, rm, rm_tok)
    members = presets.gold_members(args.gold_rm)  # one classifier, or an ensemble (mini's gold)
    gold = tuple(presets.load("gold reward model", AutoModelForSequenceClassification, member,
                              **kw).to(device).eval().requires_grad_(False) for member in members)
    gold_tok = presets.gold_tokenizer(members)
    shares = gold_tok.get_vocab() == tok.get_vocab() and all(map(is_decoder, gold))
    return Models(tok, policy, ref, rm, rm_tok, gold, None if shares else gold_tok)


class ValueHead(torch.nn.Linear):
    """The critic: a linear read-out of the policy's last hidden state h_t before token t,
        V(x, y_<t) = w . h_t + b,
    so it shares the policy's body. nn.Linear's default initialisation, as TRL's value head has."""

    def __init__(self, hidden_size):
        super().__init__(hidden_size, 1)

    def forward(self, h):  # [B, G, H] -> [B, G]
        return super().forward(h).squeeze(-1)


# The masks, 1 on real tokens and 0 on padding, from here on:
#   prompt_mask [B, P]    the prompt, left-padded to the longest prompt P
#   comp_mask   [B, G]    the completion: its tokens up to its first EOS or length limit,
#                         the policy's actions; `mask` is its float copy, which weights the sums
#   attn_mask   [B, P+G]  both together, for every forward pass over the sequence
#   rm_mask     [B, G]    comp_mask less a final EOS the RM does not read (reward.read_mask)


# 4. Rollout: sample completions in one batched generate call. -------------------------------------
@torch.no_grad()
def rollout(policy, tok, prompt_ids, prompt_mask, lengths, min_new_tokens=False):
    """Sample a completion for each prompt; row b stops at lengths[b] tokens or at its first EOS.
    With min_new_tokens, EOS is forbidden before lengths[b], so every row is exactly that long.
    Returns seq [B, P+G] (prompt + completion) and comp_mask [B, G]."""
    P = prompt_ids.shape[1]
    # Sample from pi itself, the full distribution at temperature 1, as in the paper. generate() fills
    # every setting left unset from the model's own generation config, where a checkpoint may set a
    # temperature, a repetition penalty or an n-gram ban: another distribution than the pi that
    # forward() computes for the ratio and the KL. So that config is replaced, not merged.
    policy.generation_config = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    # Off by default. The paper forced lengths, but a policy sampled with EOS masked out while its
    # log-probs are read unmasked can push the KL estimate negative and be paid for it (TRL #1002).
    forbid_eos = [ForbidEOS(tok.eos_token_id, P, lengths)] if min_new_tokens else []
    out = policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=int(lengths.max()),
                          logits_processor=forbid_eos)
    comp = out[:, P:]  # cut at the prompt length, not [-gen_len:], which breaks if generation stops early
    G = comp.shape[1]
    t = torch.arange(G, device=comp.device)
    is_eos = comp == tok.eos_token_id
    # The EOS itself is a real action; everything after it is padding.
    first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(lengths, G))
    comp_mask = (t[None] < lengths[:, None]) & (t[None] <= first_eos[:, None])  # [B, G]
    return out, comp_mask.long()


class ForbidEOS:
    """--min_new_tokens: EOS logit -inf in row b until it has lengths[b] tokens (a per-row min_new_tokens)."""

    def __init__(self, eos_id, P, lengths):
        self.eos_id, self.P, self.lengths = eos_id, P, lengths

    def __call__(self, input_ids, scores):  # [B, P+t], [B, V]
        early = self.lengths.to(scores.device) > input_ids.shape[1] - self.P  # [B]
        scores[early, self.eos_id] = -float("inf")
        return scores


# 5. Policy forward: log-probs, values and entropy of the completion tokens. -----------------------
class PolicyOutput(NamedTuple):
    logp: torch.Tensor  # [B, G] log pi(y_t | x, y_<t)
    values: torch.Tensor  # [B, G] V(x, y_<t), or None without a value head
    entropy: torch.Tensor  # [B, G] entropy of pi at each completion step (logged only)
    attention: torch.Tensor  # [B, G, G] the policy's last-layer attention between completion tokens, or None


def forward(policy, value_head, seq, attn_mask, P, attention=False):
    """One pass of the policy over prompt + completion. The vocabulary head runs only on the G
    positions that predict completion tokens. With attention=True (ABC-D) also the last-layer
    attention among the completion tokens (plumbing.attention.completion_attention)."""
    queries = torch.arange(P, seq.shape[1], device=seq.device)  # ABC-D reads the completion tokens' rows
    with attention_rows(policy, queries) if attention else contextlib.nullcontext() as rows:
        out = policy.base_model(input_ids=seq, attention_mask=attn_mask, position_ids=positions(attn_mask),
                                use_cache=False)  # no KV cache to build: one pass
    h = out.last_hidden_state[:, P - 1:-1]  # [B, G, H]: the state before completion token t sits at P-1+t
    # Both heads run in float32, also under --bf16, so old and new log-probs agree to float
    # precision and the PPO ratio starts at 1. (Under --bf16 the sampler read bfloat16 logits, so
    # pi_old and the distribution sampled from agree only to bfloat16's precision.)
    with torch.autocast(h.device.type, enabled=False):
        h = h.float()
        logits = policy.get_output_embeddings()(h)  # [B, G, V]
        values = value_head(h) if value_head is not None else None  # [B, G]
    logprobs = F.log_softmax(logits, dim=-1)
    logp = logprobs.gather(-1, seq[:, P:, None]).squeeze(-1)
    with torch.no_grad():
        entropy = -(logprobs.exp() * logprobs).sum(-1)
    policy_attention = completion_attention(rows, P) if attention else None  # [B, G, G]
    return PolicyOutput(logp, values, entropy, policy_attention)


# 6. Advantages: GAE over the completion tokens, whitening, and the adaptive KL coefficient. -------
def gae(rewards, values, mask, gamma, lam):
    """Generalised advantage estimation, with V = 0 after the last real token:
        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t   (the value target)
    rewards, values, mask: [B, T]. Returns advantages [B, T] and returns [B, T], zero where mask is 0."""
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        adv[:, t] = next_adv
    adv = adv * mask
    return adv, (adv + values) * mask


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum()


def masked_var(x, mask):
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def whiten(x, mask):
    """(x - mean) / std over the real tokens of the batch."""
    return (x - masked_mean(x, mask)) * torch.rsqrt(masked_var(x, mask) + 1e-8) * mask


def explained_variance(returns, values, mask):
    """How much of the value targets the critic already predicts, over the batch's real tokens:
        EV = 1 - Var(R - V) / Var(R)
    1 is a perfect critic, 0 no better than a constant, below 0 worse than one."""
    return (1 - masked_var(returns - values, mask) / masked_var(returns, mask)).item()


class FixedKL:
    """--kl_coef C: kl_coef = C throughout, the setting of a reward-KL frontier (Gao et al. 2023), where each
    run's KL is the outcome of its coefficient rather than the controller's target."""

    def __init__(self, value):
        self.value = value

    def update(self, kl, n):
        pass


class AdaptiveKL:
    """Ziegler et al. (2019): kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""

    def __init__(self, init, target, horizon):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl, n):
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n / self.horizon


# 7. PPO loss: clipped policy objective plus clipped value loss. -----------------------------------
def ppo_loss(logp, old_logp, values, old_values, adv, returns, mask, cliprange, cliprange_value, vf_coef):
    """With ratio_t = exp(log pi(y_t) - log pi_old(y_t)), averaged over real tokens:
        L_pi = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))
        L_V  = 0.5 * max((V_t - R_t)^2, (old_V_t + clip(V_t - old_V_t, -eps_v, eps_v) - R_t)^2)
        loss = L_pi + vf_coef * L_V
    All inputs [B, T]. Returns the loss and a dict of statistics."""
    ratio = torch.exp(logp - old_logp)
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cliprange, 1 + cliprange))
    v_clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    vf_plain, vf_clip = (values - returns) ** 2, (v_clipped - returns) ** 2
    pg_loss, vf_loss = masked_mean(pg, mask), masked_mean(0.5 * torch.max(vf_plain, vf_clip), mask)
    with torch.no_grad():
        stats = dict(policy_loss=pg_loss.item(), value_loss=vf_loss.item(),
                     clip_frac=masked_mean(((ratio - 1).abs() > cliprange).float(), mask).item(),
                     # where the clipped term wins, so V_t gets no gradient (a value inside the range
                     # ties with itself up to rounding, which must not count)
                     value_clip_frac=masked_mean(((values - old_values).abs() > cliprange_value)
                                                 & (vf_clip > vf_plain), mask).item(),
                     approx_kl=masked_mean(0.5 * (logp - old_logp) ** 2, mask).item())
    return pg_loss + vf_coef * vf_loss, stats


# 8. One PPO step: score the rollouts, then update on them. ---------------------------------------
class Experience(NamedTuple):
    """One step's rollouts and what the update needs from them."""
    seq: torch.Tensor  # [B, P+G] prompt + completion
    prompt_mask: torch.Tensor  # [B, P]
    comp_mask: torch.Tensor  # [B, G]
    old: PolicyOutput  # log pi_old and V_old: the policy that sampled
    rm_score: torch.Tensor  # [B] the RM's score
    rm_credit: torch.Tensor  # [B, G] the scheme's credit, before the KL penalty
    kl: torch.Tensor  # [B, G] per-token KL estimate log pi_old - log pi_ref
    rewards: torch.Tensor  # [B, G] rm_credit - kl_coef * kl
    adv: torch.Tensor  # [B, G] GAE advantages, whitened
    returns: torch.Tensor  # [B, G] value targets
    rm_rows: int  # sequences the RM scored: B, and more for a scheme that scores variants of each
    kl_coef: float  # the KL coefficient these rewards were computed with


@torch.no_grad()
def experience(args, models, value_head, seq, prompt_mask, comp_mask, kl_coef, autocast, credit_rng=None):
    """Everything PPO needs from a batch of rollouts: the old and reference log-probs, the RM's score
    and the scheme's per-token credit, the rewards r_t = credit_t - kl_coef * KL_t, and GAE."""
    P, mask = prompt_mask.shape[1], comp_mask.float()
    attn_mask = torch.cat([prompt_mask, comp_mask], 1)  # [B, P+G]
    with autocast:
        old = forward(models.policy, value_head, seq, attn_mask, P,
                      attention=args.reward in reward.READS_POLICY_ATTENTION)  # ABC-D's signal too
        ref_logp = forward(models.ref, None, seq, attn_mask, P).logp  # [B, G]
    # Outside autocast: the RM scores in float32, as the paper's authors did, so --bf16 rounds neither
    # the score nor the attention that becomes the reward.
    rm_score, rm_credit, rm_rows = reward.per_token_rewards(args, models, seq, prompt_mask, comp_mask, old.attention,
                                                            credit_rng)  # [B], [B, G]
    kl = (old.logp - ref_logp) * mask  # [B, G]
    rewards = rm_credit - kl_coef * kl
    adv, returns = gae(rewards, old.values, mask, args.gamma, args.lam)
    return Experience(seq, prompt_mask, comp_mask, old, rm_score, rm_credit, kl, rewards, whiten(adv, mask), returns,
                      rm_rows, kl_coef)


def real_columns(attn_mask, P):
    """The columns [first, end) in which some row of a mini-batch has a real token, so that a mini-batch of
    short completions need not pay for the batch's longest: padding changes no result, and the update
    runs on these columns alone. first < P < end, since every row is real at the last prompt column P-1
    and at the first completion column P. attn_mask [mb, P+G]."""
    real = attn_mask.any(0).nonzero()
    return int(real[0]), int(real[-1]) + 1


def ppo_update(args, policy, value_head, opt, exp, data_rng, autocast):
    """ppo_epochs passes over the batch in shuffled mini-batches, one Adam step each. Returns the
    statistics of ppo_loss and the entropy, averaged over the updates."""
    P, mask = exp.prompt_mask.shape[1], exp.comp_mask.float()
    attn_mask = torch.cat([exp.prompt_mask, exp.comp_mask], 1)
    updates = []
    for _ in range(args.ppo_epochs):
        for idx in torch.randperm(len(exp.seq), generator=data_rng).split(args.mini_batch_size):
            idx = idx.to(exp.seq.device)
            first, end = real_columns(attn_mask[idx], P)
            comp = lambda x: x[idx, :end - P]  # [B, G] -> [mb, end - P]: the mini-batch's completion columns kept
            with autocast:
                new = forward(policy, value_head, exp.seq[idx, first:end], attn_mask[idx, first:end], P - first)
                loss, stats = ppo_loss(new.logp, comp(exp.old.logp), new.values, comp(exp.old.values), comp(exp.adv),
                                       comp(exp.returns), comp(mask), args.cliprange, args.cliprange_value, args.vf_coef)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            updates.append(stats | dict(entropy=masked_mean(new.entropy, comp(mask)).item()))
    return {key: sum(u[key] for u in updates) / len(updates) for key in updates[0]}


# 9. Evaluation: the gold RM's score against the KL from the reference, on fixed prompts. -----------
@torch.no_grad()
def evaluate(args, models, prompts, autocast, seed):
    """The field's reading of a run (Gao, Schulman, Hilton 2023): K = --eval_samples completions of each
    fixed prompt, sampled from pi as in training, scored by the proxy RM that PPO optimises and by a gold
    RM that it never sees (the mean score of its members), and the sequence KL
        KL(pi || pi_ref) = E_{y ~ pi} sum_t (log pi(y_t) - log pi_ref(y_t)),
    estimated without bias by its mean over the samples. In chunks of 64 completions (generation pays per
    token, not per row, on a small model; the vocabulary's log-softmax bounds the chunk), on a random stream
    of its own (seed), so that training's is untouched. Returns what evaluation.Evaluation.write records."""
    t0 = time.perf_counter()
    ids, mask, lengths = (x.repeat_interleave(args.eval_samples, 0) for x in prompts)  # [N K, P], [N K, P], [N K]
    G, P = int(lengths.max()), ids.shape[1]
    seqs, comp_masks, proxy, gold, kl = [], [], [], [], []
    with evaluation.own_stream(seed, ids.device):
        for chunk in torch.arange(len(ids)).split(64):
            with autocast:
                seq, comp_mask = rollout(models.policy, models.tok, ids[chunk], mask[chunk], lengths[chunk],
                                         args.min_new_tokens)
                attn_mask = torch.cat([mask[chunk], comp_mask], 1)
                logp_diff = forward(models.policy, None, seq, attn_mask, P).logp - forward(models.ref, None, seq, attn_mask, P).logp
            kl.append((logp_diff * comp_mask).sum(1))  # [chunk]: each completion's log pi / pi_ref
            proxy.append(reward.score_completions(models.rm, models.rm_tok, models.tok, seq, mask[chunk], comp_mask,
                                                  args.score_eos)[0])
            if models.gold:
                gold.append(sum(reward.score_completions(member, models.gold_tok, models.tok, seq, mask[chunk],
                                                         comp_mask, args.score_eos)[0] for member in models.gold)
                            / len(models.gold))
            seqs.append(F.pad(seq, (0, P + G - seq.shape[1]), value=models.tok.pad_token_id))  # a chunk may stop early
            comp_masks.append(F.pad(comp_mask, (0, G - comp_mask.shape[1])))
    return dict(seq=torch.cat(seqs), comp_mask=torch.cat(comp_masks), proxy=torch.cat(proxy),
                gold=torch.cat(gold) if gold else None, kl=torch.cat(kl), seconds=time.perf_counter() - t0)


# 10. Training loop. --------------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    autocast = speed.bf16_autocast(device, args.bf16)  # --bf16: the policy's passes in bfloat16 on a GPU
    mini.ensure_preset(args)  # scaffolding: the committed mini build, checked by its fingerprints
    if args.explain or args.faithfulness:  # scaffolding: the credit views print a table, then exit
        return credit.report(args, load_models(args, device), device, reward)
    logs = checkpoints.Logs(args)  # scaffolding: config.json, metrics.jsonl and samples.jsonl, first

    # Seeding: a CPU run with the same seed repeats exactly.
    random.seed(args.seed)
    torch.manual_seed(args.seed)  # token sampling in generate
    data_rng = torch.Generator().manual_seed(args.seed)  # prompts, lengths and mini-batch order
    credit_rng = torch.Generator().manual_seed(args.seed)  # a scheme's own draws, apart so prompts stay paired by seed

    # Set-up: prompts, models, the critic, Adam and the KL controller.
    texts = presets.load_texts(args.dataset, args.min_chars)
    models = load_models(args, device)
    speed.tune(models.policy, models.ref)  # scaffolding: CPU speed settings (docs/speed.md)
    value_head = ValueHead(models.policy.config.hidden_size).to(device)
    opt = torch.optim.Adam(list(models.policy.parameters()) + list(value_head.parameters()), lr=args.lr, fused=True)
    kl_ctl = FixedKL(args.kl_coef) if args.kl_coef is not None else AdaptiveKL(args.init_kl_coef, args.target_kl, args.kl_horizon)
    start = checkpoints.resume(args.out_dir, logs, models, value_head, opt, kl_ctl, data_rng, credit_rng) if args.resume else 0
    # Evaluation: fixed prompts with their lengths, from a stream of their own; eval.jsonl (plumbing/evaluation.py).
    eval_prompts = sample_prompts(texts, models.tok, args, evaluation.prompt_stream(), device, args.eval_prompts)
    evals = evaluation.Evaluation(args, eval_prompts, models.tok, start, bool(models.gold))
    if start == 0 and evals.due(0):  # before the first update: the reference policy itself, at KL 0
        evals.write(0, **evaluate(args, models, eval_prompts, autocast, evals.seed(0)))

    with checkpoints.StopOnSignal() as stop:  # scaffolding: SIGTERM or SIGINT finish the step, save, exit
        bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=args.reward)
        for step in bar:
            # --- Rollout: prompts -> sampled completions -------------------------------------
            t0 = time.perf_counter()
            prompt_ids, prompt_mask, lengths = sample_prompts(texts, models.tok, args, data_rng, device)
            with autocast, checkpoints.sampling_diverged(step, args, bar):  # scaffolding: nan logits, one line
                seq, comp_mask = rollout(models.policy, models.tok, prompt_ids, prompt_mask, lengths, args.min_new_tokens)
            t1 = time.perf_counter()

            # --- Experience: log-probs, RM score and credit, rewards, GAE --------------------
            exp = experience(args, models, value_head, seq, prompt_mask, comp_mask, kl_ctl.value, autocast, credit_rng)
            checkpoints.check_scores(exp.rm_score, step, models.tok, seq, prompt_mask, bar)  # scaffolding
            t2 = time.perf_counter()

            # --- Update: ppo_epochs passes over shuffled mini-batches, then the KL controller --
            stats = ppo_update(args, models.policy, value_head, opt, exp, data_rng, autocast)
            mean_kl = exp.kl.sum(1).mean().item()
            kl_ctl.update(mean_kl, args.batch_size)
            t3 = time.perf_counter()
            checkpoints.check_finite(step, args, bar, stats | dict(kl=mean_kl, kl_coef=kl_ctl.value),  # scaffolding
                                     dict(rewards=exp.rewards), policy=models.policy, value_head=value_head)

            # --- Log: one JSON line per step, flushed at once; a checkpoint every save_every --
            row = dict(step=step, reward_mean=exp.rm_score.mean().item(),
                       reward_std=exp.rm_score.std().item() if args.batch_size > 1 else 0.0, kl=mean_kl, kl_coef=exp.kl_coef,
                       **stats, explained_variance=explained_variance(exp.returns, exp.old.values, comp_mask.float()),
                       completion_len=comp_mask.sum(1).float().mean().item(), rm_rows=exp.rm_rows,
                       time_generate=t1 - t0, time_score=t2 - t1, time_optimize=t3 - t2)
            logs.write(row, models.tok, exp)
            evals.count(row)
            if evals.due(step + 1):  # --- Evaluate: the gold RM and the KL on the fixed prompts, every E steps
                evals.write(step + 1, **evaluate(args, models, eval_prompts, autocast, evals.seed(step + 1)))
            bar.set_postfix(reward=f"{row['reward_mean']:.2f}", kl=f"{mean_kl:.2f}")
            if (step + 1) % args.save_every == 0 or step + 1 == args.steps or stop.signum:
                checkpoints.save(args.out_dir, step, models, value_head, opt, kl_ctl, data_rng, credit_rng)
            stop.exit_if_signalled(step, bar)  # scaffolding: a signal came during the step; it is saved, now go
    logs.close()


if __name__ == "__main__":
    main()
