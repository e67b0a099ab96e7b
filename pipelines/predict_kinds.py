"""The generating and probing kinds of `bert4ray predict` (embed and classify live in
pipelines/inference.py, which `bert4ray index` shares): similar, reply, segment, parse, attribute.

Sampling is reproducible: unless `decoding.seed` is given (then every row uses it, as a
/v1/similar request with that seed would), a row's seed is the CRC-32 of its text, so a row gets
the same output whatever block, batch or actor it lands in, and a re-run repeats it.
"""

from __future__ import annotations

import zlib

import pyarrow as pa

from pipelines.inference import Kind, over_length


def _load(model_dir, device: str, dtype: str | None):
    from components.model import Transformer
    from components.tokenizer import Tokenizer
    return (Transformer.from_pretrained(model_dir, device=device, dtype=dtype).eval(),
            Tokenizer.from_pretrained(model_dir))


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, max_length=10**9)[0])


def _seeds(decoding: dict, texts: list[str]) -> list[int]:
    seed = decoding.get("seed")
    return [seed if seed is not None else zlib.crc32(t.encode("utf-8")) for t in texts]


class Similar(Kind):
    """n sampled paraphrases, deduplicated and reranked by cosine to the input (SimBERT.similar)."""

    outputs = {"similar": pa.list_(pa.struct([("text", pa.string()), ("score", pa.float32())]))}
    columns = tuple(outputs)

    def __init__(self, model_dir, settings, device, dtype=None):
        super().__init__(model_dir, settings, device, dtype)
        from components.simbert import SimBERT
        self.sim = SimBERT(*_load(model_dir, device, dtype), max_length=int(settings.get("max_length", 64)))
        self.n, self.k = int(settings.get("n", 32)), int(settings.get("k", 5))
        self.decoding = dict(settings.get("decoding") or {})

    def prepare(self, text):
        n = _n_tokens(self.sim.tokenizer, text)
        return (text, n) if n <= self.sim.max_length else over_length(n, self.sim.max_length)

    def run(self, texts):
        settings = {k: v for k, v in self.decoding.items() if k != "seed"}
        found = self.sim.similar_many(texts, self.n, self.k, settings, seeds=_seeds(self.decoding, texts))
        return {"similar": [[{"text": t, "score": s} for t, s in row] for row in found]}, None


class Reply(Kind):
    """A dialogue model's reply to a history: a list of turns, or one string (a single turn)."""

    outputs = {"reply": pa.string(), "finish_reason": pa.string()}
    columns = tuple(outputs)
    text_input = False

    def __init__(self, model_dir, settings, device, dtype=None):
        super().__init__(model_dir, settings, device, dtype)
        from components.decoding import DecodingConfig
        from components.dialog import DialogueModel
        self.dialogue = DialogueModel(*_load(model_dir, device, dtype), max_length=int(settings.get("max_length", 256)),
                                      max_history=settings.get("max_history"))
        self.decoding = dict(settings.get("decoding") or {})
        room = min(DecodingConfig.from_dict(self.decoding).max_new_tokens, self.dialogue.max_length // 2)
        self.budget = self.dialogue.max_length - room - 1        # what encode_dialogue leaves for turns

    def prepare(self, value):
        turns = [value] if isinstance(value, str) else list(value)
        last = _n_tokens(self.dialogue.tokenizer, turns[-1]) - 1        # its tokens and one [SEP]
        if last > self.budget:
            return (f"the last turn has {last} tokens, more than the {self.budget} the model's "
                    f"{self.dialogue.max_length} positions leave beside the reply")
        return turns, sum(len(t) for t in turns)

    def run(self, histories):
        replies = self.dialogue.reply_batch(histories, self.decoding, batch_size=len(histories),
                                            seeds=_seeds(self.decoding, ["\n".join(h) for h in histories]))
        return {"reply": [r.text for r in replies], "finish_reason": [r.finish_reason for r in replies]}, None


class _Probe(Kind):
    """Perturbed Masking with the settings the model carries (bert4ray.json "perturbed_masking",
    written by `bert4ray probe ... --set output.save_to_model=true`), as the Serve parser reads
    them; without a calibrated threshold each text is cut at the Otsu threshold of its own scores."""

    DEFAULTS = {"layer": -1, "distance": "euclidean", "subword": "first", "threshold": None,
                "dependency": "eisner", "constituency": "mart"}

    def __init__(self, model_dir, settings, device, dtype=None):
        super().__init__(model_dir, settings, device, dtype)
        from components.config import read_bert4ray_json
        from components.probing.constituency import migrate_settings
        from components.probing.prober import Prober
        stored, _ = migrate_settings(read_bert4ray_json(model_dir).get("perturbed_masking") or {})
        self.options = {**self.DEFAULTS, **stored, **{k: v for k, v in settings.items() if v is not None}}
        o = self.options
        self.prober = Prober.from_pretrained(model_dir, layer=o["layer"], distance=o["distance"],
                                             subword=o["subword"], token_budget=int(o.get("token_budget", 4096)),
                                             device=device, dtype=dtype)

    def prepare(self, text):
        return text, len(text)

    def _threshold(self, scores) -> float:
        import numpy as np

        from components.probing.segment import choose_threshold
        if self.options["threshold"] is not None:
            return float(self.options["threshold"])
        finite = scores[np.isfinite(scores)]
        if np.unique(finite).size < 2:
            return np.inf                              # nothing to compare: keep the forced cuts only
        return choose_threshold(finite, "otsu")

    def words(self, texts: list[str]) -> list[list[str]]:
        from components.probing.segment import segment
        return [segment(chars, scores, self._threshold(scores)) if chars else []
                for chars, scores in self.prober.char_scores(texts)]


class Segment(_Probe):
    outputs = {"words": pa.list_(pa.string())}
    columns = tuple(outputs)

    def run(self, texts):
        return {"words": self.words(texts)}, None


class Parse(_Probe):
    """Dependency heads (1-based, 0 = root) and an unlabeled bracketed tree over the text's
    whitespace tokens, or over its segmented words when it has no spaces."""

    outputs = {"tokens": pa.list_(pa.string()), "heads": pa.list_(pa.int32()), "tree": pa.string()}
    columns = tuple(outputs)

    def run(self, texts):
        from components.probing.constituency import to_brackets
        units = [t.split() for t in texts]
        single = [i for i, u in enumerate(units) if len(u) <= 1]
        for i, words in zip(single, self.words([texts[i] for i in single])):
            units[i] = words
        n = len(texts)
        out = {"tokens": [None] * n, "heads": [None] * n, "tree": [None] * n}
        errors: list[str | None] = [None] * n
        todo = []
        for i, u in enumerate(units):
            if not u:
                errors[i] = "the text has no words"
            elif not self.prober.fits(u):
                errors[i] = f"{len(u)} words, more than fit the model's {self.prober.max_tokens} positions"
            else:
                todo.append(i)
        parsed = self.prober.parse([units[i] for i in todo], self.options["dependency"], self.options["constituency"])
        for i, p in zip(todo, parsed):
            out["tokens"][i], out["heads"][i], out["tree"][i] = p.units, p.heads, to_brackets(p.tree, p.units)
        return out, errors


class Attribute(Kind):
    """Integrated Gradients of a classifier (components.attribution): WordPiece tokens with their
    scores, the completeness delta, the predicted label and the attributed target."""

    outputs = {"tokens": pa.list_(pa.string()), "scores": pa.list_(pa.float64()), "delta": pa.float64(),
               "predicted": pa.string(), "prob": pa.float64(), "target": pa.string()}
    columns = tuple(outputs)

    def __init__(self, model_dir, settings, device, dtype=None):
        super().__init__(model_dir, settings, device, dtype)
        from components.attribution import Attributor
        self.attributor = Attributor.from_pretrained(model_dir, device=device, dtype=dtype)
        model = self.attributor.model
        self.limit = min(self.attributor.tokenizer.max_length, model.config.max_position_embeddings)
        s = settings
        self.options = {"target": s.get("target"), "n_steps": int(s.get("steps", 50)),
                        "baseline": "text" if s.get("baseline_text") is not None else s.get("baseline", "pad"),
                        "baseline_text": s.get("baseline_text"), "rule": s.get("rule", "gausslegendre"),
                        "quantity": s.get("quantity", "prob"), "max_length": self.limit}

    def prepare(self, text):
        n = _n_tokens(self.attributor.tokenizer, text)
        if n <= 2:
            return "the text has no tokens"
        return (text, n) if n <= self.limit else over_length(n, self.limit)

    def run(self, texts):
        results = self.attributor.attribute_batch(texts, **self.options)
        return {"tokens": [r.tokens for r in results], "scores": [r.scores for r in results],
                "delta": [r.delta for r in results], "predicted": [r.label for r in results],
                "prob": [r.prob for r in results], "target": [r.target_label for r in results]}, None
