"""Where a run's models and data come from, and the checks on its flags.

abc_ppo.py's argument defaults are the paper's (GPT-2 on IMDb from the Hugging Face hub).
The offline `mini` preset, built by plumbing/mini.py, swaps some of them for MINI's. `--preset auto`
picks the paper's when the hub answers or its models are cached, and mini otherwise.
Bad input ends the run here with one line and exit code 2, never a traceback.
"""
import os
import socket
import sys

import torch

# A small GPT-2 policy and RM built offline by plumbing/mini.py; prompts are held-out reviews. The tiny
# model learns at a larger learning rate than GPT-2 124M. mini's RM is trained on review + EOS,
# so it reads a completion's final EOS (score_eos 1); the paper's RM scored the text before it.
MINI = dict(policy="{mini_dir}/policy", reward_model="{mini_dir}/reward_model", dataset="{mini_dir}/prompts.jsonl",
            min_chars=0, prompt_len=[2, 5], steps=80, lr=1e-4, score_eos=1, gold_rm="{mini_dir}/gold_rm")
EPILOG = "[preset]: --preset mini sets " + ", ".join(
    f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}".replace("{mini_dir}", "MINI_DIR")
    for k, v in MINI.items())
HUB = ("policy", "reward_model", "dataset")  # the flags that name what the hub supplies


def fail(msg):
    """Bad input ends the run with one line on stderr and exit code 2."""
    print(f"abc_ppo.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def first_line(e):
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def resolve(parser, argv):
    """Parse argv, then fill the preset's values into the flags the user did not give."""
    parser.error = fail  # one clear line instead of usage text
    args = parser.parse_args(argv)
    check(args)  # a bad flag fails before a preset is chosen
    given = flags_given(parser, argv, MINI)
    forced_paper = args.preset == "paper"
    if args.preset == "auto":
        args.preset = choose_preset(parser, given)
    if args.preset == "mini":
        for k, v in MINI.items():
            if k not in given:
                setattr(args, k, v.format(mini_dir=args.mini_dir) if isinstance(v, str) else v)
        if "gold_rm" not in given and not os.path.isdir(args.gold_rm):
            args.gold_rm = None  # a build from before the gold, e.g. a study's: evaluation without one
    if forced_paper:
        # Without this check an unreachable hub costs about 48 s of retries before the error.
        used = [k for k in HUB if getattr(args, k) == parser.get_default(k)]
        if used and not hub_reachable() and not paper_cached(parser, used):
            fail(f"--preset paper: the Hugging Face hub is unreachable and not all of "
                 f"{', '.join(parser.get_default(k) for k in used)} are in the local cache; run once with the hub, "
                 "pass local --policy, --reward_model and --dataset, or use --preset mini")
    return args


def flags_given(parser, argv, keys):
    """Which of these flags argv sets: parse it again with their defaults at None."""
    defaults = {k: parser.get_default(k) for k in keys}
    parser.set_defaults(**dict.fromkeys(keys))
    named = vars(parser.parse_args(argv))
    parser.set_defaults(**defaults)
    return {k for k in keys if named[k] is not None}


def check(args):
    """Flag values that cannot work, caught before anything is loaded."""
    # Written as "not (in range)" so that nan fails too.
    for name in ("beta", "gamma", "lam"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            fail(f"--{name} must be in [0, 1], got {getattr(args, name)}")
    for name in ("lr", "cliprange", "cliprange_value"):
        if not getattr(args, name) > 0:
            fail(f"--{name} must be positive, got {getattr(args, name)}")
    for name in ("init_kl_coef", "vf_coef", "kl_coef"):  # 0 turns the KL penalty or the value loss off
        if getattr(args, name) is not None and not getattr(args, name) >= 0:
            fail(f"--{name} must be >= 0, got {getattr(args, name)}")
    if len(args.prompt_len) == 1:
        args.prompt_len = args.prompt_len * 2  # one value: a fixed prompt length
    for name, pair in (("--prompt_len", args.prompt_len), ("--gen_len", args.gen_len)):
        if len(pair) != 2 or not 1 <= pair[0] <= pair[1]:
            fail(f"{name} takes MIN [MAX] with 1 <= MIN <= MAX, got {' '.join(map(str, pair))}")
    if min(args.steps, args.batch_size, args.mini_batch_size, args.ppo_epochs, args.save_every, args.shapley_units,
           args.shapley_perms, args.ig_steps) < 1 or min(args.target_kl, args.kl_horizon) <= 0:
        fail("--steps, --batch_size, --mini_batch_size, --ppo_epochs, --save_every, --shapley_units, --shapley_perms, "
             "--ig_steps, --target_kl and --kl_horizon must be positive")
    if args.batch_size % args.mini_batch_size:
        fail(f"--batch_size {args.batch_size} must be a multiple of --mini_batch_size {args.mini_batch_size}")
    if not 0 <= args.log_samples <= args.batch_size:
        fail(f"--log_samples must be in [0, --batch_size {args.batch_size}], got {args.log_samples}")
    if args.eval_every < 0 or args.eval_prompts < 1 or args.eval_samples < 1:
        fail(f"--eval_every must be >= 0 (0: off), --eval_prompts and --eval_samples >= 1; got {args.eval_every}, "
             f"{args.eval_prompts}, {args.eval_samples}")
    if args.faithfulness is not None and args.faithfulness < 1:
        fail(f"--faithfulness takes a number of texts >= 1, got {args.faithfulness}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda, but no CUDA device is available")
    if args.bf16 and args.device != "cuda":
        fail("--bf16 needs a CUDA device; CPU runs stay float32")
    if args.min_new_tokens:
        print("abc_ppo.py: warning: --min_new_tokens forbids EOS, but the KL estimate reads the unmasked policy, "
              "so the policy can drive the KL negative and be paid for it (TRL #1002)", file=sys.stderr)


def choose_preset(parser, given):
    """paper when the user names all models and data, the hub answers, or the paper models are
    cached; otherwise mini, said in one line."""
    if set(HUB) <= given or hub_reachable() or paper_cached(parser, HUB):
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


def paper_cached(parser, keys):
    """Whether the paper's models and data named by keys (from HUB) are in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    def cached(k):
        name = parser.get_default(k)
        return (try_to_load_from_cache(name, "README.md", repo_type="dataset") if k == "dataset"
                else try_to_load_from_cache(name, "config.json"))

    return all(isinstance(cached(k), str) for k in keys)


def load(what, cls, name, **kw):
    """cls.from_pretrained(name, **kw), with one line instead of a traceback when it fails."""
    try:
        return cls.from_pretrained(name, **kw)
    except Exception as e:
        fail(f"cannot load {what} '{name}' ({first_line(e)}). Without the hub, pass a local "
             "directory saved with save_pretrained.")


def load_tokenizer(name):
    from transformers import AutoTokenizer

    tok = load("tokenizer", AutoTokenizer, name)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token  # GPT-2 has no pad token; pads are masked out anyway
    return tok


def gold_members(name):
    """A gold RM is one sequence classifier, or a folder with one in each subfolder: an ensemble, whose
    score is the mean of theirs (mini's gold, docs/mini.md). Their paths, or [name]."""
    if os.path.isdir(name) and not os.path.exists(os.path.join(name, "config.json")):
        members = [os.path.join(name, d) for d in sorted(os.listdir(name))]
        members = [m for m in members if os.path.exists(os.path.join(m, "config.json"))]
        if members:
            return members
    return [name]


def gold_tokenizer(members):
    """The tokenizer the gold's members share, or one line and exit 2."""
    tok = load_tokenizer(members[0])
    if any(load_tokenizer(member).get_vocab() != tok.get_vocab() for member in members[1:]):
        fail(f"--gold_rm {os.path.dirname(members[0])}: its members do not share one tokenizer")
    return tok


def check_architectures(policy, reward_model):
    """From the configs alone, before minutes of loading: the policy must be a causal LM and the
    reward model a sequence classifier. Otherwise from_pretrained loads either silently, with
    freshly initialised heads. A config that names no architectures is given the benefit of the doubt."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = load("policy", AutoConfig, policy)
    if cfg.architectures and not set(cfg.architectures) & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        fail(f"--policy '{policy}' is not a causal language model (architectures: {cfg.architectures})")
    cfg = load("reward model", AutoConfig, reward_model)
    if cfg.architectures and not any(a.endswith("ForSequenceClassification") for a in cfg.architectures):
        fail(f"--reward_model '{reward_model}' is not a sequence classifier (architectures: {cfg.architectures})")


def load_texts(name, min_chars):
    """The 'text' column of a hub dataset's train split or of a local file, keeping texts > min_chars."""
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()
    fmt = {".csv": "csv", ".json": "json", ".jsonl": "json"}.get(os.path.splitext(name)[1].lower())
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


@torch.no_grad()
def check_logits(name, policy):
    """abc_ppo.forward computes pi as the output embedding of the body's last hidden state. A model whose
    own forward transforms its logits after that (Gemma-2's final soft-capping, Cohere's logit_scale)
    would be trained as another pi than it samples: refuse it, tried on four tokens."""
    ids = torch.arange(4, device=policy.device)[None] % policy.config.vocab_size
    mask = torch.ones_like(ids)  # token 0 is often the pad token: say that it is not padding here
    own = policy(input_ids=ids, attention_mask=mask).logits.float()
    ours = policy.get_output_embeddings()(policy.base_model(input_ids=ids, attention_mask=mask).last_hidden_state).float()
    if not torch.allclose(own, ours, rtol=1e-4, atol=1e-4):
        fail(f"--policy '{name}' transforms its logits after the output embedding (e.g. soft-capping or a logit "
             f"scale), which abc_ppo.forward does not reproduce: it would train another distribution than it samples")


def check_models(args, policy, rm, rm_tok):
    """The RM gives one score (one logit, or two: logit_1 - logit_0). The longest prompt plus the
    longest completion, prompt_len MAX + gen_len MAX tokens, must fit the policy's and the RM's
    position embeddings; past them GPT-2 fails mid-run with an IndexError. An RM with its own
    tokenizer re-tokenises the text into a count we cannot know before sampling; we check the
    same count plus its special tokens. --faithfulness reads the same lengths; --explain does not.
    Also what three schemes need: red an RM that scores every prefix (a decoder), shapley and ig one
    that reads the policy's tokens (rm_tok None), since they delete or scale them in the RM's input."""
    from plumbing.models import is_decoder

    if args.reward == "red" and not is_decoder(rm):
        fail("--reward red needs a decoder reward model, which scores every prefix; this one is an encoder")
    if args.reward == "shapley" and rm_tok is not None:
        fail("--reward shapley needs a decoder reward model that shares the policy's tokenizer: it deletes "
             "the policy's tokens from the RM's input")
    if args.reward == "ig" and rm_tok is not None:
        fail("--reward ig needs a decoder reward model that shares the policy's tokenizer: it scales the input "
             "embeddings of the policy's tokens")
    if rm.config.num_labels > 2:
        fail(f"--reward_model '{args.reward_model}' has {rm.config.num_labels} labels; 1 or 2 are supported")
    check_logits(args.policy, policy)
    if args.score_eos and rm_tok is not None:
        print("abc_ppo.py: warning: --score_eos 1 has no effect: this reward model has a tokenizer of its own, and "
              "the text it is given has no EOS (plumbing/retokenize.py)", file=sys.stderr)
    if args.explain:
        return  # --explain scores its own text, of its own length
    need = args.prompt_len[1] + args.gen_len[1]
    rm_need = need if rm_tok is None else need + rm_tok.num_special_tokens_to_add()
    for what, model, n in (("policy", policy, need), ("reward model", rm, rm_need)):
        limit = getattr(model.config, "max_position_embeddings", None)  # GPT-2 maps it to n_positions
        if limit is not None and n > limit:
            fail(f"--prompt_len MAX {args.prompt_len[1]} + --gen_len MAX {args.gen_len[1]} needs {n} positions, "
                 f"but the {what} has {limit}; pass a smaller --gen_len or --prompt_len")
