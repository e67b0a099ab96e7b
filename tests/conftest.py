"""Shared fixtures: a small real vocabulary and tiny randomly initialised models (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from components.config import ModelConfig  # noqa: E402
from components.model import Transformer  # noqa: E402
from components.tokenizer import Tokenizer  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Common Chinese characters, ASCII letters/digits/punctuation and a few WordPiece pieces: enough to
# tokenise everyday Chinese and mixed text.
COMMON_CHINESE = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后"
    "小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知"
    "民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新"
    "什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别"
    "处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受"
    "光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃"
    "义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领传近留红治决周保达办运武半候七必"
    "城父强步完革深区即求品士转量空甚众技轻程告江语英基派满式李息写呢识极令黄德收脸钱党倒未持取设始版双历越"
    "吗吧啊呀您号码帐户密码忘记怎么办银行卡如何修改登录手机账号微信支付宝快递退款发货订单客服买卖价格便宜贵"
    "，。？！、；：“”（）《》")
ASCII = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)] + list(",.!?;:'\"()-")
WORDPIECES = ["hello", "world", "bert", "ray", "##s", "##ing", "##ed", "test", "play", "##er", "12", "##34"]


def make_vocab(path: Path) -> Path:
    seen, tokens = set(), []
    for tok in SPECIALS + list(COMMON_CHINESE) + ASCII + WORDPIECES:
        if tok not in seen:
            seen.add(tok)
            tokens.append(tok)
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def tiny_config(vocab_size: int, **overrides) -> ModelConfig:
    kw = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0)
    kw.update(overrides)
    return ModelConfig(**kw)


@pytest.fixture(autouse=True)
def mlflow_store_stays_in_its_test():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: a test that reads its own store with it
    would otherwise send every later run in this process (a tune search's trials) to that store."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow
        mlflow.set_tracking_uri(before)         # None unsets the variable again


@pytest.fixture(scope="session")
def vocab_file(tmp_path_factory) -> Path:
    return make_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt")


@pytest.fixture(scope="session")
def tokenizer(vocab_file) -> Tokenizer:
    return Tokenizer(vocab_file)


@pytest.fixture
def make_model(tokenizer):
    """make_model(**config_overrides) -> a tiny eval-mode Transformer with a fixed seed."""
    def _make(seed: int = 0, **overrides) -> Transformer:
        torch.manual_seed(seed)
        return Transformer(tiny_config(tokenizer.vocab_size, **overrides)).eval()
    return _make


@pytest.fixture
def tiny_model_dir(tmp_path, make_model, vocab_file):
    """make(**overrides) -> path of a saved tiny model directory (config, safetensors, vocab)."""
    def _make(name: str = "model", **overrides) -> Path:
        model = make_model(**overrides)
        out = tmp_path / name
        model.save_pretrained(out, metadata={"vocab_file": str(vocab_file)})
        return out
    return _make


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (Train, Data, Tune and Serve tests share it).
    Workers import this repository's packages (a train function they cannot import makes Ray Train
    retry its worker start-up forever), so PYTHONPATH is set before Ray starts. 3 logical CPUs, on
    machines with 2 cores too: 2 Train workers take one each and Ray Data's tokenization tasks
    still get one. (The user-facing commands are tested as subprocesses with their own defaults.)"""
    import ray
    repo = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=3, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False,
                 runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
        started = True
    yield ray
    if started:
        ray.shutdown()
