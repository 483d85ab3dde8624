"""``python -m router_training``: fit -> evaluate --json, calibrate, errors, --help.

The encoder is replaced by the fake one (no MiniLM in unit tests)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from coe_router.routing import trained
from coe_router.routing.artifact import RouterArtifact
from router_training import cli, embed
from router_training.data import write_jsonl
from tests.support import ROOT
from tests.unit.test_routing_support import FakeEncoder, catalog, synthetic


@pytest.fixture
def fake_encoder(monkeypatch: pytest.MonkeyPatch) -> FakeEncoder:
    enc = FakeEncoder()

    def _encoder(spec: str, long_text: str) -> tuple[FakeEncoder, dict[str, Any]]:
        return enc, {"spec": spec, "long_text": long_text, "dim": enc.dim, "name": "fake"}

    monkeypatch.setattr(embed, "load_encoder", _encoder)
    monkeypatch.setattr(trained, "encoder_for", lambda spec, override=None: enc)
    return enc


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    write_jsonl(tmp_path / "train.jsonl", synthetic(seed=0))
    write_jsonl(tmp_path / "test.jsonl", synthetic(n_per=8, seed=1))
    cat = catalog().model_dump(mode="json", exclude_none=True)
    cat["keywords"] = {"code": ["python"], "math": ["integral"]}
    (tmp_path / "catalog.yaml").write_text(yaml.safe_dump(cat))
    return {
        "train": tmp_path / "train.jsonl",
        "test": tmp_path / "test.jsonl",
        "catalog": tmp_path / "catalog.yaml",
        "dir": tmp_path,
    }


def last_json(out: str) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return parsed


def fit(files: dict[str, Path]) -> Path:
    """``fit`` on the training file into ``DIR/art``; the artifact's directory."""
    art = files["dir"] / "art"
    assert cli.main(["fit", str(files["train"]), "-o", str(art)]) == 0
    return art


def with_router(command: str, data: Path, files: dict[str, Path], *extra: str) -> int:
    """``COMMAND DATA --router DIR/art --catalog CATALOG EXTRA...``; its exit code."""
    router = ["--router", str(files["dir"] / "art"), "--catalog", str(files["catalog"])]
    return cli.main([command, str(data), *router, *extra])


def test_fit_then_evaluate_json(
    files: dict[str, Path], fake_encoder: FakeEncoder, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = RouterArtifact.load(fit(files)).manifest
    assert manifest["labels"] == ["code", "general", "math", "writing"]
    capsys.readouterr()
    out = ["--out", str(files["dir"] / "ev")]
    assert with_router("evaluate", files["test"], files, "--json", "--quiet", *out) == 0
    report = last_json(capsys.readouterr().out)
    assert report["n"] == 32
    assert report["accuracy"] > 0.8
    assert set(report["per_category"]) >= {"code", "math", "writing", "general"}
    assert report["latency_ms"]["p50"] > 0
    assert (files["dir"] / "ev" / "confusion.png").stat().st_size > 1000


def test_evaluate_without_router_uses_the_gateways(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["evaluate", str(files["test"]), "--catalog", str(files["catalog"]), "--json", "--quiet"]
    )
    assert code == 0
    report = last_json(capsys.readouterr().out)
    assert report["strategy"] == "keyword"
    # Keywords cover two of the synthetic words only: far from perfect, but not zero.
    assert 0.2 < report["accuracy"] < 1.0


def test_quality_cost_table_with_per_example_scores(
    files: dict[str, Path], fake_encoder: FakeEncoder, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = synthetic(n_per=5, seed=2)
    for r in rows:  # each expert is perfect on its own category only
        r.scores = {
            e: float(
                e
                == {"code": "coder", "math": "mathy", "writing": "writer"}.get(
                    r.category, "general"
                )
            )
            for e in ("general", "coder", "mathy", "writer")
        }
    write_jsonl(files["dir"] / "scored.jsonl", rows)
    fit(files)
    capsys.readouterr()
    assert with_router("evaluate", files["dir"] / "scored.jsonl", files, "--json", "--quiet") == 0
    table = {r["system"]: r for r in last_json(capsys.readouterr().out)["quality_vs_cost"]}
    assert table["oracle"]["quality"] == 1.0
    assert table["routed"]["quality"] > table["general"]["quality"] == 0.25


def test_calibrate_writes_offsets_that_hit_shares(
    files: dict[str, Path], fake_encoder: FakeEncoder, capsys: pytest.CaptureFixture[str]
) -> None:
    art = fit(files)
    capsys.readouterr()
    shares = ["--shares", "coder=0.4,general=0.2,mathy=0.2,writer=0.2", "--write"]
    assert with_router("calibrate", files["train"], files, *shares) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shares"]["coder"] == pytest.approx(0.4, abs=0.02)
    assert "category_bias" in RouterArtifact.load(art).manifest["thresholds"]


def test_bad_data_exits_2_naming_the_line(
    files: dict[str, Path], fake_encoder: FakeEncoder, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = files["dir"] / "bad.jsonl"
    bad.write_text('{"prompt": "a", "category": "b"}\n{"prompt": 3, "category": "b"}\n')
    assert cli.main(["fit", str(bad), "-o", str(files["dir"] / "x")]) == 2
    assert "bad.jsonl:2: 'prompt' must be a non-empty string" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", ["fit", "evaluate", "calibrate", "profile", "build-default", "export-data"]
)
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert "usage: python -m router_training " + command in capsys.readouterr().out


def test_fit_adds_the_lexical_block_with_the_static_encoder(files: dict[str, Path]) -> None:
    # The real static encoder (torch-free, in the repo): fit gets build-default's block.
    static = str(ROOT / "deploy" / "routers" / "encoders" / "minilm-static")
    for extra, block in (([], True), (["--no-lexical"], False)):
        out = files["dir"] / f"art{len(extra)}"
        args = ["fit", str(files["train"]), "-o", str(out), "--encoder", static, *extra]
        assert cli.main(args) == 0
        art = RouterArtifact.load(out)
        assert (art.lexical is not None) == block
        assert ((out / "lexical.npz").exists()) == block


def test_fit_takes_build_defaults_prior_weights_and_language_offset(
    files: dict[str, Path], fake_encoder: FakeEncoder
) -> None:
    out = files["dir"] / "art"
    args = ["fit", str(files["train"]), "-o", str(out), "--traffic-prior-source", "src-code"]
    args += ["--prior-strength", "0.25", "--other-language-strength", "1"]
    args += ["--source-weight", "src-code=3", "--source-weight", "src-math=0.5"]
    assert cli.main(args) == 0
    art = RouterArtifact.load(out)
    fit_block = art.manifest["fit"]
    assert fit_block["source_weights"] == {"src-code": 3.0, "src-math": 0.5}
    assert fit_block["traffic_prior"]["source"] == "src-code"
    assert fit_block["traffic_prior"]["strength"] == 0.25
    assert art.language_offset is not None
    prior = fit_block["traffic_prior"]["prior"]
    # (1 - 0.25) x log prior, per label: code is the source's own category, so it leads.
    expected = [0.75 * math.log(prior[c]) for c in art.labels]
    assert art.language_offset.tolist() == pytest.approx(expected, abs=1e-3)
    assert int(np.argmax(art.language_offset)) == art.labels.index("code")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--other-language-strength", "1"], "needs --traffic-prior-source"),
        (["--source-weight", "src-code"], "expected SOURCE=W"),
        (["--source-weight", "src-code=-1"], "expected SOURCE=W"),
        (["--source-weight", "src-code=nan"], "expected SOURCE=W"),
        (["--source-weight", "elsewhere=2"], "no example has source 'elsewhere'"),
        (["--traffic-prior-source", "elsewhere"], "no example has source 'elsewhere'"),
    ],
)
def test_fit_refuses_knobs_that_cannot_apply(
    files: dict[str, Path],
    fake_encoder: FakeEncoder,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = files["dir"] / "art"
    assert cli.main(["fit", str(files["train"]), "-o", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing half-written
