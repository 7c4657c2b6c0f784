"""Seconds per PPO step of TRL 0.11's classic PPOTrainer, for comparison with bench/bench_step.py.

Same work as bench_step.py's default: GPT-2 124M-sized policy and reward model with random
weights, batch 16, mini-batch 1, 4 PPO epochs, prompts of 2-8 tokens, completions of 8-16,
sparse reward (the RM score), CPU. TRL is not a dependency of this project; run this in a
separate environment:

    python -m venv /tmp/trlenv
    /tmp/trlenv/bin/pip install torch==2.13.0 trl==0.11.4 transformers==4.46.3 "accelerate<1.2" numpy datasets rich
    /tmp/trlenv/bin/python bench/bench_trl.py [--steps 3]
    /tmp/trlenv/bin/python bench/bench_trl.py --layers 2 --width 128 --mini_batch_size 16 --gen_len 16 16

The second line is the small model with the full vocabulary, where the vocabulary head dominates.
Not collected by pytest. Step 0 is dropped as warm-up.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel
from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from trl.core import LengthSampler

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plumbing import mini  # noqa: E402  (tokenizer and corpus only; plumbing/mini.py needs no TRL)

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=3)
p.add_argument("--layers", type=int, default=12)
p.add_argument("--width", type=int, default=768)
p.add_argument("--mini_batch_size", type=int, default=1)
p.add_argument("--gen_len", type=int, nargs=2, default=[8, 16], help="MIN MAX new tokens, both included")
a = p.parse_args()
torch.manual_seed(0)
texts, _ = mini.read_reviews(mini.CORPUS)
tok = mini.train_tokenizer(texts)
size = dict(n_layer=a.layers, n_embd=a.width, n_head=a.width // 64, n_positions=1024, vocab_size=50257,
            bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
root = tempfile.mkdtemp()
GPT2LMHeadModel(GPT2Config(**size)).save_pretrained(root)
policy = AutoModelForCausalLMWithValueHead.from_pretrained(root)
rm = GPT2ForSequenceClassification(GPT2Config(num_labels=2, **size)).eval()
config = PPOConfig(batch_size=16, mini_batch_size=a.mini_batch_size, ppo_epochs=4, learning_rate=1.41e-5, init_kl_coef=0.2,
                   adap_kl_ctrl=True, target=6, horizon=10000, gamma=1, lam=0.95, cliprange=0.2,
                   cliprange_value=0.2, vf_coef=0.1, seed=0, log_with=None)
trainer = PPOTrainer(config, policy, ref_model=None, tokenizer=tok)
prompt_len, gen_len = LengthSampler(2, 9), LengthSampler(a.gen_len[0], a.gen_len[1] + 1)
gen_kwargs = dict(top_k=0, top_p=1.0, do_sample=True, pad_token_id=tok.eos_token_id)
times = []
for step in range(a.steps):
    t0 = time.perf_counter()
    queries = [torch.tensor(tok(texts[i])["input_ids"][:prompt_len()]) for i in torch.randint(len(texts), (16,))]
    responses = trainer.generate(queries, return_prompt=False, length_sampler=gen_len, batch_size=16, **gen_kwargs)
    t1 = time.perf_counter()
    with torch.no_grad():  # score the same token ids, as abc_ppo.py does
        scores = [rm(torch.cat([q, r])[None]).logits[0] for q, r in zip(queries, responses)]
    scores = [s[1] - s[0] for s in scores]
    t2 = time.perf_counter()
    trainer.step(queries, responses, scores)
    t3 = time.perf_counter()
    times.append((t1 - t0, t2 - t1, t3 - t2))
    print(json.dumps(dict(step=step, generate=t1 - t0, score=t2 - t1, optimise=t3 - t2)), flush=True)
cols = [sum(c) / len(c) for c in zip(*times[1:])]
print(f"TRL 0.11 PPOTrainer, {a.layers} layers x {a.width}, mini-batch {a.mini_batch_size}, "
      f"threads {torch.get_num_threads()}: generate {cols[0]:.3f}  score {cols[1]:.3f}  "
      f"optimise {cols[2]:.3f}  total {sum(cols):.3f} s per PPO step")
