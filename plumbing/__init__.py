"""What abc_ppo.py and reward.py import, and a first reading may skip.

    plumbing/presets.py      where models and data come from (paper, mini, auto), the checks on the flags, loading
    plumbing/mini.py         the offline mini preset: its recipe, its build, and the fingerprint check at every load
    plumbing/checkpoints.py  config.json and the logs, save and --resume, and how a run stops without losing anything
    models.py       small readers of Hugging Face models: position ids, the last real token, the score
    attention.py    the attention-row kernel: a layer's attention rows without the attention map
    estimators.py   the batched RM passes behind Shapley credit
    plumbing/retokenize.py   an RM whose tokenizer differs from the policy's
    plumbing/speed.py        --bf16 autocast and the CPU speed settings
    plumbing/credit.py       seeing the credit: --explain, --faithfulness, samples.jsonl, credit.html
    runs.py         reading finished runs: metrics, configs, paired differences (tools/ and studies/ use it)

It never imports a script of the repository's root (abc_ppo.py, reward.py, walkthrough.py).
"""
