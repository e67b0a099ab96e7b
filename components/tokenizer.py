"""BERT WordPiece tokenizer on Hugging Face `tokenizers`, from a `vocab.txt`.

Chinese characters are split one by one (BERT's normaliser puts spaces around CJK ideographs);
pairs get segment ids 0 / 1; batches are padded and truncated; decoding joins Chinese without
spaces. Ids match `transformers.BertTokenizerFast` for the same vocabulary and casing, and
`save_pretrained` writes the Hugging Face files (`tokenizer.json`, `tokenizer_config.json`,
`special_tokens_map.json`) that `AutoTokenizer` loads to the same ids.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# transformers' names for them (tokenizer_config.json, special_tokens_map.json).
SPECIAL_TOKEN_NAMES = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                       "sep_token": "[SEP]", "mask_token": "[MASK]"}


@dataclass
class Batch:
    input_ids: torch.Tensor        # (B, T) long
    segment_ids: torch.Tensor      # (B, T) long
    attention_mask: torch.Tensor   # (B, T) long, 1 = token, 0 = padding

    def to(self, device) -> Batch:
        return Batch(self.input_ids.to(device), self.segment_ids.to(device), self.attention_mask.to(device))


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() and not _is_cjk(ch)


def _needs_space(prev: str, first: str) -> bool:
    """A space separates two Latin words/numbers, and follows ASCII punctuation before a word."""
    if _is_word_char(first):
        return _is_word_char(prev) or prev in ",.!?;:]"
    return first == "[" and _is_word_char(prev)


class Tokenizer:
    def __init__(self, vocab_file: str | Path, lowercase: bool = True, max_length: int = 512):
        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise FileNotFoundError(f"vocabulary file '{vocab_file}' does not exist")
        tokens = vocab_file.read_text(encoding="utf-8").splitlines()
        vocab: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            vocab[tok.rstrip("\r")] = i  # a repeated token keeps its last id, as transformers does
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_file}: special token(s) {', '.join(missing)} missing from the vocabulary")
        self.vocab_file = vocab_file
        self.vocab = vocab
        self.id_to_token = {i: t.rstrip("\r") for i, t in enumerate(tokens)}
        self.lowercase = lowercase
        self.max_length = max_length
        self.pad_id, self.unk_id = vocab["[PAD]"], vocab["[UNK]"]
        self.cls_id, self.sep_id, self.mask_id = vocab["[CLS]"], vocab["[SEP]"], vocab["[MASK]"]
        self.special_ids = {vocab[t] for t in SPECIAL_TOKENS}

        tok = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)])
        tok.decoder = decoders.WordPiece(prefix="##")
        # As in Hugging Face's BERT tokenizers: "[SEP]" written in a text is the token itself.
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
        self._tok = tok
        self._by_length: dict[int, HFTokenizer] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, max_length: int | None = None) -> Tokenizer:
        model_dir = Path(model_dir)
        lowercase = True
        cfg = model_dir / "tokenizer_config.json"
        if cfg.is_file():
            lowercase = bool(json.loads(cfg.read_text(encoding="utf-8")).get("do_lower_case", True))
        if max_length is None:
            conf = model_dir / "config.json"
            max_length = (json.loads(conf.read_text(encoding="utf-8")).get("max_position_embeddings", 512)
                          if conf.is_file() else 512)
        return cls(model_dir / "vocab.txt", lowercase=lowercase, max_length=max_length)

    def save_pretrained(self, model_dir: str | Path, model_max_length: int | None = None) -> None:
        """Write vocab.txt and the Hugging Face tokenizer files. `model_max_length` (what
        `truncation=True` cuts to) defaults to the directory's max_position_embeddings."""
        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        if self.vocab_file.resolve() != (model_dir / "vocab.txt").resolve():
            shutil.copyfile(self.vocab_file, model_dir / "vocab.txt")
        if model_max_length is None:
            conf = model_dir / "config.json"
            model_max_length = (json.loads(conf.read_text(encoding="utf-8")).get("max_position_embeddings")
                                if conf.is_file() else None) or self.max_length
        (model_dir / "tokenizer.json").write_text(self._tok.to_str(pretty=True), encoding="utf-8")
        config = {"tokenizer_class": "BertTokenizer", "do_lower_case": self.lowercase,
                  "tokenize_chinese_chars": True, "strip_accents": None,
                  "model_max_length": int(model_max_length), "clean_up_tokenization_spaces": True,
                  **SPECIAL_TOKEN_NAMES}
        for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", SPECIAL_TOKEN_NAMES)):
            (model_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n",
                                          encoding="utf-8")

    # --- encoding ---------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str, pair: str | None = None, max_length: int | None = None
               ) -> tuple[list[int], list[int]]:
        """[CLS] text [SEP] (pair [SEP]) -> (ids, segment ids), truncated to max_length with the
        longest-first rule (the same cut as transformers' tokenizers)."""
        if not isinstance(text, str) or (pair is not None and not isinstance(pair, str)):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        enc = self._truncating(max_length or self.max_length).encode(text, pair)
        return enc.ids, enc.type_ids

    def _truncating(self, max_length: int) -> HFTokenizer:
        """A copy of the tokenizer that truncates to max_length (kept per length: the Rust
        tokenizer holds truncation as state, so one shared object cannot serve two lengths)."""
        if max_length < 4:
            raise ValueError(f"max_length {max_length} leaves no room for text")
        tok = self._by_length.get(max_length)
        if tok is None:
            tok = HFTokenizer.from_str(self._tok.to_str())
            tok.enable_truncation(max_length, strategy="longest_first")
            self._by_length[max_length] = tok
        return tok

    def encode_batch(self, texts: list[str], pairs: list[str] | None = None,
                     max_length: int | None = None, device=None) -> Batch:
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of texts")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        rows = [self.encode(t, pairs[i] if pairs is not None else None, max_length) for i, t in enumerate(texts)]
        return self.pad(rows, device)

    def pad(self, rows: list[tuple[list[int], list[int]]], device=None) -> Batch:
        """Right-padded (B, T) tensors on `device` (None: the CPU, not torch's default device):
        filled as lists on the host, then moved in one transfer per tensor."""
        T = max((len(ids) for ids, _ in rows), default=0)
        input_ids = [ids + [self.pad_id] * (T - len(ids)) for ids, _ in rows]
        segment_ids = [seg + [0] * (T - len(seg)) for _, seg in rows]
        mask = [[1] * len(ids) + [0] * (T - len(ids)) for ids, _ in rows]
        device = device or "cpu"
        return Batch(*(torch.tensor(x, dtype=torch.long, device=device).reshape(len(rows), T)
                       for x in (input_ids, segment_ids, mask)))

    # --- decoding ---------------------------------------------------------------------------
    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.id_to_token.get(int(i), "[UNK]") for i in ids]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Join tokens: WordPiece pieces glue to their word; no space next to CJK characters or
        punctuation; one space between two Latin words or numbers."""
        out = ""
        for i in ids:
            i = int(i)
            if skip_special_tokens and i in self.special_ids:
                continue
            tok = self.id_to_token.get(i, "[UNK]")
            if tok.startswith("##"):
                out += tok[2:]
            elif out and _needs_space(out[-1], tok[0]):
                out += " " + tok
            else:
                out += tok
        return unicodedata.normalize("NFC", out)
