"""Train a tiny SimBERT in-process with plain PyTorch (seconds), for tests that need a model that
has learnt something real: serving, retrieval, generation."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from components.config import ModelConfig
from components.losses import in_batch_contrastive_loss, seq2seq_loss
from components.model import Transformer
from components.tokenizer import Tokenizer

GROUPS = [
    ["怎么修改银行卡密码", "银行卡密码怎么改", "如何修改银行卡的密码"],
    ["今天天气怎么样", "今天天气好吗", "今天的天气如何"],
    ["我的快递还没到", "快递怎么还没到", "我的快递为什么还没有到"],
    ["手机号码怎么换", "怎么更换手机号码", "如何换手机号"],
    ["明天会下雨吗", "明天下不下雨", "明天有雨吗"],
    ["我想退款", "怎么申请退款", "如何退款"],
    ["微信支付不了", "微信为什么不能支付", "微信支付失败怎么办"],
    ["订单在哪里看", "怎么查看我的订单", "我的订单在哪"],
]


def train_tiny_simbert(out_dir: Path, vocab_file: Path, steps: int = 60, seed: int = 0,
                       attention: str = "softmax") -> Path:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tok = Tokenizer(vocab_file)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=96, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, pooler_activation="linear", attention=attention,
                      eos_token_id=tok.sep_id)
    model = Transformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        pairs = []
        for group in GROUPS:
            a, b = rng.sample(group, 2)
            pairs += [(a, b), (b, a)]
        batch = tok.encode_batch([p[0] for p in pairs], pairs=[p[1] for p in pairs])
        out = model(batch.input_ids, batch.segment_ids, batch.attention_mask, mask_mode="unilm")
        loss = (seq2seq_loss(out.logits, batch.input_ids, batch.segment_ids, batch.attention_mask)
                + in_batch_contrastive_loss(out.pooled))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(out_dir, metadata={"vocab_file": str(vocab_file), "task": "simbert"})
    return out_dir
