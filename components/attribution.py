"""Integrated Gradients (Sundararajan et al., 2017) for a classifier, on the embedding output.

For an input x and a baseline x' the attribution of embedding coordinate (t, h) is

    IG_th = (x_th - x'_th) · ∫_0^1 ∂F(x' + α(x - x')) / ∂x_th dα

with F the target class's probability (or logit). x is the embedding output E = model.embed(ids,
seg) (B, T, H), so the path runs through embedding space and no weight is ever scaled or modified
(unlike demos that multiply the embedding matrix by α). The integral is a quadrature Σ_k w_k g(α_k):
Gauss–Legendre (default; exact for polynomials of degree 2n-1) or a left / right / middle /
trapezoid Riemann sum. By completeness, Σ_th IG_th = F(x) - F(x'); every result carries
delta = |Σ IG - (F(x) - F(x'))| so the quadrature error is visible.

    from components.attribution import Attributor
    attributor = Attributor.from_pretrained("runs/classify/model")
    result = attributor.attribute("这家酒店很干净", n_steps=50)
    result.tokens, result.scores, result.delta

Baselines: `pad` replaces every text token by [PAD] and keeps [CLS]/[SEP] (and positions and
segments), so those positions get exactly zero attribution; `zero` is the all-zero embedding
output; `text` uses another text's tokens, fitted to the input's length: its tokens are cut or
right-padded with [PAD] so that [CLS]/[SEP] sit where the input has them.

Speed and memory: every (text, α_k) pair is one row; texts of equal token length share forward
passes, each of at most `internal_batch_size` rows (default: TOKENS_PER_PASS tokens' worth), so
memory is bounded whatever n_steps and the number of texts are. Rows are never padded (see `_plan`). The per-row gradients do not depend on how rows
are grouped, so chunked and unchunked results agree to float rounding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from components.model import Transformer
from components.tokenizer import Tokenizer

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
QUANTITIES = ("prob", "logit")
BASELINES = ("pad", "zero", "text")
# Default forward-pass size in tokens (rows × length). On a 2-core CPU, 4 layers × 256 hidden,
# time per row is flat from ~1k to ~4k tokens per pass and grows beyond; memory grows linearly.
TOKENS_PER_PASS = 2048


@dataclass
class Attribution:
    """Token attributions of one text for one target class."""
    text: str
    tokens: list[str]          # WordPiece tokens including [CLS] and [SEP]
    token_ids: list[int]
    scores: list[float]        # Σ_h IG_th per token: signed, sums to F(x) - F(baseline) up to delta
    norms: list[float]         # ‖IG_t‖_2 over the hidden dimension
    label: str                 # predicted class name
    label_id: int
    prob: float                # softmax probability of the predicted class
    target: int                # class whose F is attributed
    target_label: str
    quantity: str              # "prob" or "logit"
    f_input: float             # F(x)
    f_baseline: float          # F(baseline)
    delta: float               # |Σ scores - (F(x) - F(baseline))|
    baseline: str
    rule: str
    n_steps: int

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (the keys of `POST /v1/attribute` plus the details)."""
        return asdict(self)


# --- quadrature --------------------------------------------------------------------------------
def integration_points(rule: str, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alphas, weights), each (n_steps,) float64, such that ∫_0^1 g ≈ Σ_k weights_k g(alphas_k)."""
    if rule not in RULES:
        raise ValueError(f"unknown integration rule {rule!r}; valid: {', '.join(RULES)}")
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    n = n_steps
    if rule == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)          # on [-1, 1]
        alphas, weights = (nodes + 1.0) / 2.0, w / 2.0         # mapped onto [0, 1]
    elif rule == "riemann_trapezoid":
        if n < 2:
            raise ValueError("the trapezoid rule needs n_steps >= 2 (both end points)")
        alphas = np.linspace(0.0, 1.0, n)
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2.0                                # h/2 at the ends, h inside: Σ = 1
    else:
        offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[rule]
        alphas = (np.arange(n) + offset) / n
        weights = np.full(n, 1.0 / n)
    return torch.from_numpy(np.asarray(alphas, dtype=np.float64)), torch.from_numpy(np.asarray(weights))


# --- the model as a function of its embedding output --------------------------------------------
def _class_logits(model: Transformer, embeds: torch.Tensor, segs: torch.Tensor) -> torch.Tensor:
    """(R, T, H) embedding outputs of unpadded rows -> (R, C) classifier logits."""
    ids = torch.full(segs.shape, model.config.pad_token_id, device=segs.device)   # shape only:
    out = model(ids, segs, inputs_embeds=embeds, return_logits=False)             # embeds replace the lookup
    return out.class_logits


def _quantity(logits: torch.Tensor, targets: torch.Tensor, quantity: str) -> torch.Tensor:
    """(R, C) logits, (R,) targets -> (R,) F: the target's probability or logit (in float32 at
    least, whatever the model's dtype: a bfloat16 softmax keeps 3 significant digits)."""
    logits = logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits
    values = logits.softmax(dim=-1) if quantity == "prob" else logits
    return values.gather(1, targets[:, None]).squeeze(1)


def _plan(lengths: list[int], steps: int, chunk: int | None) -> list[list[tuple[int, int, int]]]:
    """The forward passes over rows (item i, step k): each pass is a list of (i, k0, k1) runs.

    Items of equal length share passes, longest first (freed blocks then serve the smaller passes),
    at most `chunk` rows each; None = TOKENS_PER_PASS // length rows. Rows of different lengths
    never share a pass: padding them would need an attention mask, which sends PyTorch's CPU
    attention down a slower path that also keeps the (T, T) weights for backward."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    passes = []
    for n in sorted(groups, reverse=True):
        rows = [(i, k) for i in groups[n] for k in range(steps)]
        size = chunk or max(1, TOKENS_PER_PASS // n)
        for start in range(0, len(rows), size):
            runs: list[list[int]] = []
            for i, k in rows[start:start + size]:
                if runs and runs[-1][0] == i:
                    runs[-1][2] = k + 1
                else:
                    runs.append([i, k, k + 1])
            passes.append([tuple(r) for r in runs])
    return passes


def endpoint_logits(model: Transformer, embeds: list[torch.Tensor], segments: list[torch.Tensor],
                    batch_size: int | None = None) -> torch.Tensor:
    """Classifier logits (N, C) of N embedding outputs (T_i, H), batched by length, no gradient."""
    out: list[torch.Tensor | None] = [None] * len(embeds)
    with torch.no_grad():
        for runs in _plan([e.shape[0] for e in embeds], 1, batch_size):
            idx = [i for i, _, _ in runs]
            logits = _class_logits(model, torch.stack([embeds[i] for i in idx]),
                                   torch.stack([segments[i] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = logits[j]
    return torch.stack(out)


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    """Dropout off while attributing (IG needs a deterministic F), the previous mode restored."""
    was_training = model.training
    if was_training:
        model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _check_batch_size(size) -> None:
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"internal_batch_size must be a positive integer or None, got {size!r}")


# --- the integral -------------------------------------------------------------------------------
def integrated_gradients(model: Transformer, inputs: list[torch.Tensor], baselines: list[torch.Tensor],
                         targets: Sequence[int], segments: list[torch.Tensor] | None = None, *,
                         quantity: str = "prob", rule: str = "gausslegendre", n_steps: int = 50,
                         internal_batch_size: int | None = None) -> list[torch.Tensor]:
    """IG of F = class `targets[i]`'s probability/logit w.r.t. each embedding output `inputs[i]`
    (T_i, H) along the straight path from `baselines[i]` (same shape). Returns the attributions,
    one float64 (T_i, H) tensor per input. At most `internal_batch_size` rows (text, α) go through
    the model at once (None: TOKENS_PER_PASS tokens' worth). Dropout is switched off meanwhile."""
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; valid: {', '.join(QUANTITIES)}")
    _check_batch_size(internal_batch_size)
    if len(inputs) != len(baselines) or len(inputs) != len(targets):
        raise ValueError(f"{len(inputs)} inputs, {len(baselines)} baselines and {len(targets)} targets")
    for x, b in zip(inputs, baselines):
        if x.shape != b.shape:
            raise ValueError(f"baseline shape {tuple(b.shape)} differs from input shape {tuple(x.shape)}")
    if segments is None:
        segments = [torch.zeros(x.shape[0], dtype=torch.long, device=x.device) for x in inputs]
    alphas, weights = integration_points(rule, n_steps)
    dtype, device = inputs[0].dtype, inputs[0].device
    # The path is formed in float32 (a bfloat16 α would move the quadrature nodes) and each
    # point rounded once to the model's dtype; gradients are summed in float64 as before.
    path_type = torch.promote_types(dtype, torch.float32)
    alphas = alphas.to(dtype=path_type, device=device)
    weights = weights.to(device)
    baselines = [b.detach().to(path_type) for b in baselines]
    diffs = [(x.detach().to(path_type) - b) for x, b in zip(inputs, baselines)]   # (T_i, H) each
    grad_sums = [torch.zeros(x.shape, dtype=torch.float64, device=device) for x in inputs]

    with _eval_mode(model):
        for runs in _plan([x.shape[0] for x in inputs], n_steps, internal_batch_size):
            # The path points of this pass: baseline + α_k (input - baseline), (R, T, H).
            embeds = torch.cat([baselines[i][None] + alphas[k0:k1, None, None] * diffs[i][None]
                                for i, k0, k1 in runs]).to(dtype)
            segs = torch.cat([segments[i][None].expand(k1 - k0, -1) for i, k0, k1 in runs])     # (R, T)
            row_targets = torch.tensor([targets[i] for i, k0, k1 in runs for _ in range(k1 - k0)],
                                       dtype=torch.long, device=device)
            with torch.enable_grad():
                embeds.requires_grad_(True)
                f = _quantity(_class_logits(model, embeds, segs), row_targets, quantity)   # (R,)
                # Rows are independent, so d(Σ_r F_r)/d(row r) is row r's own gradient.
                (grad,) = torch.autograd.grad(f.sum(), embeds)                # (R, T, H)
            r = 0
            for i, k0, k1 in runs:
                w = weights[k0:k1, None, None]                                # (n, 1, 1)
                grad_sums[i] += (grad[r:r + k1 - k0].double() * w).sum(dim=0) # (T, H)
                r += k1 - k0
    return [d.double() * g for d, g in zip(diffs, grad_sums)]


# --- texts in, results out ---------------------------------------------------------------------
def label_names(model: Transformer) -> list[str]:
    cfg = model.config
    return list(cfg.labels) if cfg.labels else [str(i) for i in range(cfg.num_labels)]


def resolve_target(model: Transformer, target: int | str | None) -> int | None:
    """A class id from an id, a label name or a numeric string; None stays None (= predicted)."""
    if target is None:
        return None
    names = label_names(model)
    n = len(names)
    if isinstance(target, str):
        if target in names:
            return names.index(target)
        if not target.strip().lstrip("-").isdigit():
            raise ValueError(f"unknown target label {target!r}; the model's labels are: {', '.join(names)}")
        target = int(target)
    if isinstance(target, bool) or not isinstance(target, int | np.integer):
        raise ValueError(f"target must be a class id or label name, got {type(target).__name__}")
    if not 0 <= int(target) < n:
        raise ValueError(f"target {target} is out of range: the model has {n} labels (ids 0..{n - 1}: "
                         f"{', '.join(names)})")
    return int(target)


def check_classifier(model: Transformer) -> None:
    if not model.config.num_labels or model.classifier is None:
        raise ValueError("the model has no classifier head (num_labels = 0); Integrated Gradients "
                         "explains a model trained with the classify task")


def _baseline_ids(kind: str, ids: list[int], tokenizer: Tokenizer, baseline_ids: list[int] | None) -> list[int]:
    """Baseline token ids aligned with `ids` = [CLS] body [SEP]: specials kept, the body replaced."""
    body = len(ids) - 2
    if kind == "pad" or baseline_ids is None:
        fill = [tokenizer.pad_id] * body
    else:
        fill = (baseline_ids[:body] + [tokenizer.pad_id] * body)[:body]
    return [ids[0], *fill, ids[-1]]


def _checked_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("attribute_batch takes a list of texts; use attribute() for one text")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to attribute")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("text is empty" if len(texts) == 1 else f"text {i} is empty")
    return texts


def attribute_batch(model: Transformer, tokenizer: Tokenizer, texts: Sequence[str], *,
                    target: int | str | None | Sequence[int | str | None] = None, quantity: str = "prob",
                    baseline: str = "pad", baseline_text: str | None = None, rule: str = "gausslegendre",
                    n_steps: int = 50, internal_batch_size: int | None = None,
                    max_length: int | None = None) -> list[Attribution]:
    """Integrated Gradients for several texts (batched together; see the module docstring).

    target: None (each text's predicted class), one class id / label name for all texts, or a
    list with one per text. internal_batch_size: rows (text, α) per forward pass, bounding memory
    (None: about TOKENS_PER_PASS tokens per pass; the results do not depend on it). Texts longer
    than `max_length` tokens (default: the tokenizer's limit, at most the model's positions) are
    truncated; the result's tokens show what was attributed.
    """
    check_classifier(model)
    texts = _checked_texts(texts)
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; valid: {', '.join(BASELINES)}")
    if (baseline == "text") != (baseline_text is not None):
        raise ValueError("baseline_text is required with baseline='text' and only then")
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; valid: {', '.join(QUANTITIES)}")
    _check_batch_size(internal_batch_size)
    integration_points(rule, n_steps)                                      # validates rule and n_steps
    targets = list(target) if isinstance(target, list | tuple) else [target] * len(texts)
    if len(targets) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(targets)} targets")
    targets = [resolve_target(model, t) for t in targets]

    limit = min(max_length or tokenizer.max_length, model.config.max_position_embeddings)
    encoded = [tokenizer.encode(t, max_length=limit) for t in texts]
    for i, (ids, _) in enumerate(encoded):
        if len(ids) <= 2:
            raise ValueError(f"text {texts[i]!r} has no tokens")
    base_body = None
    if baseline == "text":
        if not isinstance(baseline_text, str):
            raise TypeError(f"baseline_text must be a string, got {type(baseline_text).__name__}")
        base_body = tokenizer.encode(baseline_text, max_length=limit)[0][1:-1]

    device = model.device
    names = label_names(model)
    with _eval_mode(model):
        segs = [torch.tensor(s, dtype=torch.long, device=device) for _, s in encoded]
        with torch.no_grad():
            def embed(ids, seg):                                            # (T,) ids -> (T, H)
                return model.embed(torch.tensor([ids], device=device), seg[None])[0]
            xs = [embed(ids, seg) for (ids, _), seg in zip(encoded, segs)]
            if baseline == "zero":
                bs = [torch.zeros_like(x) for x in xs]
            else:
                bs = [embed(_baseline_ids(baseline, ids, tokenizer, base_body), seg)
                      for (ids, _), seg in zip(encoded, segs)]
        # F at both ends, exactly (not from the path): one batched forward of 2N rows.
        ends = endpoint_logits(model, xs + bs, segs + segs, internal_batch_size)            # (2N, C)
        logits_x, logits_b = ends[:len(xs)].float(), ends[len(xs):].float()
        probs = logits_x.softmax(dim=-1)
        predicted = probs.argmax(dim=-1).tolist()    # to the host on purpose: targets index Python lists
        targets = [p if t is None else t for p, t in zip(predicted, targets)]
        t_tensor = torch.tensor(targets, dtype=torch.long, device=device)
        f_x = _quantity(logits_x, t_tensor, quantity).double()
        f_b = _quantity(logits_b, t_tensor, quantity).double()
        attrs = integrated_gradients(model, xs, bs, targets, segs, quantity=quantity, rule=rule,
                                     n_steps=n_steps, internal_batch_size=internal_batch_size)

    # To the host on purpose, one transfer per tensor: the results are JSON-ready Python numbers.
    attrs, probs, f_x, f_b = [a.cpu() for a in attrs], probs.cpu(), f_x.cpu(), f_b.cpu()
    results = []
    for i, (ids, _) in enumerate(encoded):
        a = attrs[i]                                                        # (T_i, H) float64
        scores = a.sum(dim=-1)
        delta = abs(float(scores.sum()) - float(f_x[i] - f_b[i]))
        results.append(Attribution(
            text=texts[i], tokens=tokenizer.convert_ids_to_tokens(ids), token_ids=list(ids),
            scores=scores.tolist(), norms=a.norm(dim=-1).tolist(), label=names[predicted[i]],
            label_id=predicted[i], prob=float(probs[i, predicted[i]]), target=targets[i],
            target_label=names[targets[i]], quantity=quantity, f_input=float(f_x[i]),
            f_baseline=float(f_b[i]), delta=delta, baseline=baseline, rule=rule, n_steps=n_steps))
    return results


def attribute(model: Transformer, tokenizer: Tokenizer, text: str, *, target: int | str | None = None,
              **options) -> Attribution:
    """Integrated Gradients for one text; options as for `attribute_batch`."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    return attribute_batch(model, tokenizer, [text], target=target, **options)[0]


class Attributor:
    """A classifier and its tokenizer, ready to attribute (what the CLI and the Serve deployment hold)."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer):
        check_classifier(model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = label_names(model)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device=None, dtype=None) -> Attributor:
        """Load a model directory; refuses one without a trained classifier head. `device` /
        `dtype` as for Transformer.from_pretrained."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model directory '{model_dir}' does not exist")
        from components.config import ModelConfig
        if not ModelConfig.load(model_dir).num_labels:
            raise ValueError(f"the model in '{model_dir}' has no classifier head (num_labels = 0); "
                             "Integrated Gradients explains a model trained with the classify task")
        new: list[str] = []
        model = Transformer.from_pretrained(model_dir, report=new, device=device, dtype=dtype)
        if any(name.startswith("classifier.") for name in new):
            raise ValueError(f"'{model_dir}' has no classifier weights (they would be random); "
                             "train it with the classify task first")
        return cls(model, Tokenizer.from_pretrained(model_dir))

    def attribute(self, text: str, **options) -> Attribution:
        return attribute(self.model, self.tokenizer, text, **options)

    def attribute_batch(self, texts: Sequence[str], **options) -> list[Attribution]:
        return attribute_batch(self.model, self.tokenizer, texts, **options)
