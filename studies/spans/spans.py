# Faithfulness by spans at 140-160 tokens, on the committed mini (docs/mini.md): shapley's 16 units against
# span occlusion (delete the whole span), with abc's attention, red and sparse summed over the same spans.
#   python studies/spans/spans.py > studies/spans/spans.md
import os, random, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch
from transformers import AutoModelForSequenceClassification
from plumbing import credit, mini, presets
from plumbing.estimators import kept_scores, units, shapley_values
from plumbing.models import last_index
torch.set_num_threads(1)
d = mini.REFERENCE
tok = presets.load_tokenizer(f"{d}/policy")
rm = AutoModelForSequenceClassification.from_pretrained(f"{d}/reward_model", attn_implementation="eager").eval()
texts, labels = mini.read_reviews(mini.CORPUS)
test = [(t, l) for t, l, h in zip(texts, labels, mini.heldout(texts)) if h]
rng = random.Random(0)
long_test = [mini.paragraphs(*zip(*test), rng, (12, 14), 1)[0] for _ in range(200)][:100]
long_test = [t for t, _ in long_test]
k, M = 3, 16
t0 = time.time()
with torch.no_grad():
    ids, mask = credit.encode(tok, long_test, k, 160)
    comp = mask[:, k:]
    scores, att = credit.rm_pass(rm, ids, mask)
    s = scores[torch.arange(len(ids)), last_index(mask)]
    phi, _, _ = shapley_values(rm, ids, mask[:, :k], comp, s, max_units=M, generator=torch.Generator().manual_seed(0))
    tok_credit = {"sparse": torch.nn.functional.one_hot(comp.sum(1) - 1, comp.shape[1]).float(),
                  "abc, layer 0 (last)": att[-1][:, k:] * comp, "red": ((scores[:, k:] - scores[:, k - 1:-1]) * comp).abs(),
                  "shapley": phi}
    B, G = comp.shape
    U = torch.zeros(B, G, dtype=torch.long)  # span index of each completion token
    for b in range(B):
        n = int(comp[b].sum()); U[b, :n] = units(n, M)
    onehot = torch.nn.functional.one_hot(U, M).float() * comp[..., None]  # [B, G, M]
    keep = mask[None].repeat(M, 1, 1)  # [M, B, L]: span j deleted
    for j in range(M):
        keep[j, :, k:] *= (U != j).long()
    s_var = kept_scores(rm, ids.repeat(M, 1), keep.view(M * B, -1)).view(M, B)
    e = (s[None] - s_var).T.abs()  # [B, M]
    span_mask = torch.ones(B, M)
    truth = credit.top1(e, span_mask)
    print(f"{B} texts, {M} spans each; span occlusion's top span is the last in {(truth == M - 1).float().mean():.2f}")
    print("| credit, summed over each span | rank corr. with span occlusion | top-1 span |\n|---|---|---|")
    print(f"| uniform (chance) | — | {1 / M:.2f} |")
    for name, c in tok_credit.items():
        cs = torch.einsum("bg,bgm->bm", c.float(), onehot)
        cs = cs.abs() if name == "shapley" else cs
        rho = credit.spearman(cs, e, span_mask)
        print(f"| {name} | {rho[~rho.isnan()].mean():+.2f} | {(credit.top1(cs, span_mask) == truth).float().mean():.2f} |")
print(f"{time.time() - t0:.0f} s")
