"""The project's reward schemes in verl 0.9's reward loop: a reward manager that writes each
response's per-token credit into `rm_scores`, so that verl's KL penalty and GAE see a dense reward.
How to configure verl for it, and what was run: docs/verl.md.

verl's colocated reward path (verl/experimental/reward_loop/reward_loop.py), once per batch:
    out_b     = manager.run_single(data[b:b+1])                  # each sample, in a RewardLoopWorker
    rm_scores = Manager.assemble_rm_scores(data, [out_b["reward_score"], ...])     # [B, R]
    token_level_rewards = rm_scores - kl_coef * (log pi_old - log pi_ref)          # use_kl_in_reward
verl's own managers return one number and put it on the last response token. Here run_single
returns the scheme's credit r_1..r_n over the sample's n response tokens (reward.py), and
assemble_rm_scores lays each row out from the first response token:
    rm_scores[b, t] = r_t for t < n_b,  0 on padding,   sum_t rm_scores[b, t] = s_b   (red: s_b - s_0).
"""
import asyncio
import os
import sys
from types import SimpleNamespace

try:
    from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase
except ImportError as e:
    raise ImportError(f"tools/verl_reward.py needs verl 0.9.1 ({e}): python -m venv --system-site-packages .venv-verl "
                      "&& .venv-verl/bin/pip install -r requirements-verl.txt") from None

# verl loads this file by its path, not as a package module, so reward.py is not importable yet.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository's root
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from verl.utils import hf_tokenizer  # noqa: E402
from verl.utils.fs import copy_to_local  # noqa: E402

import reward  # noqa: E402
from plumbing.attention import KERNEL  # noqa: E402
from plumbing.models import is_decoder  # noqa: E402

# abcd needs the policy's attention, which the reward loop never sees
SCHEMES = tuple(n for n in reward.SCHEMES if n not in reward.READS_POLICY_ATTENTION)


class ABCRewardManager(RewardManagerBase):
    """Scores each response with the Hugging Face sequence classifier at reward.reward_model.model_path
    and returns the credit of reward.reward_kwargs.scheme (sparse, uniform, abc, red, shapley or ig; beta
    for abc, shapley and ig; score_eos: 1 lets the RM read a final EOS; shapley_units, shapley_perms and seed
    for shapley; ig_steps for ig, as abc_ppo.py's flags). verl builds one manager per RewardLoopWorker, so the
    RM is loaded once per worker."""

    def __init__(self, config, tokenizer, compute_score, reward_router_address=None, reward_model_tokenizer=None):
        super().__init__(config, tokenizer, compute_score)  # tokenizer: the policy's
        rm_cfg, kw = config.reward.reward_model, config.reward.get("reward_kwargs", {})
        # Only the colocated path calls assemble_rm_scores. With the RM disabled, or in a resource pool
        # of its own, verl streams rewards from the agent loop, which puts one number on the last token;
        # without a custom reward function, RewardLoopWorker.compute_score skips run_single.
        if not rm_cfg.enable or rm_cfg.enable_resource_pool or not config.reward.custom_reward_function.path:
            raise ValueError("ABCRewardManager needs reward.reward_model.enable=True, "
                             "reward.reward_model.enable_resource_pool=False and reward.custom_reward_function.path "
                             "set (see docs/verl.md)")
        # The flags reward.per_token_rewards reads, named as abc_ppo.py's are. score_eos 0: as verl's own RM
        # path, which strips the EOS from the text.
        self.flags = SimpleNamespace(reward=kw.get("scheme", "abc"), beta=float(kw.get("beta", 0.5)),
                                     score_eos=int(kw.get("score_eos", 0)),
                                     shapley_units=int(kw.get("shapley_units", 16)),
                                     shapley_perms=int(kw.get("shapley_perms", 8)),
                                     ig_steps=int(kw.get("ig_steps", 16)))
        if self.flags.reward not in SCHEMES:
            raise ValueError(f"reward_kwargs.scheme must be one of {', '.join(SCHEMES)}, got {self.flags.reward!r}")
        from transformers import AutoModelForSequenceClassification

        device = kw.get("device", "auto")
        # A RewardLoopWorker is a Ray actor with no GPU of its own, so "auto" is the CPU there.
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        # float32, as abc_ppo.py scores; the kernel that reads the attention row without the full map.
        self.rm = AutoModelForSequenceClassification.from_pretrained(
            copy_to_local(rm_cfg.model_path), dtype=torch.float32, attn_implementation=KERNEL
        ).to(self.device).eval().requires_grad_(False)
        if self.flags.reward == "red" and not is_decoder(self.rm):
            raise ValueError("scheme red needs a decoder reward model, which scores every prefix; "
                             "this one is an encoder")
        # verl hands over the RM's tokenizer, loaded from the same path. Shared with the policy: the RM
        # reads the policy's ids (rm_tok None); otherwise score_completions goes through text (plumbing/retokenize.py).
        self.rm_tok = reward_model_tokenizer or hf_tokenizer(copy_to_local(rm_cfg.model_path))
        if self.rm_tok.get_vocab() == tokenizer.get_vocab() and is_decoder(self.rm):
            self.rm_tok = None
        if self.flags.reward in ("shapley", "ig") and self.rm_tok is not None:
            raise ValueError(f"scheme {self.flags.reward} needs a decoder reward model that shares the policy's "
                             "tokenizer: it deletes or scales the policy's tokens in the RM's input")
        self.gen = torch.Generator().manual_seed(int(kw.get("seed", 0)))  # shapley's orders, one stream per worker

    @torch.no_grad()
    def credit(self, prompt, response):
        """One RM pass over prompt + response (1-D policy token ids, no padding): the scheme's credit
        over the response tokens [n] and the RM's score s."""
        seq = torch.cat([prompt, response])[None].to(self.device)  # [1, P + n]
        prompt_mask = torch.ones(1, len(prompt), dtype=torch.long, device=self.device)  # [1, P]
        mask = torch.ones(1, len(response), dtype=torch.long, device=self.device)  # [1, n]
        models = SimpleNamespace(tok=self.tokenizer, rm=self.rm, rm_tok=self.rm_tok)
        s, r, _ = reward.per_token_rewards(self.flags, models, seq, prompt_mask, mask, None, self.gen)  # [1], [1, n]
        return r[0].cpu(), float(s[0])

    async def run_single(self, data):
        """One sample, data[b:b+1] (verl's DataProto): its credit as a list of n floats, one per valid
        response token, and the RM's score for verl's logs."""
        item = data[-1]  # the last output of a multi-output agent loop, as verl's naive manager takes
        P = item.batch["prompts"].shape[-1]
        mask = item.batch["attention_mask"]  # [P + R]: prompts left-padded (or right-padded by verl's v1 trainer)
        prompt = item.batch["prompts"][mask[:P].bool()]  # [P'] the prompt's tokens, under either padding
        response = item.batch["responses"][: int(mask[P:].sum())]  # [n] right-padded: the first n are real
        # The RM's forward off the event loop, as verl's own naive manager runs its scoring, so that a
        # worker's other samples are not held up behind it.
        r, s = await asyncio.get_running_loop().run_in_executor(None, self.credit, prompt, response)
        return {"reward_score": r.tolist(), "reward_extra_info": {"rm_score": s}}

    @classmethod
    def assemble_rm_scores(cls, data, scores):
        """The samples' credit rows onto rm_scores [B, R], from the first response token on. The
        valid length n_b is counted as verl's base class counts it, which puts a scalar at n_b - 1."""
        P = data.batch["prompts"].size(1)
        n = data.batch["attention_mask"][:, P:].sum(1).tolist()  # [B]
        rm_scores = torch.zeros_like(data.batch["responses"], dtype=torch.float32)  # [B, R]
        for b, r in enumerate(scores):
            if len(r) != n[b]:
                raise ValueError(f"sample {b}: {len(r)} credits for {n[b]} response tokens")
            rm_scores[b, : n[b]] = torch.tensor(r, dtype=torch.float32)
        return rm_scores


def compute_score(**kwargs):
    """Never called: verl hands a sample to the manager's run_single only when a custom reward function
    is set (RewardLoopWorker.compute_score), so reward.custom_reward_function.path names this file."""
    raise NotImplementedError("ABCRewardManager scores with the reward model; nothing calls compute_score")
