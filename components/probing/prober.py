"""Texts in, segmentations and trees out: the impact matrices, scores and decoders put together
for many texts at once (what `bert4ray probe`'s Ray Data actors and the Serve parser run).

    prober = Prober.from_pretrained("runs/mlm/model", layer=-1)
    chars, scores = prober.char_scores(["大肠杆菌是一种细菌"])[0]
    words = segment(chars, scores, threshold)
    parsed = prober.parse([["大肠杆菌", "是", "一种", "细菌"]])[0]     # heads, tree
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from components.probing.constituency import ALGORITHMS as TREE_ALGORITHMS
from components.probing.constituency import Tree, parse_constituency
from components.probing.dependency import ALGORITHMS as DEP_ALGORITHMS
from components.probing.dependency import parse_dependencies
from components.probing.impact import ImpactOptions, check_choice, encode_units, impact_matrices
from components.probing.segment import boundary_scores, split_pieces


@dataclass
class Parse:
    units: list[str]
    heads: list[int] | None
    """1-based heads, 0 = root (None when no dependency decoder ran)."""
    tree: Tree | None
    matrix: np.ndarray | None = None


class Prober:
    def __init__(self, model, tokenizer, options: ImpactOptions | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.options = options or ImpactOptions()
        if self.options.layer == "all":
            raise ValueError("segmentation and parsing use one layer; 'all' is for impact_matrices")
        self.options.check(model.config.num_hidden_layers)
        self.max_tokens = min(tokenizer.max_length, model.config.max_position_embeddings)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device=None, dtype=None, **options) -> Prober:
        """`device` / `dtype` as for Transformer.from_pretrained; `options`: ImpactOptions' fields."""
        from components.model import Transformer
        from components.tokenizer import Tokenizer
        return cls(Transformer.from_pretrained(model_dir, device=device, dtype=dtype),
                   Tokenizer.from_pretrained(model_dir), ImpactOptions(**options))

    # --- segmentation ------------------------------------------------------------------------
    def pieces(self, text: str) -> list[str]:
        """Whitespace-free pieces of at most max_tokens - 2 characters: whitespace always separates
        words, and long texts are cut after clause punctuation."""
        return [p for chunk in text.split() for p in split_pieces(chunk, self.max_tokens - 2)]

    def char_scores(self, texts: list[str], all_layers: bool = False) -> list[tuple[list[str], np.ndarray]]:
        """(characters, boundary scores) per text; -inf where a boundary is forced (whitespace, or a
        cut between two pieces). Only adjacent pairs are computed: 2n - 1 masked copies. With
        all_layers the scores of every layer come from the same forward passes: (L, n - 1) arrays."""
        pieces = [self.pieces(t) for t in texts]
        flat = [list(p) for ps in pieces for p in ps]
        opts = replace(self.options, pairs="adjacent", layer="all" if all_layers else self.options.layer)
        mats = impact_matrices(self.model, self.tokenizer, flat, opts)
        mats = [F if all_layers else F[None] for F in mats]                      # (L, n, n) each
        out, k = [], 0
        for ps in pieces:
            chars, scores = [], []
            for p in ps:
                if chars:
                    scores.append(np.full(len(mats[k]), -np.inf))
                chars += list(p)
                scores += list(np.stack([boundary_scores(F) for F in mats[k]], axis=1))   # (n-1, L) rows
                k += 1
            arr = np.asarray(scores, dtype=np.float64).reshape(-1, len(mats[k - 1]) if mats else 1).T
            out.append((chars, arr if all_layers else arr[0]))
        return out

    # --- parsing -----------------------------------------------------------------------------
    def fits(self, units: list[str]) -> bool:
        try:
            return len(encode_units(self.tokenizer, units).ids) <= self.max_tokens
        except ValueError:
            return False

    def parse(self, sentences: list[list[str]], dependency: str | None = "eisner",
              constituency: str | None = "mart", roots: list[int | None] | None = None,
              keep_matrix: bool = False) -> list[Parse]:
        """Word-level impact matrices of all sentences in one batched call, then the decoders.
        roots: per sentence a gold root (1-based) or None for the unsupervised choice."""
        if dependency is not None:
            check_choice("dependency algorithm", dependency, DEP_ALGORITHMS)
        if constituency is not None:
            check_choice("constituency algorithm", constituency, TREE_ALGORITHMS)
        mats = impact_matrices(self.model, self.tokenizer, sentences, replace(self.options, pairs="all"))
        out = []
        for k, (units, F) in enumerate(zip(sentences, mats)):
            root = roots[k] if roots is not None and roots[k] is not None else "impact"
            heads = parse_dependencies(F, dependency, root) if dependency else None
            tree = parse_constituency(F, constituency) if constituency else None
            out.append(Parse(list(units), heads, tree, F if keep_matrix else None))
        return out
