"""The bert4ray Transformer: BERT embeddings, post-LN blocks, pooler, tied MLM/LM head, optional
classifier, softmax or linear attention, three mask modes and an incremental-decoding cache.

    from components.model import Transformer
    model = Transformer.from_pretrained("path/to/bert-base-chinese")
    out = model(input_ids, segment_ids, attention_mask, mask_mode="unilm")
    out.logits  # (B, T, V)

    # incremental decoding: encode the source once, then one position per step
    out = model(src_ids, src_seg, src_mask, mask_mode="unilm", use_cache=True)
    out = model(next_ids, next_seg, cache=out.cache)      # next_ids: (B, 1)

Parameter names on disk are Hugging Face's (see `components.weights`), so any BERT-format
directory loads as is and `transformers` loads what bert4ray saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from components.attention import (
    causal_linear_attention,
    linear_attention,
    linear_state,
    recurrent_linear_attention,
    softmax_attention,
)
from components.cache import Cache, LayerCache
from components.config import ModelConfig
from components.masks import build_mask, check_mask_mode, incremental_mask


@dataclass
class TransformerOutput:
    logits: torch.Tensor | None                 # (B, T, V) MLM / LM logits (None when not asked for)
    last_hidden_state: torch.Tensor             # (B, T, H)
    hidden_states: tuple[torch.Tensor, ...]     # embedding output, then every layer: (B, T, H) each
    pooled: torch.Tensor | None                 # (B, H) tanh(W h_[CLS]); None for cached steps
    class_logits: torch.Tensor | None = None    # (B, num_labels) when the model has a classifier
    cache: Cache | None = None


@dataclass
class _AttentionContext:
    """What every block needs to know about the current call, built once per forward."""
    mode: str
    incremental: bool
    use_cache: bool
    allowed: torch.Tensor | None      # softmax: (B, 1, T, P+T) bool, or None = no masking needed
    is_causal: bool                   # softmax: plain causal triangle, no padding
    key_valid: torch.Tensor | None    # (B, T) bool for the new tokens
    target: torch.Tensor | None       # (B, T) bool, unilm target positions (linear kernel)


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    return F.silu  # "silu" / "swish"


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids, segment_ids, position_ids) -> torch.Tensor:
        x = (self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
             + self.token_type_embeddings(segment_ids))                      # (B, T, H)
        return self.dropout(self.LayerNorm(x))


class Block(nn.Module):
    """Post-LN transformer block: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H = cfg.hidden_size
        self.n_head, self.head_dim, self.kind = cfg.num_attention_heads, cfg.head_dim, cfg.attention
        self.query, self.key, self.value = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)
        self.attn_out = nn.Linear(H, H)
        self.attn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(H, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, H)
        self.ffn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.act = _activation(cfg.hidden_act)
        self.attn_dropout = cfg.attention_probs_dropout_prob
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)       # (B, nh, T, hs)

    def forward(self, x, ctx: _AttentionContext, layer_cache: LayerCache | None):
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        attend = self._softmax if self.kind == "softmax" else self._linear
        y, new_cache = attend(q, k, v, ctx, layer_cache)                        # (B, nh, T, hs)
        B, _, T, _ = y.shape
        y = y.transpose(1, 2).reshape(B, T, -1)                                # (B, T, H)
        x = self.attn_norm(x + self.dropout(self.attn_out(y)))
        x = self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))
        return x, new_cache

    def _softmax(self, q, k, v, ctx, layer_cache):
        new_cache = None
        if ctx.use_cache:                    # true for every incremental call; a prefix fills an empty cache
            new_cache = (layer_cache if ctx.incremental else LayerCache()).append(k, v)
            k, v = new_cache.k, new_cache.v                                    # (B, nh, P+T, hs)
        p = self.attn_dropout if self.training else 0.0
        y = softmax_attention(q, k, v, ctx.allowed, dropout_p=p, is_causal=ctx.is_causal)
        return y, new_cache

    def _linear(self, q, k, v, ctx, layer_cache):
        state = None
        if ctx.incremental:
            state = (layer_cache.S, layer_cache.z)
            if q.shape[2] == 1:
                y, state = recurrent_linear_attention(q, k, v, state, ctx.key_valid)
            else:
                y, state = causal_linear_attention(q, k, v, ctx.key_valid, state=state)
        elif ctx.mode == "bidirectional":
            y = linear_attention(q, k, v, ctx.key_valid)
            if ctx.use_cache:
                state = linear_state(k, v, ctx.key_valid)
        elif ctx.mode == "causal":
            y, state = causal_linear_attention(q, k, v, ctx.key_valid)
        else:
            # UniLM: every source key is visible to every position, so the source enters as the
            # starting state of a causal pass over the target keys.
            valid = ctx.key_valid if ctx.key_valid is not None else torch.ones_like(ctx.target)
            source = linear_state(k, v, valid & ~ctx.target)
            y, state = causal_linear_attention(q, k, v, valid & ctx.target, state=source)
        return y, (LayerCache(S=state[0], z=state[1]) if ctx.use_cache else None)


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        H = config.hidden_size
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(H, H)
        # MLM / LM head: transform, then the word-embedding matrix (tied) plus a bias.
        self.mlm_transform = nn.Linear(H, H)
        self.mlm_act = _activation(config.hidden_act)
        self.mlm_norm = nn.LayerNorm(H, eps=config.layer_norm_eps)
        self.mlm_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.classifier = nn.Linear(H, config.num_labels) if config.num_labels else None
        self.classifier_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # --- placement ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the weights are: every inference path builds its tensors here."""
        return self.embeddings.word_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' floating-point type (float32, or bfloat16 / float16 for inference)."""
        return self.embeddings.word_embeddings.weight.dtype

    # --- heads ------------------------------------------------------------------------------
    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., V): the tied MLM/LM head."""
        h = self.mlm_norm(self.mlm_act(self.mlm_transform(hidden)))
        return F.linear(h, self.embeddings.word_embeddings.weight, self.mlm_bias)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, H): a linear map of the [CLS] (first) position, then tanh (BERT) or
        nothing (`pooler_activation: linear`, SimBERT's retrieval vector)."""
        pooled = self.pooler(hidden[:, 0])
        return torch.tanh(pooled) if self.config.pooler_activation == "tanh" else pooled

    def embed(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The embedding output (B, T, H) for a fresh (uncached) sequence; perturb it and pass it
        back as `inputs_embeds` (noise, adversarial training, gradient penalty, attribution)."""
        B, T = input_ids.shape
        if segment_ids is None:
            segment_ids = torch.zeros_like(input_ids)
        positions = torch.arange(T, device=input_ids.device)[None].expand(B, T)
        return self.embeddings(input_ids, segment_ids, positions)

    # --- forward ----------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, mask_mode: str = "bidirectional",
                cache: Cache | None = None, use_cache: bool = False, return_logits: bool = True,
                inputs_embeds: torch.Tensor | None = None) -> TransformerOutput:
        """input_ids: (B, T); segment_ids, attention_mask: (B, T) (default 0 / all ones).

        With `cache`, the tokens are appended after the cached prefix: they see every real cached
        token and each other causally, whatever `mask_mode` the prefix was encoded with.
        `inputs_embeds` (B, T, H) replaces the embedding output (attribution, adversarial training).
        """
        check_mask_mode(mask_mode)
        B, T = input_ids.shape
        device = input_ids.device
        if segment_ids is None:
            segment_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        self._check_inputs(input_ids, segment_ids, attention_mask, cache)
        incremental = cache is not None and not cache.is_empty
        valid = attention_mask.bool()
        if incremental:
            positions = cache.lengths[:, None] + torch.arange(T, device=device)[None]
            use_cache = True
        else:
            positions = torch.arange(T, device=device)[None].expand(B, T)
        if int(positions.max()) >= self.config.max_position_embeddings:
            raise ValueError(f"sequence reaches position {int(positions.max())} but the model has only "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        ctx = self._context(mask_mode, incremental, use_cache or cache is not None, valid, segment_ids, cache)

        x = self.embeddings(input_ids, segment_ids, positions) if inputs_embeds is None else inputs_embeds
        hidden_states = [x]
        new_layers = []
        for i, block in enumerate(self.layers):
            x, layer_cache = block(x, ctx, cache.layers[i] if incremental else None)
            hidden_states.append(x)
            new_layers.append(layer_cache)

        new_cache = None
        if ctx.use_cache:
            past_valid = cache.valid if incremental else valid.new_zeros(B, 0)
            past_len = cache.lengths if incremental else torch.zeros(B, dtype=torch.long, device=device)
            new_cache = Cache(new_layers, torch.cat([past_valid, valid], dim=1),
                              past_len + valid.sum(dim=1))
        pooled = None if incremental else self.pool(x)
        class_logits = None
        if self.classifier is not None and pooled is not None:
            class_logits = self.classifier(self.classifier_dropout(pooled))
        return TransformerOutput(
            logits=self.lm_logits(x) if return_logits else None,
            last_hidden_state=x, hidden_states=tuple(hidden_states), pooled=pooled,
            class_logits=class_logits, cache=new_cache)

    def _check_inputs(self, input_ids, segment_ids, attention_mask, cache) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        for name, t in (("segment_ids", segment_ids), ("attention_mask", attention_mask)):
            if t.shape != input_ids.shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)} but input_ids has {tuple(input_ids.shape)}")
        if cache is not None and not cache.is_empty and cache.batch_size != input_ids.shape[0]:
            raise ValueError(f"cache holds {cache.batch_size} rows but input_ids has {input_ids.shape[0]}")

    def _context(self, mode, incremental, use_cache, valid, segment_ids, cache) -> _AttentionContext:
        all_valid = bool(valid.all())
        allowed, is_causal, target = None, False, None
        if self.config.attention == "softmax":
            if incremental:
                # One new token after a cache without holes sees every key: no mask at all (SDPA's
                # fastest path). Otherwise real cached keys plus the new tokens causally.
                if not (valid.shape[1] == 1 and all_valid and bool(cache.valid.all())):
                    allowed = incremental_mask(cache.valid, valid)
            elif mode == "causal" and all_valid:
                is_causal = True
            elif not (mode == "bidirectional" and all_valid):
                allowed = build_mask(mode, valid, segment_ids)
        elif mode == "unilm" and not incremental:
            target = torch.cumsum(segment_ids.long(), dim=1) > 0
            seg = segment_ids.masked_fill(~valid, 1)
            if bool((seg[:, 1:] < seg[:, :-1]).any()):
                raise ValueError("linear attention with mask_mode 'unilm' needs one source segment (0) "
                                 "followed by one target segment (1) in every row")
        key_valid = None if (all_valid and not incremental) else valid
        return _AttentionContext(mode, incremental, use_cache, allowed, is_causal, key_valid, target)

    # --- model directory --------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model_dir: str | Path, config: ModelConfig | None = None,
                        report: list[str] | None = None, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None) -> Transformer:
        """Load any Hugging Face BERT-format directory (safetensors or pytorch_model.bin).
        Heads absent from the checkpoint are newly initialised and their names appended to
        `report` (and logged). `device` (default the CPU, whatever torch's default device) and
        `dtype` (default float32; "bfloat16" / "float16" for inference) place the weights."""
        from components.weights import load_model
        return load_model(cls, model_dir, config=config, report=report, device=device, dtype=dtype)

    def save_pretrained(self, model_dir: str | Path, metadata: dict | None = None,
                        lowercase: bool | None = None) -> None:
        """Write config.json, model.safetensors (Hugging Face names), bert4ray.json and, with a
        vocabulary, the Hugging Face tokenizer files, atomically (see `components.weights.save_model`)."""
        from components.weights import save_model
        save_model(self, model_dir, metadata=metadata, lowercase=lowercase)
