"""Perturbed Masking (Wu et al., ACL 2020): unsupervised word segmentation and dependency /
constituency parsing from any masked LM, no fine-tuning. Plain PyTorch and numpy.

    impact.py        impact matrices F[i][j] = d(H(x\\{i})_i, H(x\\{i,j})_i), batched across sentences
    segment.py       boundary scores, fixed / Otsu / Gaussian-mixture thresholds, segmentation
    dependency.py    Eisner (projective) and Chu-Liu-Edmonds (non-projective) trees
    constituency.py  MART (the authors' and a block-mean variant), the seed's top-down splits; right- /
                     left-branching baselines
    evaluate.py      segmentation P/R/F1 (SIGHAN), UAS / UUAS, unlabeled bracket F1
    treebank.py      CoNLL-U and bracketed-tree readers
"""

from components.probing.constituency import parse_constituency, tree_spans
from components.probing.dependency import chu_liu_edmonds, eisner, parse_dependencies
from components.probing.impact import ImpactOptions, encode_units, impact_matrices, impact_matrix
from components.probing.segment import boundary_scores, choose_threshold, segment

__all__ = ["ImpactOptions", "boundary_scores", "choose_threshold", "chu_liu_edmonds", "eisner", "encode_units",
           "impact_matrices", "impact_matrix", "parse_constituency", "parse_dependencies", "segment",
           "tree_spans"]
