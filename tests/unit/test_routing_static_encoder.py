"""The torch-free serving path: the shipped static encoder and the default router on it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coe_router.errors import ConfigError
from coe_router.routing.artifact import RouterArtifact
from coe_router.routing.category import CategoryRouter
from coe_router.routing.encoder import STATIC_ENCODER, describe_encoder, encoder_for
from coe_router.routing.static_encoder import (
    CHAR_WINDOW,
    TABLE,
    StaticEncoder,
    is_static_encoder,
    table_sha256,
)
from router_training.data import Example
from router_training.fit import FitConfig, fit
from tests.unit.test_routing_support import catalog, user

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / STATIC_ENCODER

PROMPTS = [
    "fix this python function that throws a KeyError",
    "write a sonnet about the sea",
    "what is the integral of x squared?",
    "héllo wörld — 你好 世界 🙂",
]


@pytest.fixture(scope="module")
def static() -> StaticEncoder:
    return StaticEncoder(SHIPPED)


def test_embeddings_are_unit_norm_and_deterministic(static: StaticEncoder) -> None:
    a = static.encode(PROMPTS)
    b = static.encode(list(reversed(PROMPTS)))[::-1]
    fresh = StaticEncoder(SHIPPED).encode(PROMPTS[:1])
    assert a.shape == (len(PROMPTS), static.dim)
    assert a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # The same text gives the same row whatever else is in the batch, and in a new instance.
    assert np.array_equal(a, b)
    assert np.array_equal(a[:1], fresh)


def test_similar_requests_are_closer_than_unrelated_ones(static: StaticEncoder) -> None:
    code, code2, poem = static.encode(
        ["my python script raises an exception", "debug this javascript function", "a love poem"]
    )
    assert float(code @ code2) > float(code @ poem)


def test_long_text_reads_head_and_tail_only(static: StaticEncoder) -> None:
    head = "the quarterly report covers revenue and costs. " * 40  # > one window
    end = "row 17: widgets sold 300 units in march. " * 30  # > one window
    question = " Now write a python function that parses this table."
    a, b = static.encode(
        [head + "lorem ipsum " * 2000 + end, head + "other filler words " * 3000 + end]
    )
    assert len(head) > CHAR_WINDOW
    assert len(end) > CHAR_WINDOW
    # The middle of a long text is never read: two texts differing only there agree.
    assert np.allclose(a, b, atol=1e-6)
    paste = head + "lorem ipsum " * 2000
    full, only_paste, q = static.encode([paste + question, paste, question])
    # The question at the end is read: the full text is closer to it than the paste alone
    # (only a little: the head window weighs as much as the tail, see the module doc).
    assert float(full @ q) > float(only_paste @ q)
    assert not np.allclose(full, only_paste, atol=1e-3)


def test_a_table_that_is_not_the_trained_one_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "enc"
    shutil.copytree(SHIPPED, copy)
    sha = table_sha256(copy)
    assert StaticEncoder(copy, sha256=sha).dim > 0
    with np.load(copy / TABLE) as npz:
        rows, scales = npz["rows"].copy(), npz["scales"]
    rows[1000, 0] ^= 1
    np.savez_compressed(copy / TABLE, rows=rows, scales=scales)
    with pytest.raises(ConfigError, match="sha256"):
        StaticEncoder(copy, sha256=sha)


def test_a_directory_without_the_format_tag_is_not_a_static_encoder(tmp_path: Path) -> None:
    (tmp_path / "encoder.json").write_text(json.dumps({"format": "something-else"}))
    assert not is_static_encoder(tmp_path)
    with pytest.raises(ConfigError, match="static encoder"):
        StaticEncoder(tmp_path)


def test_unknown_encoder_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="kind 'onnx' is unknown"):
        encoder_for({"kind": "onnx", "spec": "x", "dim": 3})


def _rows() -> list[Example]:
    words = {
        "code": "python function bug compile stack trace refactor the class method",
        "math": "solve the integral equation derivative of the polynomial prime number",
        "writing": "write a poem essay story about love rhyme a cover letter paragraph",
    }
    rows = []
    for category, text in words.items():
        ws = text.split()
        for i in range(30):
            picked = [ws[(i + k * 3) % len(ws)] for k in range(5)]
            rows.append(Example(" ".join(picked), category, source=f"s-{category}"))
    return rows


async def test_artifact_names_its_encoder_and_round_trips(tmp_path: Path) -> None:
    encoder, info = describe_encoder(STATIC_ENCODER)
    assert info["kind"] == "static"
    assert info["sha256"] == table_sha256(SHIPPED)
    rows = _rows()
    art = fit(rows, encoder.encode([r.prompt for r in rows]), info, FitConfig(fit_skills=False))
    art.save(tmp_path / "r")
    back = RouterArtifact.load(tmp_path / "r")
    assert back.encoder == {**info}
    # Serving rebuilds the encoder from the manifest alone (no encoder injected).
    router = CategoryRouter(catalog(), {"artifact": str(tmp_path / "r"), "threshold": 0.0})
    assert isinstance(router.core.encoder, StaticEncoder)
    d = await router.route(user("please fix the bug in my python function"))
    assert d.category == "code"
    assert d.expert == "coder"


_NO_TORCH = """
import asyncio, sys
from pathlib import Path
from coe_router.catalog import load_catalog
from coe_router.routing import build_router
from coe_router.protocol import ChatMessage
import coe_router.gateway.app  # the gateway's own imports count too
cat = load_catalog(Path("deploy/local.yaml"))
router = build_router(cat.virtual_model("coe"), cat)
d = asyncio.run(router.route([ChatMessage(role="user", content="sort a list in python")]))
heavy = sorted(m for m in ("torch", "sentence_transformers", "transformers", "sklearn")
               if m in sys.modules)
print(d.category, d.expert, ",".join(heavy) or "-")
"""


def test_default_router_routes_without_torch() -> None:
    """The embedded default `coe` decides with numpy + tokenizers: no torch,
    sentence-transformers, transformers or scikit-learn in the process."""
    done = subprocess.run(
        [sys.executable, "-c", _NO_TORCH],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    category, expert, heavy = done.stdout.split()
    assert heavy == "-"
    assert category == "code"
    assert expert == "code"


def test_shipped_default_router_pins_the_shipped_encoder() -> None:
    art = RouterArtifact.load(ROOT / "deploy" / "routers" / "default")
    assert art.encoder["kind"] == "static"
    assert art.encoder["spec"] == STATIC_ENCODER
    assert art.encoder["sha256"] == table_sha256(SHIPPED)
    assert art.arrays["category_coef"].shape[1] == StaticEncoder(SHIPPED).dim
    size = sum(f.stat().st_size for f in SHIPPED.iterdir())
    assert size <= 10 * 1024 * 1024, f"the shipped encoder grew to {size} bytes"


def test_encoder_option_switches_to_the_kind_of_the_model_it_names(tmp_path: Path) -> None:
    """A static encoder named by the catalog replaces an artifact's MiniLM (same dim)."""
    _enc, info = describe_encoder(STATIC_ENCODER)
    minilm_info = {"kind": "sentence-transformers", "spec": "package:x/y", "dim": info["dim"]}
    rows = _rows()
    art = fit(rows, _enc.encode([r.prompt for r in rows]), minilm_info, FitConfig(fit_skills=False))
    art.save(tmp_path / "r")
    router = CategoryRouter(catalog(), {"artifact": str(tmp_path / "r"), "encoder": STATIC_ENCODER})
    assert isinstance(router.core.encoder, StaticEncoder)
