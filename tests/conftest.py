"""Tiny models and data built once per test session and saved with save_pretrained, so the tests
load them through the same from_pretrained code as hub names. No network is touched."""
import json
import os
import random
import sys
from types import SimpleNamespace

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["HF_HUB_OFFLINE"] = "1"  # any hub access fails at once instead of retrying
os.environ["HF_DATASETS_OFFLINE"] = "1"

from plumbing import mini  # noqa: E402
import plumbing.attention  # noqa: E402

WORDS = "the a film movie plot actor music scene story was is and very quite long short slow bad dull".split()
GOOD = "good"  # the token the test reward model prefers
TINY = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64)


def synthetic_texts(n, seed=0):
    """Random word strings; label 1 iff the word 'good' occurs (about a third of them)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 12))]
        if rng.random() < 0.35:
            words[rng.randrange(2, len(words))] = GOOD
        texts.append(" ".join(words))
        labels.append(int(GOOD in words))
    return texts, labels


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """A tiny policy, and a reward model that scores texts by whether they contain ' good'."""
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    texts, labels = synthetic_texts(800)
    tok = mini.train_tokenizer(texts, vocab_size=512)  # enough merges for every word to be one token
    # n_reviews=(1, 1): the test world is single texts, not mini's paragraphs.
    lm = mini.pretrain_lm(GPT2LMHeadModel(mini.gpt2_config(tok, **TINY)), tok, texts, steps=150, lr=3e-3, n_reviews=(1, 1))
    rm = GPT2ForSequenceClassification(mini.gpt2_config(tok, num_labels=2, **TINY))
    rm = mini.train_rm(rm, tok, texts, labels, steps=150, lr=3e-3, n_reviews=(1, 1))
    paths = dict(policy=root / "policy", reward_model=root / "reward_model", data=root / "prompts.jsonl")
    for name, model in (("policy", lm), ("reward_model", rm)):
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])
    with open(paths["data"], "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts[:200])
    return {k: str(v) for k, v in paths.items()} | dict(accuracy=mini.accuracy(rm, tok, texts[-200:], labels[-200:]))


@pytest.fixture(scope="session")
def policy_tok(tiny):
    """The tiny policy's tokenizer; the tiny reward model shares it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny["policy"])


@pytest.fixture(scope="session")
def tiny_rm(tiny):
    """The tiny reward model in eval mode, with eager attention so that it returns attention weights."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny["reward_model"], attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory):
    """A tiny DistilBERT classifier with a word-level tokenizer that wraps text in [CLS] ... [SEP]:
    a reward model whose tokenizer and architecture differ from the policy's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS, "good"]))}
    wl = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wl.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=wl, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]")
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=len(vocab), dim=32, n_layers=2, n_heads=2,
                                                                 hidden_dim=64, max_position_embeddings=64))
    path = tmp_path_factory.mktemp("encoder")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


class BagOfWords(torch.nn.Module):
    """A reward model whose score at position i is f(sum_{j <= i} w[token j]), f the identity unless
    given, with uniform causal attention (one layer, through plumbing.attention.KERNEL, as a Hugging Face model's
    layers call it). With f the identity, deleting completion token t moves the final score by exactly
    w[y_t], and that is also y_t's Shapley value and its integrated gradient (its input embedding is [w])."""
    config = SimpleNamespace(_attn_implementation=plumbing.attention.KERNEL, num_hidden_layers=1)

    def __init__(self, w, f=None):
        super().__init__()
        self.w = torch.nn.Parameter(w, requires_grad=False)
        self.f = f or (lambda x: x)
        self.score = torch.nn.Identity()

    def get_input_embeddings(self):
        return lambda ids: self.w[ids][..., None]  # [B, L, 1]

    def base_model(self, attention_mask, position_ids, input_ids=None, inputs_embeds=None):
        x = self.w[input_ids] if inputs_embeds is None else inputs_embeds[..., 0]  # [B, L]
        h = self.f((x * attention_mask).cumsum(1))[..., None]  # [B, L, 1]
        B, L = attention_mask.shape
        zeros = torch.zeros(B, 1, L, 1)  # query = key = 0: uniform weights over the keys a query sees
        seen = torch.tril(torch.ones(L, L, dtype=torch.bool)) & attention_mask.bool()[:, None, None, :]  # [B, 1, L, L]
        plumbing.attention.sdpa_rows(self, zeros, zeros, zeros, seen)
        return SimpleNamespace(last_hidden_state=h)


SMALL = dict(n_layer=2, n_embd=64, n_head=2, n_positions=128)


@pytest.fixture(scope="session")
def mini_dir(tmp_path_factory):
    """The mini preset built from the whole corpus, smaller and shorter-trained than the default."""
    out = str(tmp_path_factory.mktemp("cache") / "mini")
    mini.build(mini.CORPUS, out, lm_steps=150, rm_steps=400, size=SMALL, gold={})  # no gold: evaluation reads the proxy
    return out


def tiny_args(tiny, out_dir, *extra):
    """Command-line flags for a short, fast run on the tiny models, evaluation off unless extra turns it on
    (tests/test_eval.py)."""
    return ["--policy", tiny["policy"], "--reward_model", tiny["reward_model"], "--dataset", tiny["data"],
            "--min_chars", "0", "--prompt_len", "2", "4", "--out_dir", str(out_dir), "--batch_size", "8",
            "--mini_batch_size", "4", "--ppo_epochs", "2", "--lr", "1e-3", "--eval_every", "0", *extra]


def pad(rows, pad_id, side="left"):
    """Token-id lists padded on one side to the longest: ids [B, L] and mask [B, L], 1 on real tokens."""
    assert side in ("left", "right")
    L = max(map(len, rows))
    fill = lambda row, x: [x] * (L - len(row)) + row if side == "left" else row + [x] * (L - len(row))
    return torch.tensor([fill(r, pad_id) for r in rows]), torch.tensor([fill([1] * len(r), 0) for r in rows])


def read_jsonl(path):
    """The records of a JSON-lines file, one per line."""
    with open(path) as f:
        return [json.loads(line) for line in f]


def read_metrics(out_dir):
    """The metrics.jsonl rows that a run wrote to out_dir, one per step."""
    return read_jsonl(os.path.join(out_dir, "metrics.jsonl"))


def load_script(path):
    """A script of tools/ or studies/ (not a package module) imported from its path, e.g. "tools/report.py"."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
