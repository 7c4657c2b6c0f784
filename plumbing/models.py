"""Small readers of Hugging Face models, shared by reward.py, abc_ppo.py, the estimators and the credit views."""
import torch


def positions(mask):
    """Position ids that ignore padding, so a left-padded row is read as if unpadded: [B, L]."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def is_decoder(rm):
    """Decoder classifiers (GPT-2, Llama, ...) put a `score` head on every position and read the
    last token; encoder classifiers (BERT, DistilBERT, ...) read position 0."""
    return getattr(rm, "score", None) is not None


def last_index(attn_mask):
    """Index of each row's last real token, found from the mask, not from pad ids (GPT-2 pads
    with EOS): [B, L] -> [B]."""
    return (attn_mask * torch.arange(attn_mask.shape[1], device=attn_mask.device)).argmax(1)


def logit_score(logits):
    """The paper's score: logit_1 - logit_0 for two labels, the single logit for one: [..., C] -> [...]."""
    logits = logits.float()
    return logits[..., 1] - logits[..., 0] if logits.shape[-1] == 2 else logits[..., 0]
