"""PPO for RLHF with dense rewards from the reward model's attention (ABC).

Chan, Sun, Holt, van der Schaar, "Dense Reward for Free in Reinforcement Learning from
Human Feedback", ICML 2024. A reward model (RM) gives one score per completion. Instead
of putting it all on the last token, ABC spreads it with the RM's own last-layer
attention a_t from the scoring position over the completion tokens:

    r_t = beta * score * a_t + (1 - beta) * score * [t = last] - kl_coef * (log p(y_t) - log p_ref(y_t))

Read top to bottom: arguments, data, models, rollout, policy forward, scoring and rewards,
GAE, PPO loss, checkpoints, seeing the credit, training loop. reward.py holds the schemes.

    python abc_ppo.py --reward abc --beta 0.5
"""
import argparse
import html
import inspect
import json
import os
import random
import shutil
import socket
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import mini
from credit import faithfulness_report
from reward import REWARDS


# ---------------------------------------------------------------------------------------
# 1. Arguments. The PPO defaults are the paper's TRL 0.7.4 IMDb configuration; models,
#    data and a few settings come from a preset unless given.
# ---------------------------------------------------------------------------------------
PRESETS = {
    # The paper's models and data, from the Hugging Face hub. Its lengths were TRL's
    # LengthSampler(2, 8) and (8, 16), which exclude the upper end: prompts 2-7, completions 8-15.
    "paper": dict(policy="lvwerra/gpt2-imdb", reward_model="XanderJC/gpt2-rm-imdb", dataset="stanfordnlp/imdb",
                  min_chars=200, prompt_len=[2, 7], steps=150, lr=1.41e-5, score_eos=0),
    # A small GPT-2 policy and RM built offline by mini.py; prompts are held-out reviews.
    # The tiny model learns at a larger learning rate than GPT-2 124M.
    # score_eos: whether the RM reads a completion's final EOS. The paper's RM was trained on
    # review text and read before EOS (its pad id is EOS); mini's RM is trained on review + EOS.
    "mini": dict(policy="{mini_dir}/policy", reward_model="{mini_dir}/reward_model", dataset="{mini_dir}/prompts.jsonl",
                 min_chars=0, prompt_len=[2, 5], steps=80, lr=1e-4, score_eos=1),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reward", default="abc", choices=list(REWARDS), help="how the RM score becomes per-token rewards")
    p.add_argument("--beta", type=float, default=0.5, help="abc, abcd: share of the score spread by attention, in [0, 1]")
    p.add_argument("--preset", default="auto", choices=["auto", "paper", "mini"],
                   help="auto: paper if the hub answers or its models are cached, else mini")
    p.add_argument("--mini_dir", default=mini.MINI_DIR, help="where the mini preset is built and cached")
    p.add_argument("--policy", help="hub name or local dir of a causal LM (default: preset's)")
    p.add_argument("--reward_model", help="hub name or local dir of a sequence classifier (default: preset's)")
    p.add_argument("--dataset", help="hub name, local dir, or .csv/.json/.jsonl file with a 'text' column")
    p.add_argument("--score_eos", type=int, choices=[0, 1], help="1: the RM reads a final EOS; 0: it scores before it")
    p.add_argument("--min_chars", type=int, help="keep texts longer than this many characters")
    p.add_argument("--prompt_len", type=int, nargs="+", metavar="N", help="prompt = first MIN [MAX] tokens")
    p.add_argument("--gen_len", type=int, nargs=2, default=[8, 15], metavar=("MIN", "MAX"),
                   help="completion length drawn from MIN..MAX, both included")
    p.add_argument("--steps", type=int, help="PPO steps (one batch of rollouts each)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--mini_batch_size", type=int, default=1, help="the paper's value; see README")
    p.add_argument("--ppo_epochs", type=int, default=4)
    p.add_argument("--lr", type=float)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--lam", type=float, default=0.95)
    p.add_argument("--cliprange", type=float, default=0.2)
    p.add_argument("--cliprange_value", type=float, default=0.2)
    p.add_argument("--vf_coef", type=float, default=0.1)
    p.add_argument("--init_kl_coef", type=float, default=0.2)
    p.add_argument("--target_kl", type=float, default=6.0, help="adaptive KL controller target")
    p.add_argument("--kl_horizon", type=float, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--bf16", action="store_true", help="CUDA only: bfloat16 autocast (weights and optimizer stay float32)")
    p.add_argument("--out_dir", default="runs/abc")
    p.add_argument("--save_every", type=int, default=50, help="checkpoint every N steps (and at the end)")
    p.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoint")
    p.add_argument("--log_samples", type=int, default=0, metavar="N",
                   help="write N completions per step with their per-token credit to samples.jsonl, and credit.html")
    p.add_argument("--explain", metavar="TEXT", help="print the credit each scheme gives each token of TEXT, then exit")
    p.add_argument("--faithfulness", type=int, metavar="N",
                   help="print how well each scheme's credit matches the RM's own occlusion effect on N texts, then exit")
    # One clear line and exit code 2 for bad flags, instead of usage text.
    p.error = lambda msg: fail(msg)
    args = p.parse_args(argv)
    if not 0.0 <= args.beta <= 1.0:
        fail(f"--beta must be in [0, 1], got {args.beta}")
    if args.prompt_len and len(args.prompt_len) == 1:
        args.prompt_len *= 2  # one value: a fixed prompt length
    for name, pair in (("--prompt_len", args.prompt_len), ("--gen_len", args.gen_len)):
        if pair and (len(pair) != 2 or not 1 <= pair[0] <= pair[1]):
            fail(f"{name} takes MIN [MAX] with 1 <= MIN <= MAX, got {' '.join(map(str, pair))}")
    if min(1 if args.steps is None else args.steps, args.batch_size, args.mini_batch_size, args.ppo_epochs,
           args.save_every) < 1 or min(args.target_kl, args.kl_horizon) <= 0:
        fail("--steps, --batch_size, --mini_batch_size, --ppo_epochs, --save_every, --target_kl and "
             "--kl_horizon must be positive")
    if args.batch_size % args.mini_batch_size:
        fail(f"--batch_size {args.batch_size} must be a multiple of --mini_batch_size {args.mini_batch_size}")
    if not 0 <= args.log_samples <= args.batch_size:
        fail(f"--log_samples must be in [0, --batch_size {args.batch_size}], got {args.log_samples}")
    if args.faithfulness is not None and args.faithfulness < 1:
        fail(f"--faithfulness takes a number of texts >= 1, got {args.faithfulness}")
    forced_paper = args.preset == "paper"
    if args.preset == "auto":
        args.preset = choose_preset(args)
    for k, v in PRESETS[args.preset].items():
        if getattr(args, k) is None:
            setattr(args, k, v.format(mini_dir=args.mini_dir) if isinstance(v, str) else v)
    if forced_paper:
        # Without this check an unreachable hub costs about 48 s of retries before the error.
        used = [k for k in ("policy", "reward_model", "dataset") if getattr(args, k) == PRESETS["paper"][k]]
        if used and not hub_reachable() and not paper_cached(used):
            fail(f"--preset paper: the Hugging Face hub is unreachable and not all of "
                 f"{', '.join(PRESETS['paper'][k] for k in used)} are in the local cache; run once with the hub, "
                 "pass local --policy, --reward_model and --dataset, or use --preset mini")
    return args


def choose_preset(args):
    """paper when the user names all models and data, the hub answers, or the paper models are
    cached; otherwise mini, said in one line."""
    if args.policy and args.reward_model and args.dataset:
        return "paper"
    if hub_reachable() or paper_cached(["policy", "reward_model", "dataset"]):
        return "paper"
    print("abc_ppo.py: the Hugging Face hub is unreachable and the paper's models are not cached, so this run "
          "uses the offline 'mini' preset; for the paper's, run once with the hub or pass --preset paper.",
          file=sys.stderr)
    return "mini"


def hub_reachable():
    """One 3 s connection to the hub, skipped when HF_HUB_OFFLINE is set. If it fails, set
    HF_HUB_OFFLINE=1 (before huggingface_hub is imported), so that loading uses the cache
    without minutes of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        return True
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        return False


def paper_cached(keys):
    """Whether the paper preset's models and data named by keys ("policy", "reward_model",
    "dataset") are in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    paper = PRESETS["paper"]
    return all(isinstance(try_to_load_from_cache(paper[k], "README.md", repo_type="dataset") if k == "dataset"
                          else try_to_load_from_cache(paper[k], "config.json"), str) for k in keys)


def fail(msg):
    """Bad input ends the run with one line on stderr and exit code 2, never a traceback."""
    print(f"abc_ppo.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------------------------------
# 2. Data: review openings as prompts.
# ---------------------------------------------------------------------------------------
def load_texts(name, min_chars):
    """The 'text' column of a hub dataset's train split or of a local file, keeping texts > min_chars."""
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()

    ext = os.path.splitext(name)[1].lower()
    fmt = {".csv": "csv", ".json": "json", ".jsonl": "json"}.get(ext)
    try:
        ds = load_dataset(fmt, data_files=name, split="train") if fmt else load_dataset(name, split="train")
    except Exception as e:  # offline hub, missing file, bad format: all end the same way
        fail(f"cannot load dataset '{name}' ({first_line(e)}). Without the hub, pass a local "
             ".csv/.jsonl file with a 'text' column via --dataset.")
    if "text" not in ds.column_names:
        fail(f"dataset '{name}' has no 'text' column (columns: {ds.column_names})")
    texts = [t for t in ds["text"] if isinstance(t, str) and len(t) > min_chars]
    if not texts:
        fail(f"dataset '{name}' has no text longer than {min_chars} characters")
    return texts


def sample_prompts(texts, tok, n, lengths, gen):
    """n random review openings, each cut to its own length in tokens, left-padded for generation.
    Returns ids [B, P] and mask [B, P]."""
    idx = torch.randint(len(texts), (n,), generator=gen).tolist()
    # 500 characters hold far more than the few tokens a prompt keeps; no need to tokenise a whole review.
    ids = [tok(texts[i][:500])["input_ids"][:k] for i, k in zip(idx, lengths.tolist())]
    P = max(len(x) for x in ids)
    pad = tok.pad_token_id
    # Left padding keeps every prompt's last token at column P-1, where generation continues.
    input_ids = torch.tensor([[pad] * (P - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (P - len(x)) + [1] * len(x) for x in ids])
    return input_ids, mask


# ---------------------------------------------------------------------------------------
# 3. Models: policy, frozen reference, reward model, value head.
# ---------------------------------------------------------------------------------------
def load_models(args, device):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # keep the terminal for the training bar

    def load(what, fn, name, **kw):
        try:
            return fn(name, **kw)
        except Exception as e:
            fail(f"cannot load {what} '{name}' ({first_line(e)}). Without the hub, pass a local "
                 "directory saved with save_pretrained.")

    cfg = load("reward model", AutoConfig.from_pretrained, args.reward_model)
    if not any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or [])):
        fail(f"--reward_model '{args.reward_model}' is not a sequence classifier (architectures: {cfg.architectures})")
    tok = load("tokenizer", AutoTokenizer.from_pretrained, args.policy)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # GPT-2 has no pad token; pads are masked out anyway
    # Dropout stays off (eval mode) throughout: with it, the PPO ratio would differ from 1 on
    # the first update from noise alone, and old and new log-probs would not be comparable.
    # ABC-D reads the policy's own attention, which only eager attention returns.
    eager = dict(attn_implementation="eager") if args.reward == "abcd" or args.explain or args.faithfulness else {}
    # float32 weights whatever the checkpoint holds: a bfloat16 checkpoint would otherwise meet
    # the float32 value head and heads in `forward` (--bf16 is autocast, not bfloat16 weights).
    f32 = dict(dtype=torch.float32)
    policy = load("policy", AutoModelForCausalLM.from_pretrained, args.policy, **eager, **f32).to(device).eval()
    # Same attention kernel as the policy, so that at step 0 log p - log p_ref is exactly 0.
    ref = load("policy", AutoModelForCausalLM.from_pretrained, args.policy, **eager, **f32).to(device).eval()
    ref.requires_grad_(False)
    # Eager attention: SDPA in transformers 5 returns no attention weights, and ABC needs them.
    rm = load("reward model", AutoModelForSequenceClassification.from_pretrained, args.reward_model,
              attn_implementation="eager", **f32).to(device).eval()
    rm.requires_grad_(False)
    if rm.config.num_labels > 2:
        fail(f"--reward_model '{args.reward_model}' has {rm.config.num_labels} labels; 1 or 2 are supported")
    if args.reward == "red" and not is_decoder(rm):
        fail("--reward red needs a decoder reward model, which scores every prefix; this one is an encoder")
    rm_tok = load("tokenizer", AutoTokenizer.from_pretrained, args.reward_model)
    if rm_tok.pad_token_id is None:
        rm_tok.pad_token = rm_tok.eos_token
    if rm_tok.get_vocab() == tok.get_vocab() and is_decoder(rm):
        rm_tok = None  # shared tokenizer: the RM reads the policy's token ids directly (the fast path)

    # Value head: V(s_t) = w . h_t + b on the policy's last hidden state, with nn.Linear's
    # default initialisation, as TRL's value head has.
    value_head = torch.nn.Linear(policy.config.hidden_size, 1).to(device)
    return tok, policy, ref, rm, rm_tok, value_head


def check_context(args, policy, rm, rm_tok):
    """The longest prompt plus the longest completion, prompt_len MAX + gen_len MAX tokens, must
    fit the policy's and the RM's position embeddings; past them GPT-2 fails mid-run with an
    IndexError. An RM with its own tokenizer re-tokenises the text into a count we cannot know
    before sampling; we check the same count plus its special tokens."""
    need = args.prompt_len[1] + args.gen_len[1]
    rm_need = need if rm_tok is None else need + rm_tok.num_special_tokens_to_add()
    for what, model, n in (("policy", policy, need), ("reward model", rm, rm_need)):
        limit = getattr(model.config, "max_position_embeddings", None)  # GPT-2 maps it to n_positions
        if limit is not None and n > limit:
            fail(f"--prompt_len MAX {args.prompt_len[1]} + --gen_len MAX {args.gen_len[1]} needs {n} positions, "
                 f"but the {what} has {limit}; pass a smaller --gen_len or --prompt_len")


def is_decoder(rm):
    """Decoder classifiers (GPT-2, Llama, ...) put a `score` head on every position and read the
    last token; encoder classifiers (BERT, DistilBERT, ...) read position 0."""
    return getattr(rm, "score", None) is not None


def first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def positions(mask):
    """Position ids that ignore padding, so a left-padded row is read as if unpadded: [B, L]."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------------------
# 4. Rollout: sample completions in one batched generate call.
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def rollout(policy, tok, prompt_ids, prompt_mask, lengths):
    """Sample a completion for each prompt; row b stops at lengths[b] tokens or at its first EOS.
    Returns seq [B, P+G] (prompt + completion) and the completion mask [B, G]."""
    out = policy.generate(
        input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=int(lengths.max()),
        do_sample=True, top_k=0, top_p=1.0,  # sample from the full distribution, as in the paper
        # No min_new_tokens: suppressing EOS lets the policy push the KL estimate negative (TRL #1002).
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    P = prompt_ids.shape[1]
    comp = out[:, P:]  # cut at the prompt length, not [-gen_len:], which breaks if generation stops early
    G = comp.shape[1]
    t = torch.arange(G, device=comp.device)
    is_eos = comp == tok.eos_token_id
    # The EOS itself is a real action; everything after it is padding.
    first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(lengths, G))
    mask = (t[None] < lengths[:, None]) & (t[None] <= first_eos[:, None])  # [B, G]
    return out, mask.long()


# ---------------------------------------------------------------------------------------
# 5. Policy forward: log-probs, values and entropy of the completion tokens.
# ---------------------------------------------------------------------------------------
def forward(policy, value_head, seq, attn_mask, P, attention=False):
    """log pi(y_t | x, y_<t), V(x, y_<t) and the entropy of pi at each completion step.
    The vocabulary head runs only on the G positions that predict completion tokens.
    With attention=True (ABC-D) also the policy's last-layer attention, averaged over heads,
    between completion tokens: A[q, j] from token q to token j. Causal attention makes it equal
    to the attention the policy paid while generating.
    Returns logp [B, G], values [B, G], entropy [B, G], attention [B, G, G] or None."""
    out = policy.base_model(input_ids=seq, attention_mask=attn_mask, position_ids=positions(attn_mask),
                            output_attentions=attention)
    h = out.last_hidden_state[:, P - 1:-1]  # [B, G, H]: the state before completion token t sits at P-1+t
    # Both heads run in float32, also under --bf16, so old and new log-probs agree to float
    # precision and the PPO ratio starts at 1.
    with torch.autocast(h.device.type, enabled=False):
        h = h.float()
        logits = policy.get_output_embeddings()(h)  # [B, G, V]
        values = value_head(h).squeeze(-1) if value_head is not None else None  # [B, G]
    logprobs = F.log_softmax(logits, dim=-1)
    logp = logprobs.gather(-1, seq[:, P:, None]).squeeze(-1)
    with torch.no_grad():  # logged only
        entropy = -(logprobs.exp() * logprobs).sum(-1)
    att = out.attentions[-1][:, :, P:, P:].mean(1).float() if attention else None
    return logp, values, entropy, att


# ---------------------------------------------------------------------------------------
# 6. Scoring and rewards: one RM forward gives the score, ABC's attention and RED's prefix scores.
# ---------------------------------------------------------------------------------------
def last_index(attn_mask):
    """Index of each row's last real token, found from the mask, not from pad ids (GPT-2 pads
    with EOS): [B, L] -> [B]."""
    return (attn_mask * torch.arange(attn_mask.shape[1], device=attn_mask.device)).argmax(1)


def attention_row(attentions, i):
    """Row i[b] of the attention map [B, heads, L, L], averaged over heads: [B, L]."""
    return attentions[torch.arange(len(i), device=i.device), :, i].mean(1).float()


def logit_score(logits):
    """The paper's score: logit_1 - logit_0 for two labels, the single logit for one: [..., C] -> [...]."""
    logits = logits.float()
    return logits[..., 1] - logits[..., 0] if logits.shape[-1] == 2 else logits[..., 0]


@torch.no_grad()
def score(rm, seq, attn_mask):
    """Score each row at its last real token i and return that token's attention row.
        score = logit_1 - logit_0, read at i
        attention_j = mean over heads of the last layer's softmax(q_i . k_j / sqrt(d))
    Works under left or right padding and with an EOS inside the completion. The score head also
    runs at every position, which costs nothing and gives RED its prefix scores.
    Returns score [B], attention [B, L] and prefix scores [B, L]."""
    out = rm.base_model(input_ids=seq, attention_mask=attn_mask, position_ids=positions(attn_mask),
                        output_attentions=True)
    scores = logit_score(rm.score(out.last_hidden_state))  # [B, L]
    last = last_index(attn_mask)
    return scores[torch.arange(len(last)), last], attention_row(out.attentions[-1], last), scores


@torch.no_grad()
def score_retokenized(rm, rm_tok, tok, seq, prompt_mask, mask):
    """Score with a reward model whose tokenizer differs from the policy's:
      1. decode prompt and completion to text, noting each completion token's character span;
      2. re-tokenise with the RM's tokenizer and its offset mapping;
      3. read the score where the architecture reads it: last real token (decoder) or 0 (encoder);
      4. move RM token j's attention and RED credit onto the policy tokens t it overlaps
       (as float32 sums, not einsum, which autocast would round to bfloat16),
             W[j, t] = |span_j & span_t| / sum_t' |span_j & span_t'|,
         so RM tokens outside the completion (special tokens, the prompt) give none.
    RED credit c_j = s_j - s_{j-1} starts after the last RM token that ends inside the prompt,
    whose score is s_0, so sum_t r_t = score - s_0 exactly, as on the fast path.
    Returns score [B], attention [B, G] and prefix scores [B, G+1] (None for an encoder)."""
    B, P, G = seq.shape[0], prompt_mask.shape[1], mask.shape[1]
    texts, spans = [], torch.zeros(B, G, 2, dtype=torch.long)  # [B, G, (start, end)] in characters
    for b in range(B):
        prompt = seq[b, :P][prompt_mask[b].bool()].tolist()
        comp = seq[b, P:P + int(mask[b].sum())].tolist()
        # Decode growing prefixes of the whole text, so that spans and text agree for any tokenizer.
        ends = [len(tok.decode(prompt + comp[:k], skip_special_tokens=True)) for k in range(len(comp) + 1)]
        spans[b, :len(comp)] = torch.tensor(list(zip(ends[:-1], ends[1:]))).view(-1, 2)
        texts.append(tok.decode(prompt + comp, skip_special_tokens=True))
    enc = rm_tok(texts, return_offsets_mapping=True, padding=True, truncation=True, return_tensors="pt")
    off = enc.pop("offset_mapping")  # [B, J, 2]
    ids, am = enc["input_ids"].to(seq.device), enc["attention_mask"].to(seq.device)
    overlap = (torch.minimum(off[:, :, None, 1], spans[:, None, :, 1])
               - torch.maximum(off[:, :, None, 0], spans[:, None, :, 0])).clamp(min=0).float()  # [B, J, G]
    W = (overlap / overlap.sum(-1, keepdim=True).clamp(min=1)).to(seq.device)
    if not is_decoder(rm):
        out = rm(input_ids=ids, attention_mask=am, output_attentions=True)
        att = out.attentions[-1][:, :, 0].mean(1).float()  # [B, J] from position 0
        return logit_score(out.logits), (att[..., None] * W).sum(1), None
    s, att, scores = score(rm, ids, am)  # [B], [B, J], [B, J]
    # RM tokens after the prompt: from the first that touches the completion to the last real one.
    touches = W.sum(-1) > 0  # [B, J]
    j = torch.arange(ids.shape[1], device=ids.device)
    first = torch.minimum(torch.where(touches, j, ids.shape[1]).min(1).values, last_index(am) + 1)  # [B]
    region = (j >= first[:, None]) & (am > 0)
    # A region token that overlaps no policy token (an EOS the RM tokenizer appends, say) gives
    # its credit to the last completion token, so no credit is lost.
    last_t = F.one_hot(mask.sum(1) - 1, G).float()[:, None]  # [B, 1, G]
    W_red = torch.where(region[..., None] & ~touches[..., None], last_t, W) * region[..., None]
    s_prev = torch.cat([scores[:, :1], scores[:, :-1]], 1)
    credit = (((scores - s_prev) * region)[..., None] * W_red).sum(1)  # [B, G]
    s0 = scores.gather(1, (first - 1).clamp(min=0)[:, None])  # score at the last prompt-only token
    return s, (att[..., None] * W).sum(1), torch.cat([s0, s0 + credit.cumsum(1)], 1)


def score_completions(rm, rm_tok, tok, seq, prompt_mask, mask, score_eos):
    """Score, RM attention over the completion [B, G] and RED prefix scores [B, G+1], through
    the fast path when the tokenizers match and re-tokenising (which drops EOS) when they do not.
    With score_eos = 0 a final EOS stays the policy's action but the RM scores the text before it."""
    if rm_tok is not None:
        return score_retokenized(rm, rm_tok, tok, seq, prompt_mask, mask)
    P = prompt_mask.shape[1]
    rm_mask = mask if score_eos else mask * (seq[:, P:] != tok.eos_token_id)  # [B, G]
    s, attention, scores = score(rm, seq, torch.cat([prompt_mask, rm_mask], 1))
    prefix = scores[:, P - 1:]  # [B, G+1]
    # An EOS the RM does not read adds nothing to RED: its prefix score is the one before it.
    hidden = (mask - rm_mask).bool()
    prefix = torch.cat([prefix[:, :1], torch.where(hidden, prefix[:, :-1], prefix[:, 1:])], 1)
    return s, attention[:, P:] * rm_mask, prefix


def per_token_rewards(scheme, **signals):
    """Call the chosen scheme in reward.py with the signals it names (score, mask, attention, ...)."""
    fn = REWARDS[scheme]
    return fn(**{k: signals[k] for k in inspect.signature(fn).parameters})


# ---------------------------------------------------------------------------------------
# 7. Advantages: GAE over the completion tokens.
# ---------------------------------------------------------------------------------------
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


def whiten(x, mask):
    """(x - mean) / std over the real tokens of the batch."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


class AdaptiveKL:
    """Ziegler et al. (2019): kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon."""

    def __init__(self, init, target, horizon):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl, n):
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n / self.horizon


# ---------------------------------------------------------------------------------------
# 8. PPO loss: clipped policy objective plus clipped value loss.
# ---------------------------------------------------------------------------------------
def ppo_loss(logp, old_logp, values, old_values, adv, returns, mask, cliprange, cliprange_value, vf_coef):
    """With ratio_t = exp(log pi(y_t) - log pi_old(y_t)), averaged over real tokens:
        L_pi = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))
        L_V  = 0.5 * max((V_t - R_t)^2, (old_V_t + clip(V_t - old_V_t, -eps_v, eps_v) - R_t)^2)
        loss = L_pi + vf_coef * L_V
    All inputs [B, T]. Returns the loss and a dict of statistics."""
    ratio = torch.exp(logp - old_logp)
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cliprange, 1 + cliprange))
    v_clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    vf = 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2)
    pg_loss, vf_loss = masked_mean(pg, mask), masked_mean(vf, mask)
    with torch.no_grad():
        stats = dict(policy_loss=pg_loss.item(), value_loss=vf_loss.item(),
                     clip_frac=masked_mean(((ratio - 1).abs() > cliprange).float(), mask).item(),
                     approx_kl=masked_mean(0.5 * (logp - old_logp) ** 2, mask).item())
    return pg_loss + vf_coef * vf_loss, stats


# ---------------------------------------------------------------------------------------
# 9. Checkpoints: everything needed to continue the run exactly where it stopped.
# ---------------------------------------------------------------------------------------
def save_checkpoint(out_dir, step, policy, tok, value_head, opt, kl_ctl, gen):
    """Write to a temporary folder, then swap it in, so a crash never leaves half a checkpoint."""
    final, tmp = os.path.join(out_dir, "checkpoint"), os.path.join(out_dir, "checkpoint.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    torch.save(dict(step=step, value_head=value_head.state_dict(), opt=opt.state_dict(), kl_coef=kl_ctl.value,
                    gen=gen.get_state(), torch_rng=torch.get_rng_state(), py_rng=random.getstate(),
                    cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None),
               os.path.join(tmp, "trainer_state.pt"))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def load_checkpoint(out_dir, policy, value_head, opt, kl_ctl, gen, device):
    """Restore the state saved above; returns the next step to run."""
    from transformers import AutoModelForCausalLM

    path = os.path.join(out_dir, "checkpoint")
    try:
        # weights_only: a checkpoint is data, never code to run; tensors, numbers, tuples and
        # dicts are all it holds (random.getstate() is a tuple of ints).
        state = torch.load(os.path.join(path, "trainer_state.pt"), map_location="cpu", weights_only=True)
        policy.load_state_dict(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict())
    except Exception as e:
        fail(f"--resume: no usable checkpoint in {path} ({first_line(e)})")
    value_head.load_state_dict(state["value_head"])
    opt.load_state_dict(state["opt"])
    kl_ctl.value = state["kl_coef"]
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["py_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"] + 1


def drop_steps_from(path, start):
    """Keep only the JSON lines of steps before `start`. A hard kill can leave the last line
    half-written; it belongs to a step after the checkpoint (saved only once its lines are
    flushed), so it goes too."""
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for i, line in enumerate(lines):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            if i == len(lines) - 1:
                break
            fail(f"--resume: {path}, line {i + 1}, is not a JSON line with a step; remove it or the file")
        if step < start:
            keep.append(line if line.endswith("\n") else line + "\n")
    with open(path, "w") as f:
        f.writelines(keep)


# ---------------------------------------------------------------------------------------
# 10. Seeing the credit: --explain, samples.jsonl and credit.html.
# ---------------------------------------------------------------------------------------
def colour(text, value, top, enabled):
    """Text on a background from red (negative) through none to green (positive)."""
    if not enabled or top == 0:
        return text
    a = min(abs(value) / top, 1.0)
    r, g, b = (int(255 - 255 * a), 255, int(255 - 255 * a)) if value >= 0 else (255, int(255 - 255 * a), int(255 - 255 * a))
    return f"\x1b[48;2;{r};{g};{b}m\x1b[30m{text}\x1b[0m"


@torch.no_grad()
def explain(args, tok, policy, rm, rm_tok, device):
    """Print the reward each scheme gives each completion token of --explain TEXT, where the
    first --prompt_len tokens are the prompt. No KL term: this is the RM's credit alone."""
    ids = tok(args.explain)["input_ids"]
    k = args.prompt_len[0]
    if len(ids) <= k:
        fail(f"--explain text has {len(ids)} tokens; it needs more than the prompt's {k} (--prompt_len)")
    seq = torch.tensor([ids], device=device)
    prompt_mask, mask = torch.ones(1, k, dtype=torch.long, device=device), torch.ones(1, len(ids) - k, device=device)
    s, attention, prefix_scores = score_completions(rm, rm_tok, tok, seq, prompt_mask, mask.long(), args.score_eos)
    policy_attention = forward(policy, None, seq, torch.ones_like(seq), k, attention=True)[3]
    signals = dict(score=s, mask=mask, attention=attention, beta=args.beta, prefix_scores=prefix_scores,
                   policy_attention=policy_attention)
    names = [n for n in REWARDS if not (n == "red" and prefix_scores is None)]  # red needs a decoder RM
    cols = {n: per_token_rewards(n, **signals)[0].tolist() for n in names}
    heads = [f"{n} b={args.beta:g}" if "beta" in inspect.signature(REWARDS[n]).parameters else n for n in names]
    top = max(abs(v) for c in cols.values() for v in c)
    tty = sys.stdout.isatty() and "NO_COLOR" not in os.environ
    print(f"prompt {tok.decode(ids[:k])!r}   RM score {s.item():+.3f}"
          + (f"   red: s_0 = {prefix_scores[0, 0].item():+.3f}" if prefix_scores is not None else ""))
    print(f"{'token':16}" + "".join(f"{h:>12}" for h in heads))
    for t, tid in enumerate(ids[k:]):
        cells = [colour(f"{cols[n][t]:+12.3f}", cols[n][t], top, tty) for n in names]
        print(f"{repr(tok.decode([tid]))[:16]:16}" + "".join(cells))
    print(f"{'sum':16}" + "".join(f"{sum(cols[n]):+12.3f}" for n in names))


def write_samples(f, step, tok, seq, prompt_mask, mask, rm_score, credit, n):
    """Append n completions of this step with the credit the scheme gave each token."""
    P = prompt_mask.shape[1]
    for b in range(n):
        m = int(mask[b].sum())
        f.write(json.dumps(dict(step=step, score=round(rm_score[b].item(), 4),
                                prompt=tok.decode(seq[b, :P][prompt_mask[b].bool()]),
                                tokens=[tok.decode([t]) for t in seq[b, P:P + m].tolist()],
                                credit=[round(c, 4) for c in credit[b, :m].tolist()])) + "\n")
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


# ---------------------------------------------------------------------------------------
# 11. Training loop.
# ---------------------------------------------------------------------------------------
def bf16_autocast(device, enabled):
    """--bf16: bfloat16 autocast for the policy's passes; weights and Adam stay float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        fail("--device cuda, but no CUDA device is available")
    if args.bf16 and device.type != "cuda":
        fail("--bf16 needs a CUDA device; CPU runs stay float32")
    autocast = bf16_autocast(device, args.bf16)
    if args.preset == "mini":
        try:
            mini.ensure(args.mini_dir)  # built once (about a minute), then reused
        except (OSError, ValueError) as e:
            fail(f"cannot build the mini preset in {args.mini_dir}: {e}")
    if args.explain:
        tok, policy, _, rm, rm_tok, _ = load_models(args, device)
        return explain(args, tok, policy, rm, rm_tok, device)
    if args.faithfulness:
        tok, policy, _, rm, rm_tok, _ = load_models(args, device)
        return faithfulness_report(args, load_texts(args.dataset, args.min_chars), tok, policy, rm, rm_tok)

    # Fail on an unwritable output folder before spending minutes on loading.
    try:
        os.makedirs(args.out_dir, exist_ok=True)
        metrics_file = open(os.path.join(args.out_dir, "metrics.jsonl"), "a" if args.resume else "w")
        samples_file = open(os.path.join(args.out_dir, "samples.jsonl"), "a" if args.resume else "w") \
            if args.log_samples else None
    except OSError as e:
        fail(f"cannot write to --out_dir '{args.out_dir}': {e.strerror}")

    # Seeding: a CPU run with the same seed repeats exactly.
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)  # prompts and lengths, separate from sampling

    texts = load_texts(args.dataset, args.min_chars)
    tok, policy, ref, rm, rm_tok, value_head = load_models(args, device)
    check_context(args, policy, rm, rm_tok)
    # Fused Adam: one kernel over all parameters; for GPT-2 124M on a CPU its step is ~5x faster.
    opt = torch.optim.Adam(list(policy.parameters()) + list(value_head.parameters()), lr=args.lr, fused=True)
    kl_ctl = AdaptiveKL(args.init_kl_coef, args.target_kl, args.kl_horizon)
    start = 0
    if args.resume:
        start = load_checkpoint(args.out_dir, policy, value_head, opt, kl_ctl, gen, device)
        for f in (metrics_file, samples_file):
            if f:  # drop lines of steps after the checkpoint (a crash), so each step is logged once
                drop_steps_from(f.name, start)

    B, mb = args.batch_size, args.mini_batch_size
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc=args.reward)
    for step in bar:
        # --- Rollout: prompts -> sampled completions -------------------------------------
        t0 = time.perf_counter()
        prompt_len = torch.randint(args.prompt_len[0], args.prompt_len[1] + 1, (B,), generator=gen)
        gen_len = torch.randint(args.gen_len[0], args.gen_len[1] + 1, (B,), generator=gen)
        prompt_ids, prompt_mask = sample_prompts(texts, tok, B, prompt_len, gen)
        prompt_ids, prompt_mask, gen_len = prompt_ids.to(device), prompt_mask.to(device), gen_len.to(device)
        with autocast:
            seq, mask = rollout(policy, tok, prompt_ids, prompt_mask, gen_len)  # [B, P+G], [B, G]
        P = prompt_ids.shape[1]
        attn_mask = torch.cat([prompt_mask, mask], 1)  # [B, P+G]
        t1 = time.perf_counter()

        # --- Scoring: RM score and attention, old and reference log-probs ---------------
        with torch.no_grad():
            # One RM pass: score [B], its attention over the completion [B, G], prefix scores [B, G+1].
            # Outside autocast: the RM scores in float32, as the paper's authors did, so --bf16
            # rounds neither the score nor the attention that becomes the reward.
            rm_score, attention, prefix_scores = score_completions(rm, rm_tok, tok, seq, prompt_mask, mask,
                                                                  args.score_eos)
        with torch.no_grad(), autocast:
            old_logp, old_values, _, policy_attention = forward(policy, value_head, seq, attn_mask, P,
                                                                attention=args.reward == "abcd")  # [B, G]
            ref_logp = forward(ref, None, seq, attn_mask, P)[0]
        mask_f = mask.float()
        kl = (old_logp - ref_logp) * mask_f  # [B, G] per-token KL estimate
        kl_coef = kl_ctl.value
        credit = per_token_rewards(args.reward, score=rm_score, mask=mask_f, attention=attention, beta=args.beta,
                                   prefix_scores=prefix_scores, policy_attention=policy_attention)  # [B, G]
        rewards = credit - kl_coef * kl
        adv, returns = gae(rewards, old_values, mask_f, args.gamma, args.lam)
        adv = whiten(adv, mask_f)
        t2 = time.perf_counter()

        # --- Optimisation: ppo_epochs passes over shuffled mini-batches -----------------
        stats, entropies = [], []
        for _ in range(args.ppo_epochs):
            for idx in torch.randperm(B, generator=gen).split(mb):
                idx = idx.to(device)
                with autocast:
                    logp, values, entropy, _ = forward(policy, value_head, seq[idx], attn_mask[idx], P)
                    loss, s = ppo_loss(logp, old_logp[idx], values, old_values[idx], adv[idx], returns[idx],
                                       mask_f[idx], args.cliprange, args.cliprange_value, args.vf_coef)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                stats.append(s)
                entropies.append(masked_mean(entropy.detach(), mask_f[idx]).item())
        mean_kl = kl.sum(1).mean().item()
        kl_ctl.update(mean_kl, B)
        t3 = time.perf_counter()

        # --- Logging: one JSON line per step, flushed at once ---------------------------
        row = dict(step=step, reward_mean=rm_score.mean().item(), reward_std=rm_score.std().item() if B > 1 else 0.0,
                   kl=mean_kl, kl_coef=kl_coef,
                   **{k: sum(s[k] for s in stats) / len(stats) for k in stats[0]},
                   entropy=sum(entropies) / len(entropies), completion_len=mask_f.sum(1).mean().item(),
                   time_generate=t1 - t0, time_score=t2 - t1, time_optimize=t3 - t2)
        metrics_file.write(json.dumps(row) + "\n")
        metrics_file.flush()
        if samples_file:
            write_samples(samples_file, step, tok, seq, prompt_mask, mask, rm_score, credit, args.log_samples)
        bar.set_postfix(reward=f"{row['reward_mean']:.2f}", kl=f"{mean_kl:.2f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save_checkpoint(args.out_dir, step, policy, tok, value_head, opt, kl_ctl, gen)
    metrics_file.close()
    if samples_file:
        samples_file.close()
        write_credit_html(args.out_dir, args.reward)


if __name__ == "__main__":
    main()
