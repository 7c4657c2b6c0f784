"""Scoring with a reward model whose tokenizer differs from the policy's: the mapping between tokens.

The RM scores the policy's token ids directly when the two share a tokenizer (the paper's case).
Otherwise reward.score_completions goes through text:
  1. decode prompt and completion, noting each completion token's character span;
  2. re-tokenise with the RM's tokenizer and its offset mapping (`to_rm_tokens`);
  3. score those ids (reward.score: the last real token of a decoder, position 0 of an encoder);
  4. move RM token j's attention and RED credit onto the policy tokens t it overlaps
     (`to_policy_tokens`), in proportion to the characters they share,
         W[j, t] = |span_j & span_t| / sum_t' |span_j & span_t'|,
     so RM tokens outside the completion (special tokens, the prompt) give none.
"""
import torch
import torch.nn.functional as F


def to_rm_tokens(rm_tok, tok, seq, prompt_mask, mask):
    """Steps 1-2. Returns the RM's ids [B, J], its attention mask [B, J] and W [B, J, G]."""
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
    overlap = (torch.minimum(off[:, :, None, 1], spans[:, None, :, 1])
               - torch.maximum(off[:, :, None, 0], spans[:, None, :, 0])).clamp(min=0).float()  # [B, J, G]
    W = overlap / overlap.sum(-1, keepdim=True).clamp(min=1)
    return enc["input_ids"].to(seq.device), enc["attention_mask"].to(seq.device), W.to(seq.device)


def to_policy_tokens(attention, scores, am, W, mask):
    """Step 4: the RM's attention row [B, J] and prefix scores [B, J] (None for an encoder) on the
    policy's completion tokens: attention [B, G] and prefix scores [B, G+1] (as float32 sums, not
    einsum, which autocast would round to bfloat16). RED credit c_j = s_j - s_{j-1} starts after the
    last RM token that ends inside the prompt, whose score is s_0, so sum_t r_t = score - s_0 exactly,
    as on the fast path."""
    attention = (attention[..., None] * W).sum(1)
    if scores is None:
        return attention, None
    G, J = mask.shape[1], am.shape[1]
    j = torch.arange(J, device=am.device)
    last = (am * j).argmax(1)  # [B] each row's last real RM token, under either padding side
    # RM tokens after the prompt: from the first that touches the completion to the last real one.
    touches = W.sum(-1) > 0  # [B, J]
    first = torch.minimum(torch.where(touches, j, J).min(1).values, last + 1)  # [B]
    region = (j >= first[:, None]) & (am > 0)
    # A region token that overlaps no policy token (an EOS the RM tokenizer appends, say) gives
    # its credit to the last completion token, so no credit is lost.
    last_t = F.one_hot(mask.sum(1) - 1, G).float()[:, None]  # [B, 1, G]
    W_red = torch.where(region[..., None] & ~touches[..., None], last_t, W) * region[..., None]
    s_prev = torch.cat([scores[:, :1], scores[:, :-1]], 1)
    credit = (((scores - s_prev) * region)[..., None] * W_red).sum(1)  # [B, G]
    s0 = scores.gather(1, (first - 1).clamp(min=0)[:, None])  # score at the last prompt-only token
    return attention, torch.cat([s0, s0 + credit.cumsum(1)], 1)
