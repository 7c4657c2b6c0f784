"""Scoring with a reward model whose tokenizer differs from the policy's.

abc_ppo.py scores the policy's token ids directly when the two share a tokenizer (the paper's
case). Otherwise the completion goes through text: decode, re-tokenise for the RM, score, and
move the RM's per-token signals (attention, RED's prefix scores) back onto the policy's tokens.
"""
import torch
import torch.nn.functional as F


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
    from abc_ppo import is_decoder, last_index, logit_score, score  # abc_ppo imports this module

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
