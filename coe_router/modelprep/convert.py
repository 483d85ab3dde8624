"""GGUF -> float32 Hugging Face checkpoint (safetensors, tokenizer, chat template).

torch and transformers are imported inside :func:`convert_gguf_to_hf` only.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from coe_router.modelprep.sources import ModelPrepareError


def _drop_attr(obj: object, name: str) -> None:
    # The attribute may live on the instance or only as a class default; either way
    # save_pretrained must see "no quantizer".
    with contextlib.suppress(AttributeError):
        delattr(obj, name)
    if getattr(obj, name, None) is not None:
        setattr(obj, name, None)


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file into a float32 HF checkpoint (safetensors) in ``out_dir``.

    Writes model weights, ``config.json``, ``generation_config.json`` and the tokenizer
    with the GGUF's chat template (vLLM's chat endpoint needs it).
    """
    # Heavy imports here, not at module level: the gateway imports this package.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer: Any = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelPrepareError(f"{gguf_path.name}: the GGUF carries no chat template")
    # `dtype` is the transformers>=4.56 spelling of `torch_dtype` (deprecated in 5.x).
    model: Any = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=filename, dtype=torch.float32
    )
    # Loading from GGUF attaches a GGUF quantizer and a quantization_config even though
    # the weights are now dense float32. save_pretrained refuses to serialize with the
    # quantizer attached, and vLLM refuses a config with quant_method "gguf" but no
    # .gguf file, so both go.
    _drop_attr(model, "hf_quantizer")
    _drop_attr(model.config, "quantization_config")
    non_float = {str(p.dtype) for p in model.parameters() if p.dtype != torch.float32}
    if non_float:
        raise ModelPrepareError(
            f"{gguf_path.name}: weights are still packed after loading ({sorted(non_float)})"
        )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if not (out_dir / "generation_config.json").exists():
        model.generation_config.save_pretrained(out_dir)
    _check_checkpoint(out_dir)


def _check_checkpoint(out_dir: Path) -> None:
    """Fail now, not at vLLM start-up, if the checkpoint is missing what vLLM needs."""
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise ModelPrepareError(f"{out_dir}: config.json still has a quantization_config")
    if not any(out_dir.glob("*.safetensors")):
        raise ModelPrepareError(f"{out_dir}: no safetensors weights were written")
    # transformers 5 writes chat_template.jinja; 4.x puts it in tokenizer_config.json.
    has_template = (out_dir / "chat_template.jinja").exists()
    tok_cfg = out_dir / "tokenizer_config.json"
    if not has_template and tok_cfg.exists():
        has_template = bool(json.loads(tok_cfg.read_text(encoding="utf-8")).get("chat_template"))
    if not has_template:
        raise ModelPrepareError(f"{out_dir}: the chat template was lost while saving")
