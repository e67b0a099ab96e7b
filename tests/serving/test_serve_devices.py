"""Device and dtype of the Serve deployments, without Ray: the typed arguments resolve them per
deployment, the deployment classes hand them to the capability classes, and every capability
answers the same with torch's default device set to meta (see tests/components/test_devices.py,
whose conventions these follow) and runs with its model in bfloat16."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest
import torch

from components.index import VectorIndex
from serving.app import AppArgs, cpus_per_replica
from serving.capabilities.attributor import AttributorDeployment
from serving.capabilities.generator import GeneratorDeployment
from serving.capabilities.parser import ParserDeployment
from serving.capabilities.retriever import RetrieverDeployment
from serving.chat import Chatbot
from serving.generator import Generator
from serving.parser import Parser
from serving.retriever import Retriever
from tests.tiny_training import GROUPS


def on_meta(fn):
    torch.set_default_device("meta")
    try:
        return fn()
    finally:
        torch.set_default_device(None)


def test_typed_arguments_resolve_each_deployment(monkeypatch):
    import serving.resources
    monkeypatch.setattr(serving.resources, "cluster_cpus", lambda: (2.0, 2.0))
    args = AppArgs(model="m", parser_model="p", chat_model="c", scaling={
        "dtype": "bfloat16", "per_deployment": {"generator": {"num_gpus": 0.5, "dtype": "float16"},
                                                "parser": {"num_cpus": 0.5, "device": "cpu", "dtype": "float32"}}})
    s = args.scaling
    assert (s.placement("generator").device, s.placement("generator").dtype) == ("cuda", "float16")
    assert (s.placement("retriever").device, s.placement("retriever").dtype) == ("cpu", "bfloat16")
    assert (s.placement("parser").device, s.placement("parser").dtype) == ("cpu", "float32")
    # the parser's own 0.5 first; the three others share 2 - 0.25 - 0.5, rounded down
    assert cpus_per_replica(args) == {"retriever": 0.41, "generator": 0.41, "chat": 0.41, "parser": 0.5}
    with pytest.raises(pydantic.ValidationError, match="device cuda needs num_gpus > 0"):
        AppArgs(model="m", scaling={"per_deployment": {"chat": {"device": "cuda"}}})
    with pytest.raises(pydantic.ValidationError, match="per_deployment.retriever"):
        AppArgs(model="m", scaling={"per_deployment": {"retriever": {"device": "cuda:1"}}})
    with pytest.raises(pydantic.ValidationError):
        AppArgs(model="m", scaling={"dtype": "int8"})


def test_deployment_classes_pass_device_and_dtype(simbert_dir, tiny_model_dir):
    mlm = tiny_model_dir("mlm")
    clf = tiny_model_dir("clf", num_labels=2)
    batching = {"enabled": True, "max_batch_size": 4}
    built = [RetrieverDeployment.func_or_class(str(simbert_dir), None, batching, dtype="bfloat16").model.encoder,
             GeneratorDeployment.func_or_class(str(simbert_dir), batching, dtype="bfloat16").model.simbert,
             AttributorDeployment.func_or_class(str(clf), batching, device="cpu", dtype="bfloat16").attributor,
             ParserDeployment.func_or_class(str(mlm), batching, dtype="bfloat16").model.prober]
    for holder in built:
        assert holder.model.dtype == torch.bfloat16 and holder.model.device == torch.device("cpu")


def test_retriever_and_generator(simbert_dir, tmp_path):
    texts = [g[0] for g in GROUPS]
    want = Retriever(simbert_dir).embed(texts)
    r = Retriever(simbert_dir, dtype="bfloat16")
    got = r.embed(texts)
    assert [g["tokens"] for g in got] == [w["tokens"] for w in want]
    # unit vectors: bfloat16 within 0.01 per component (observed 0.002; see the components test)
    assert np.abs(np.array([g["embedding"] for g in got]) - np.array([w["embedding"] for w in want])).max() < 0.01
    assert on_meta(lambda: r.embed(texts)) == got
    vectors = r.encoder.encode(texts)
    index = VectorIndex(vectors.shape[1], r.fingerprint, kind="flat")
    index.add(vectors, [str(i) for i in range(len(texts))], texts)
    index.save(tmp_path / "index")
    r = Retriever(simbert_dir, tmp_path / "index", dtype="bfloat16")
    hits = r.search(texts[:3], [2, 1, 3])
    assert [h[0]["text"] for h in hits] == texts[:3]
    assert on_meta(lambda: r.search(texts[:3], [2, 1, 3])) == hits
    gen = Generator(simbert_dir, dtype="bfloat16")
    items = [{"text": GROUPS[g][0], "n": 4, "k": 2, "decoding": {"max_new_tokens": 8, "seed": g}} for g in range(3)]
    items.append({"text": GROUPS[0][0], "n": 2, "k": 2, "decoding": {"strategy": "beam", "num_beams": 2,
                                                                     "max_new_tokens": 6}})
    answers = gen.similar_many(items)
    assert all(isinstance(a, list) for a in answers)
    assert on_meta(lambda: gen.similar_many(items)) == answers


def test_chatbot_and_parser(tiny_model_dir, tokenizer):
    chat_dir = tiny_model_dir("dialog", termination="nmst", eos_token_id=tokenizer.sep_id)
    bot = Chatbot(chat_dir, max_length=64, dtype="bfloat16")
    request = {"messages": [{"role": "user", "content": "在吗"}, {"role": "assistant", "content": "在的"},
                            {"role": "user", "content": "什么时候发货"}],
               "max_tokens": 6, "seed": 3, "temperature": 0.8, "top_k": 5, "n": 2}
    answer = bot.complete(request)
    assert len(answer["choices"]) == 2
    assert on_meta(lambda: bot.complete(request)) == answer
    assert on_meta(lambda: list(bot.stream(request))) == list(bot.stream(request))
    parser = Parser(tiny_model_dir("mlm"), dtype="bfloat16")
    texts = ["今天天气怎么样", "hello world 我的快递"]
    segmented = parser.segment_many(texts)
    assert on_meta(lambda: parser.segment_many(texts)) == segmented
    items = [{"text": texts[0]}, {"text": "我 的 快递 还 没 到", "dependency": "chu_liu_edmonds"}]
    parsed = parser.parse_many(items)
    assert on_meta(lambda: parser.parse_many(items)) == parsed


def test_the_builder_binds_each_deployment_with_its_resources_device_and_dtype():
    from serving.app import build_app
    app = build_app(AppArgs(model="m", parser_model="p", scaling={
        "num_cpus": 0.5, "dtype": "bfloat16", "per_deployment": {"generator": {"num_gpus": 1}}}))
    bound = {k: v._bound_deployment for k, v in app._bound_deployment.init_kwargs.items()
             if hasattr(v, "_bound_deployment")}
    assert {k: (d.ray_actor_options, d.init_kwargs) for k, d in bound.items()} == {
        "retriever": ({"num_cpus": 0.5}, {"device": "cpu", "dtype": "bfloat16"}),
        "generator": ({"num_cpus": 0.5, "num_gpus": 1.0}, {"device": "cuda", "dtype": "bfloat16"}),
        "parser": ({"num_cpus": 0.5}, {"device": "cpu", "dtype": "bfloat16"})}
