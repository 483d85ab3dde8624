"""The cascade: a second reader (ONNX classifier) asked only when the fast router is unsure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coe_router.errors import ConfigError
from coe_router.routing.category import CategoryRouter
from coe_router.routing.second_reader import (
    CONFIG,
    MODEL,
    SECOND_READER_FORMAT,
    TOKENIZER,
    file_sha256,
    load_second_reader,
    window_ids,
)
from coe_router.routing.static_encoder import CHAR_WINDOW, load_tokenizer
from tests.unit.test_routing_support import FakeEncoder, catalog, fitted, user

ROOT = Path(__file__).resolve().parents[2]
MINILM_TOKENIZER = ROOT / "deploy" / "routers" / "encoders" / "minilm-static" / TOKENIZER
SHIPPED = ROOT / "deploy" / "routers" / "second-reader"
#: The fake artifact's labels (test_routing_support.synthetic, sorted).
LABELS = ["code", "general", "math", "writing"]


def tiny_reader(path: Path, votes: dict[str, str], labels: list[str] = LABELS) -> Path:
    """A second reader whose logits are the sum over tokens of a table: each word in
    ``votes`` adds 5 to its label's logit (an ONNX graph: Gather, mask, ReduceSum)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    tokenizer = load_tokenizer(MINILM_TOKENIZER)
    table = np.zeros((tokenizer.get_vocab_size(), len(labels)), dtype=np.float32)
    for word, label in votes.items():
        for piece in tokenizer.encode(word, add_special_tokens=False).ids:
            table[piece, labels.index(label)] += 5.0
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["rows"]),
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
            helper.make_node("Mul", ["rows", "mask3"], ["kept"]),
            helper.make_node("ReduceSum", ["kept", "axis1"], ["logits"], keepdims=0),
        ],
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", len(labels)])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / MODEL))
    shutil.copy(MINILM_TOKENIZER, path / TOKENIZER)
    config = {
        "format": SECOND_READER_FORMAT,
        "labels": labels,
        "max_tokens": 16,
        "blend_weight": 2.0,
        "escalate_below": 0.8,
        "sha256": file_sha256(path / MODEL),
    }
    (path / CONFIG).write_text(json.dumps(config))
    return path


def router(**options: object) -> CategoryRouter:
    enc = FakeEncoder()
    opts = {"_artifact": fitted(enc), "encoder": enc, "threshold": 0.0, **options}
    return CategoryRouter(catalog(), opts)


async def test_an_unsure_turn_is_read_again_and_the_second_reading_can_win(
    tmp_path: Path,
) -> None:
    reader = tiny_reader(tmp_path / "r", {"poem": "writing"})
    fast = await router().route(user("python poem"))  # one code word, one writing word
    assert fast.confidence < 0.8
    d = await router(second_reader=str(reader)).route(user("python poem"))
    assert d.category == "writing"
    assert d.confidence > fast.confidence
    assert "read again" in (d.reason or "")


async def test_a_confident_turn_is_not_read_again(tmp_path: Path) -> None:
    words = ("python", "function", "bug", "loop")
    reader = tiny_reader(tmp_path / "r", dict.fromkeys(words, "writing"))
    prompt = user("my python function has a bug in the loop")
    alone = await router().route(prompt)
    assert alone.confidence > 0.5
    # Asked only below 0.5: this turn is not asked, so the reader's vote cannot count.
    d = await router(second_reader=str(reader), escalate_below=0.5).route(prompt)
    assert (d.category, d.confidence) == (alone.category, alone.confidence)
    assert "read again" not in (d.reason or "")
    # Always asked: the same turn now follows the reader.
    d = await router(second_reader=str(reader), escalate_below=1.0).route(prompt)
    assert d.category == "writing"


async def test_the_blend_only_moves_the_latest_turn_and_sums_to_one(tmp_path: Path) -> None:
    reader = tiny_reader(tmp_path / "r", {"sonnet": "writing"})
    r = router(second_reader=str(reader), escalate_below=1.0)
    d = await r.route(user("python poem"))  # no word the reader knows: uniform logits
    alone = await router().route(user("python poem"))
    assert d.category == alone.category
    # A uniform second reading, weighted 2, leaves the fast probabilities as they were.
    assert d.confidence == pytest.approx(alone.confidence, abs=1e-3)


def test_a_reader_for_other_labels_or_a_changed_model_is_refused(tmp_path: Path) -> None:
    other = tiny_reader(tmp_path / "other", {}, labels=["code", "general", "math", "law"])
    with pytest.raises(ConfigError, match="labels"):
        router(second_reader=str(other))
    changed = tiny_reader(tmp_path / "changed", {})
    (changed / MODEL).write_bytes((changed / MODEL).read_bytes() + b"\0")
    with pytest.raises(ConfigError, match="sha256"):
        router(second_reader=str(changed))
    with pytest.raises(ConfigError, match="needs a second_reader"):
        router(escalate_below=0.5)
    with pytest.raises(ConfigError, match="does not exist"):
        router(second_reader=str(tmp_path / "nowhere"))


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=3 * CHAR_WINDOW), max_tokens=st.integers(2, 64))
def test_a_prompt_becomes_at_most_max_tokens_ids_framed_by_cls_and_sep(
    text: str, max_tokens: int
) -> None:
    tokenizer = load_tokenizer(MINILM_TOKENIZER)
    ids = window_ids(tokenizer, text, max_tokens)
    assert 2 <= len(ids) <= max_tokens
    assert (ids[0], ids[-1]) == (tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]"))


def test_the_bookends_are_the_tokenizers_own_not_bert_names(tmp_path: Path) -> None:
    """A reader fine-tuned from an MPNet/RoBERTa-style model frames its input with ``<s>``
    and ``</s>``, which its tokenizer's template names: no ``[CLS]`` is looked up."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "write": 4, "a": 5, "poem": 6}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    tok.save(str(tmp_path / TOKENIZER))
    tokenizer = load_tokenizer(tmp_path / TOKENIZER)
    assert window_ids(tokenizer, "write a poem", 128) == [0, 4, 5, 6, 2]
    assert window_ids(tokenizer, "write a poem", 4) == [0, 4, 6, 2]


def test_a_long_prompt_is_read_by_its_two_ends() -> None:
    tokenizer = load_tokenizer(MINILM_TOKENIZER)
    head, tail = "please write a poem " * 60, " and then fix this python bug" * 60
    long = head + "filler words in the middle " * 40_000 + tail
    assert window_ids(tokenizer, long, 128) == window_ids(
        tokenizer, f"{long[:CHAR_WINDOW]} {long[-CHAR_WINDOW:]}", 128
    )


@pytest.mark.skipif(not (SHIPPED / MODEL).exists(), reason="no shipped second reader")
def test_the_shipped_reader_reads_the_task_not_the_topic() -> None:
    reader = load_second_reader(SHIPPED)
    prompts = {
        "write a short story about a nurse who works night shifts": "writing",
        "python code for a t-test on two lists of blood pressure readings": "code",
        "Solve for x: 3x + 7 = 22": "math",
        "Escribe un poema sobre el mar": "writing",
    }
    logits = reader.encode(list(prompts))
    got = [reader.labels[int(i)] for i in logits.argmax(1)]
    assert got == list(prompts.values())


@pytest.mark.skipif(not (SHIPPED / MODEL).exists(), reason="no shipped second reader")
def test_the_shipped_reader_is_quantized_per_output_channel() -> None:
    """One int8 scale per output channel of each weight, not one per matrix: per tensor cost
    the reader 1.5 points on real prompts (docs/routing.md, "Quantization per channel")."""
    import onnx

    graph = onnx.load(str(SHIPPED / MODEL), load_external_data=False).graph
    # The matrices the layers multiply by; the embedding tables (Gather) keep one scale.
    scales = [t for t in graph.initializer if "MatMul" in t.name and t.name.endswith("_scale")]
    assert scales
    assert all(len(t.dims) == 1 and t.dims[0] > 1 for t in scales)
