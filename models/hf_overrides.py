"""vLLM's `hf_overrides`: change fields of the checkpoint's Hugging Face config before the model is built.

The usual use is a longer context through rope scaling, without editing config.json:

    LLM("Qwen/Qwen3-0.6B", hf_overrides={"rope_parameters": {"rope_type": "yarn", "factor": 4.0,
                                                             "original_max_position_embeddings": 32768}})
    python -m engine.serve Qwen/Qwen3-0.6B --hf-overrides '{"rope_parameters": {...}}'

A dict value given for a field that holds a dict is merged into it (so `rope_theta` stays unless it
is given); any other value replaces the field. `rope_scaling`, the older name, is merged into
`rope_parameters` (its "type" read as "rope_type"; a new rope type keeps only rope_theta and
partial_rotary_factor of the old; None: no scaling), and so are top-level `rope_theta` and
`partial_rotary_factor`, which transformers 5 reads from there. A callable takes the config and returns
it, changed (in-process engines only: the server's engine process gets the config pickled).
"""
from __future__ import annotations

from typing import Any, Callable

HfOverrides = dict[str, Any] | Callable[[Any], Any]

_ROPE_FIELDS = ("rope_parameters", "rope_scaling")
_ROPE_KEYS = ("rope_theta", "partial_rotary_factor")    # kept across a change of rope type


def check_hf_overrides(overrides: Any) -> None:
    """Raises ValueError unless `overrides` is None, a dict with string keys, or a callable."""
    if overrides is None or callable(overrides):
        return
    if not isinstance(overrides, dict) or not all(isinstance(key, str) for key in overrides):
        raise ValueError(f"hf_overrides must be a dict of config fields (a JSON object on the command line) "
                         f"or a function of the config, got {overrides!r}")


def apply_hf_overrides(hf_config, overrides: HfOverrides | None):
    """Returns `hf_config` with `overrides` applied (the same object, changed in place, for a dict)."""
    check_hf_overrides(overrides)
    if overrides is None:
        return hf_config
    if callable(overrides):
        changed = overrides(hf_config)
        if changed is None:
            raise ValueError("the hf_overrides function returned None; it must return the config it was given "
                             "(changed), e.g. `def f(config): config.max_position_embeddings = 65536; return config`")
        return changed
    for key, value in overrides.items():
        if key in _ROPE_FIELDS:
            _set_rope(hf_config, value)
        elif key in _ROPE_KEYS and _rope_dict(hf_config):
            _set_rope(hf_config, {key: value})        # transformers >= 5 reads these from rope_parameters
            setattr(hf_config, key, value)
        else:
            current = getattr(hf_config, key, None)
            setattr(hf_config, key, {**current, **value} if isinstance(value, dict) and isinstance(current, dict)
                    else value)
    return hf_config


def _rope_dict(hf_config) -> dict:
    return dict(getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {})


def _set_rope(hf_config, value: Any) -> None:
    """Merge `value` into the config's rope settings. A new rope_type starts afresh (only rope_theta and
    partial_rotary_factor are kept); None means no scaling (the default rope)."""
    if value is None:
        value = {"rope_type": "default"}
    if not isinstance(value, dict):
        raise ValueError(f"hf_overrides['rope_parameters'] must be a dict such as {{'rope_type': 'yarn', "
                         f"'factor': 4.0, 'original_max_position_embeddings': 32768}}, got {value!r}")
    current, value = _rope_dict(hf_config), dict(value)
    if "type" in current:
        current.setdefault("rope_type", current.pop("type"))
    if "type" in value:
        value.setdefault("rope_type", value.pop("type"))
    if current.get("rope_theta") is None and getattr(hf_config, "rope_theta", None) is not None:
        current["rope_theta"] = hf_config.rope_theta
    if "rope_type" in value and value["rope_type"] != current.get("rope_type", "default"):
        current = {key: current[key] for key in _ROPE_KEYS if current.get(key) is not None}
    merged = {**current, **value}
    if hasattr(hf_config, "rope_parameters") or not hasattr(hf_config, "rope_scaling"):
        hf_config.rope_parameters = merged
    else:
        hf_config.rope_scaling = merged
