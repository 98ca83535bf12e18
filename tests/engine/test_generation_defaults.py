"""The model's generation_config.json as default sampling parameters (vLLM's --generation-config):
what engine.generation_defaults reads, the modes, EngineConfig / CLI validation, and the offline API."""
import json
import logging
import os

import pytest
from transformers import GenerationConfig

from engine import LLM, RequestOutputKind, SamplingParams
from engine.config import EngineConfig
from engine.generation_defaults import SAMPLING_FIELDS, default_sampling_fields, load_generation_config
from tests.engine.checkpoints import write_checkpoint

MODEL_DEFAULTS = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 7}


def add_generation_config(path, **fields) -> None:
    """Set sampling fields in the folder's generation_config.json (its EOS ids stay)."""
    config = GenerationConfig.from_pretrained(path)
    config.update(do_sample=True, **fields)
    config.save_pretrained(path)


@pytest.fixture(scope="module")
def model_with_defaults(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("tiny-qwen3-gen-defaults")
    write_checkpoint(path, "qwen3", seed=2)
    add_generation_config(path, temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=7)
    return str(path)


@pytest.fixture(scope="module")
def llm(model_with_defaults):
    return LLM(model_with_defaults, device="cpu", dtype="float32", max_model_len=64)


def fields_of(folder: str | None, mode: str = "auto") -> dict:
    """default_sampling_fields as the engine calls it: on the folder's generation config, loaded once."""
    return default_sampling_fields(load_generation_config(folder), mode)


def final_only(**fields) -> SamplingParams:
    """SamplingParams(**fields) as LLM.generate submits them: asking for the final output only."""
    return SamplingParams(**fields, output_kind=RequestOutputKind.FINAL_ONLY)


def spy_on_add_request(monkeypatch, engine) -> list[SamplingParams]:
    """The SamplingParams each add_request receives."""
    seen, add = [], engine.add_request

    def recording_add(request_id, prompt, params, *args, **kwargs):
        seen.append(params)
        return add(request_id, prompt, params, *args, **kwargs)

    monkeypatch.setattr(engine, "add_request", recording_add)
    return seen


def test_only_the_sampling_fields_the_file_sets(model_with_defaults):
    fields = fields_of(model_with_defaults)
    assert fields == MODEL_DEFAULTS          # not do_sample, eos_token_id, bos_token_id, ...
    assert GenerationConfig.from_pretrained(model_with_defaults).eos_token_id is not None


def test_values_equal_to_the_class_defaults_are_not_the_models_choice(tmp_path):
    class_defaults = GenerationConfig().to_dict()
    written = {name: class_defaults[name] for name in SAMPLING_FIELDS if class_defaults.get(name) is not None}
    with open(tmp_path / "generation_config.json", "w") as f:
        json.dump({**written, "min_p": 0.05, "repetition_penalty": 1.1, "num_beams": 1}, f)
    assert fields_of(str(tmp_path)) == {"min_p": 0.05, "repetition_penalty": 1.1}


def test_engine_defaults_mode_ignores_the_file(model_with_defaults):
    assert fields_of(model_with_defaults, "vllm") == {}


def test_no_file_or_no_sampling_fields_change_nothing(tmp_path):
    write_checkpoint(tmp_path, "llama")
    with open(tmp_path / "generation_config.json") as f:
        assert "eos_token_id" in json.load(f)                     # transformers wrote EOS / BOS ids only
    assert fields_of(str(tmp_path)) == {}
    os.remove(tmp_path / "generation_config.json")
    assert fields_of(str(tmp_path)) == {}
    assert fields_of(None) == {}                                     # a preset: no folder


def test_a_folder_given_as_the_mode_is_read_instead(model_with_defaults, tmp_path, caplog):
    os.makedirs(tmp_path / "empty")
    assert fields_of(str(tmp_path / "empty"), model_with_defaults) == MODEL_DEFAULTS
    assert fields_of(model_with_defaults, str(tmp_path / "empty")) == {}
    assert "no generation_config.json found" in caplog.text


def test_a_default_the_engine_refuses_fails_at_start_up_naming_the_way_out(tmp_path):
    with open(tmp_path / "generation_config.json", "w") as f:
        json.dump({"repetition_penalty": -1.0}, f)
    with pytest.raises(ValueError, match=r"repetition_penalty must be a finite number greater than zero.*"
                                         r"--generation-config vllm"):
        fields_of(str(tmp_path))


def test_the_engine_reads_the_file_once_for_eos_ids_and_defaults(model_with_defaults, monkeypatch):
    """One read of generation_config.json at start-up serves both the EOS ids and the sampling defaults."""
    reads, load = [], GenerationConfig.from_pretrained

    def counting_load(path, *args, **kwargs):
        reads.append(path)
        return load(path, *args, **kwargs)

    monkeypatch.setattr(GenerationConfig, "from_pretrained", counting_load)
    llm = LLM(model_with_defaults, device="cpu", dtype="float32", max_model_len=64)
    assert reads == [model_with_defaults]
    assert llm.engine.default_sampling_fields == MODEL_DEFAULTS
    eos = load(model_with_defaults).eos_token_id
    assert set(eos if isinstance(eos, list) else [eos]) <= set(llm.engine.eos_token_ids)


def test_llm_default_params_carry_the_models_defaults(llm):
    assert llm.engine.default_sampling_fields == MODEL_DEFAULTS
    assert llm.get_default_sampling_params() == SamplingParams(**MODEL_DEFAULTS)


def test_generate_without_params_uses_the_defaults(llm, monkeypatch):
    seen = spy_on_add_request(monkeypatch, llm.engine)
    outs = llm.generate(["Hello", "abc"], use_tqdm=False)
    assert seen == [final_only(**MODEL_DEFAULTS)] * 2
    for out in outs:
        c = out.outputs[0]
        assert len(c.token_ids) <= 7 and (len(c.token_ids) == 7) == (c.finish_reason == "length")


def test_explicit_params_are_used_as_given(llm, monkeypatch):
    seen = spy_on_add_request(monkeypatch, llm.engine)
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    out = llm.generate("Hello", params, use_tqdm=False)[0].outputs[0]
    assert seen == [final_only(temperature=0, max_tokens=12, ignore_eos=True)]
    assert seen[0].top_k == 0 and seen[0].top_p == 1.0
    assert len(out.token_ids) == 12


def test_engine_defaults_mode_offline(model_with_defaults):
    llm = LLM(model_with_defaults, device="cpu", dtype="float32", max_model_len=64, generation_config="vllm")
    assert llm.engine.default_sampling_fields == {}
    assert llm.get_default_sampling_params() == SamplingParams()


def test_the_overridden_defaults_are_logged_once(model_with_defaults, caplog):
    with caplog.at_level(logging.WARNING, logger="engine.generation_defaults"):
        LLM(model_with_defaults, device="cpu", dtype="float32", max_model_len=64)
    logged = [r.getMessage() for r in caplog.records if "overridden by the model's generation config" in r.getMessage()]
    assert len(logged) == 1
    assert "'temperature': 0.6" in logged[0] and "--generation-config vllm" in logged[0]


@pytest.mark.parametrize("good", ["auto", "vllm", "/models/qwen3", "Qwen/Qwen3-0.6B"])
def test_engine_config_accepts_modes_and_folders(good):
    assert EngineConfig(model="preset:tiny-qwen3", generation_config=good).generation_config == good


@pytest.mark.parametrize("bad", ["", "   ", None, 1])
def test_engine_config_refuses_an_empty_generation_config(bad):
    with pytest.raises(ValueError) as err:
        EngineConfig(model="preset:tiny-qwen3", generation_config=bad)
    assert str(err.value).startswith("generation_config must be 'auto', 'vllm' or a folder holding "
                                     "generation_config.json, got")
    assert EngineConfig(model="preset:tiny-qwen3").generation_config == "auto"


def test_serve_flag_sets_generation_config():
    from engine.serve import build_parser, config_from_args
    parser = build_parser()
    assert config_from_args(parser.parse_args(["--model", "m"])).generation_config == "auto"
    for value in ("vllm", "/models/qwen3"):
        args = parser.parse_args(["--model", "m", "--generation-config", value])
        assert config_from_args(args).generation_config == value
    with pytest.raises(ValueError, match="generation_config"):
        config_from_args(parser.parse_args(["--model", "m", "--generation-config", ""]))
