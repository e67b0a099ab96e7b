"""`bert4ray mgs`: recipe checks, the in-process run with MLflow, Ray actors equal to the
sequential evaluation, and (slow) MGS raising dev BLEU over a briefly MLE-trained model."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.cli import main
from pipelines.mgs import CandidateWorker, Evaluators, load_mgs_recipe, mgs_step, run_mgs
from pipelines.objectives import GenerationSystem, read_examples
from pipelines.recipe import RecipeError
from tests.tiny_training import GROUPS, train_tiny_simbert


@pytest.fixture(scope="module")
def groups_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mgs-data") / "groups.jsonl"
    path.write_text("".join(json.dumps({"texts": g}, ensure_ascii=False) + "\n" for g in GROUPS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mle_model(tmp_path_factory, vocab_file):
    """A SimBERT trained briefly by MLE: it has learnt something, far from all."""
    return train_tiny_simbert(tmp_path_factory.mktemp("mgs-model") / "model", vocab_file, steps=40)


def _recipe(model, data, tmp_path, **changes):
    raw = {"name": "mgs-test", "workdir": str(tmp_path / "runs"), "model": str(model), "steps": 3, "eval_every": 3,
           "decoding": {"strategy": "greedy", "max_new_tokens": 16},
           "data": {"train": str(data), "dev": str(data), "batch_size": 8, "max_length": 48},
           "mgs": {"num_candidates": 4, "beta": 10.0}, "optim": {"lr": 1e-3},
           "parallel": {"num_actors": 0}}
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw[section] = {**raw.get(section, {}), name: value}
        else:
            raw[key] = value
    return load_mgs_recipe(data=raw)


def test_recipe_errors_name_the_key(tmp_path, groups_file, mle_model):
    with pytest.raises(RecipeError, match="did you mean 'mgs.beta'"):
        _recipe(mle_model, groups_file, tmp_path, mgs__betta=1.0)
    with pytest.raises(RecipeError, match="metric"):
        _recipe(mle_model, groups_file, tmp_path, metric="rouge")
    with pytest.raises(RecipeError, match="mixture"):
        _recipe(mle_model, groups_file, tmp_path, mgs__mixture=2.0)
    with pytest.raises(RecipeError, match="unknown decoding setting 'topk'"):
        _recipe(mle_model, groups_file, tmp_path, decoding={"topk": 3})


def test_parameter_patterns_that_match_nothing_are_named(tmp_path, groups_file, mle_model):
    with pytest.raises(RecipeError, match="'layer.0.*' match no parameter name"):
        run_mgs(_recipe(mle_model, groups_file, tmp_path, mgs__parameters=["layer.0.*"], tracking__enabled=False),
                progress=False)


def _mgs_steps(model_dir, data, tmp_path, patterns, steps=3, prepare=None):
    """`steps` MGS steps in this process with AdamW weight decay on; (parameters before, the system)."""
    from components.mgs import movable
    recipe = _recipe(model_dir, data, tmp_path, mgs__parameters=patterns, mgs__noise_scale=5.0)
    system = GenerationSystem.from_pretrained(model_dir, recipe.data.max_length)
    if prepare:
        prepare(system.model)
    names = [n for n, _ in system.model.named_parameters()]
    before = {n: p.detach().clone() for n, p in system.model.named_parameters()}
    opt = torch.optim.AdamW(system.model.parameters(), lr=1e-2, weight_decay=0.1)
    evaluators = Evaluators(recipe, system)
    examples = read_examples(data)
    system.model.eval()
    for step in range(1, steps + 1):
        mgs_step(recipe, system, opt, evaluators, examples, step, movable(names, recipe.mgs.parameters))
    return before, system


def test_zero_gradient_tensors_stay_bit_identical(tmp_path, groups_file, mle_model):
    """Layer 0's attention is taken out of the loss (attn_out = 0, kept there by leaving it out of
    mgs.parameters), so its query/key/value get zero gradient like the pooler under the seq2seq
    loss: after MGS steps, with weight decay on, all of them are bit-identical; the rest moved."""
    others = ["embeddings.*", "layers.0.[qkv]*", "layers.0.attn_norm.*", "layers.0.ffn*", "layers.1.*", "pooler.*",
              "mlm_*"]

    def cut_attention(model):
        with torch.no_grad():
            model.layers[0].attn_out.weight.zero_()
            model.layers[0].attn_out.bias.zero_()

    system = GenerationSystem.from_pretrained(mle_model, 48)
    cut_attention(system.model)
    _, grads = system.mle_gradient(read_examples(groups_file))
    names = [n for n, _ in system.model.named_parameters()]
    zero = {n for n, g in zip(names, grads) if not g.any()}
    assert {"pooler.weight", "pooler.bias"} | {f"layers.0.{m}.{k}" for m in ("query", "key", "value")
                                               for k in ("weight", "bias")} <= zero
    assert "layers.0.attn_out.weight" not in zero                      # left alone only by the patterns
    before, system = _mgs_steps(mle_model, groups_file, tmp_path, others, prepare=cut_attention)
    after = dict(system.model.named_parameters())
    for n in zero | {"layers.0.attn_out.weight", "layers.0.attn_out.bias"}:
        assert torch.equal(after[n], before[n]), n
    moved = [n for n in names if not torch.equal(after[n], before[n])]
    assert len(moved) == len(names) - len(zero | {"layers.0.attn_out.weight", "layers.0.attn_out.bias"})


def test_retrieval_vectors_do_not_drift(tmp_path, groups_file, mle_model):
    """MGS may change the pooler and the LM head; the pooler's gradient is zero under the seq2seq
    loss, so the encoder vectors stay exactly what they were while the head moves."""
    from components.simbert import SimBERT
    texts = [t for group in read_examples(groups_file)[:4] for t in group.source]
    start = SimBERT.from_pretrained(mle_model).encode(texts)
    before, system = _mgs_steps(mle_model, groups_file, tmp_path, ["pooler.*", "mlm_*"])
    after = dict(system.model.named_parameters())
    assert torch.equal(after["pooler.weight"], before["pooler.weight"])
    assert not torch.equal(after["mlm_transform.weight"], before["mlm_transform.weight"])
    assert (SimBERT(system.model, system.tokenizer).encode(texts) == start).all()


def test_cli_bad_recipe_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: x\nsteps: 0\ndata: {train: t.jsonl}\n")
    assert main(["mgs", str(bad)]) == 2
    assert "steps" in capsys.readouterr().err


def test_run_in_process_logs_and_writes_the_best_model(tmp_path, groups_file, mle_model):
    import mlflow

    recipe = _recipe(mle_model, groups_file, tmp_path)
    result = run_mgs(recipe, progress=False)
    assert [h["step"] for h in result.history] == [0, 1, 2, 3]
    for h in result.history[1:]:
        assert 0.0 <= h["cost"] <= 1.0 and h["mle_loss"] > 0
        assert 0.0 <= h["weight_entropy"] <= torch.log(torch.tensor(4.0)).item() + 1e-9
    assert result.dev_best >= result.dev_start
    reloaded = GenerationSystem.from_pretrained(result.model_dir)
    assert reloaded.task == "simbert"
    best = reloaded.evaluate(read_examples(groups_file), "bleu", recipe.decoding)
    assert best == pytest.approx(result.dev_best, abs=1e-9)           # the written model is the best one
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert len(mlflow.MlflowClient().get_metric_history(result.mlflow_run_id, "cost")) == 3
    assert "dev_bleu_start" in run.data.metrics and "weight_entropy" in run.data.metrics


def test_actors_evaluate_exactly_like_the_driver(ray_session, tmp_path, groups_file, mle_model):
    """Candidates travel as seeds: 2 actors, each holding the model once, return the costs and
    log-densities of an in-process evaluation; the driver's model is left at θ."""
    from components.mgs import draw_candidates, noise_scales

    recipe = _recipe(mle_model, groups_file, tmp_path, mgs__noise_scale=50.0, mgs__num_candidates=5,
                     parallel__num_actors=2)
    system = GenerationSystem.from_pretrained(mle_model, 48)
    examples = read_examples(groups_file)
    params = list(system.model.parameters())
    _, grads = system.mle_gradient(examples)
    sigmas = noise_scales(grads, recipe.mgs.noise_scale)
    cands = draw_candidates(recipe.mgs, 3)
    theta = [p.detach().clone() for p in params]
    remote = Evaluators(recipe, system)
    try:
        parallel = remote.evaluate(params, grads, sigmas, cands, examples)
        pids = ray_session.get([a.pid.remote() for a in remote.actors])
    finally:
        remote.close()
    local = CandidateWorker(system=system).evaluate(theta, grads, sigmas, cands, examples, recipe.metric,
                                                   recipe.decoding, recipe.mgs.mixture, recipe.mgs.density)
    assert len(set(pids)) == 2
    assert [c for c, _ in parallel] == pytest.approx([c for c, _ in local], abs=1e-9)
    assert [q for _, q in parallel] == pytest.approx([q for _, q in local], rel=1e-9)
    assert len({c for c, _ in local}) > 1                              # the candidates really differ
    for p, t in zip(params, theta):
        assert torch.equal(p, t)


@pytest.mark.slow
def test_mgs_raises_dev_bleu_over_mle_start_with_noise_only_ablation(ray_session, tmp_path, groups_file, mle_model):
    curves = {}
    for label, mixture in (("mgs", 0.5), ("noise-only", 0.0)):
        recipe = _recipe(mle_model, groups_file, tmp_path / label, steps=30, eval_every=5, mgs__mixture=mixture,
                         parallel__num_actors=2, optim__lr=2e-3)
        result = run_mgs(recipe, progress=False)
        curves[label] = [(h["step"], h["dev_bleu"]) for h in result.history if "dev_bleu" in h]
    print("dev BLEU by step:", json.dumps(curves))
    start = curves["mgs"][0][1]
    assert max(b for _, b in curves["mgs"]) > start + 0.02


def test_runs_on_a_dialogue_model(tmp_path, make_model, vocab_file):
    """The causal dialogue LM: history -> reply, the MLE gradient of the reply's tokens, F1 cost."""
    model = make_model(eos_token_id=3)
    model.save_pretrained(tmp_path / "dialog", metadata={"vocab_file": str(vocab_file), "task": "dialog"})
    dialogues = [{"turns": [a, b, c]} for a, b, c in GROUPS]
    data = tmp_path / "dialogues.jsonl"
    data.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues), encoding="utf-8")
    system = GenerationSystem.from_pretrained(tmp_path / "dialog", 48)
    assert system.causal
    loss, grads = system.mle_gradient(read_examples(data))
    assert loss > 0 and any(float(g.abs().sum()) > 0 for g in grads)
    recipe = _recipe(tmp_path / "dialog", data, tmp_path, metric="f1", steps=2, eval_every=2)
    result = run_mgs(recipe, progress=False)
    assert [h["step"] for h in result.history] == [0, 1, 2]
    assert GenerationSystem.from_pretrained(result.model_dir).task == "dialog"
