"""What a request's fields mean beyond their pydantic types: the checks made before anything reaches the
engine (400s naming the field, the ignored-fields warning), the conversions of logit_bias and vLLM's
structured outputs into engine params, and which usage a stream carries."""
from __future__ import annotations

import logging

from engine.sampling_params import over_max_logprobs
from engine.structured_outputs import StructuredOutputsParams
from server.errors import APIError
from server.protocol import GUIDED_DECODING_FIELDS, ResponseFormat, StreamOptions

logger = logging.getLogger(__name__)


def structured_outputs(req) -> StructuredOutputsParams | None:
    """vLLM's structured_outputs ({"choice": [...]}) or its older guided_choice extra (structured_outputs wins
    where both are set, as in vLLM); another kind or a bad choice list is a 400 naming the field."""
    try:
        if req.structured_outputs is not None:
            if req.guided_choice is not None:
                logger.warning("guided_choice is ignored: the request sets structured_outputs too")
            return StructuredOutputsParams.from_dict(req.structured_outputs)
        return None if req.guided_choice is None else StructuredOutputsParams(choice=req.guided_choice)
    except (ValueError, TypeError) as exc:
        raise APIError(400, str(exc), "structured_outputs" if req.structured_outputs is not None
                       else "guided_choice") from exc


def check_fields(req) -> None:
    """Before anything reaches the engine: a 400 naming the field for what this engine cannot do
    (a response_format other than text, vLLM's grammar-guided extras), for prompt_logprobs above 0
    with stream and for stream_options without stream (vLLM's messages); other unknown fields,
    stream_options' included, are ignored, as vLLM does, with one warning naming them."""
    _check_response_format(req.response_format)
    for name in GUIDED_DECODING_FIELDS:
        if getattr(req, name) is not None:
            raise APIError(400, f"{name} is not supported: it needs structured output (guided decoding), which "
                                f"this server does not support; drop {name}", name)
    if req.prompt_logprobs and req.stream:
        raise APIError(400, "`prompt_logprobs` are not available when `stream=True`.", "prompt_logprobs")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
    ignored = _ignored_fields(req)
    if ignored:
        logger.warning("The following fields were present in the request but ignored: %s", ignored)


def _ignored_fields(req) -> set[str]:
    """The request's unknown fields, and stream_options' unknown keys as "stream_options.<key>"."""
    names = set(req.model_extra or ())
    if req.stream_options is not None and req.stream_options.model_extra:
        names.update(f"stream_options.{key}" for key in req.stream_options.model_extra)
    return names


def stream_usage(options: StreamOptions | None) -> tuple[bool, bool]:
    """(a last, usage-only chunk; usage on every chunk that carries choices) for a stream's options. As
    vLLM's should_include_usage, continuous_usage_stats needs include_usage; an unset include_usage
    follows continuous_usage_stats (vLLM defaults it to true, so `{"continuous_usage_stats": true}` alone
    gives both, while `{}` keeps OpenAI's meaning: no usage)."""
    if options is None:
        return False, False
    include = options.continuous_usage_stats if options.include_usage is None else options.include_usage
    return include, include and options.continuous_usage_stats


def _check_response_format(response_format: ResponseFormat | None) -> None:
    """{"type": "text"} (or none) is plain generation; any other type needs guided decoding: 400."""
    if response_format is None or response_format.type == "text":
        return
    raise APIError(400, f"response_format type {response_format.type!r} needs structured output (guided "
                        "decoding), which this server does not support; drop response_format or use "
                        "{'type': 'text'}", "response_format")


def logit_bias(bias: dict[str, float] | None) -> dict[str, float] | None:
    """The request's logit_bias with each bias clamped to [-100, 100] (vLLM's: an infinite bias would turn
    the logits into NaN); SamplingParams makes its keys token ids (a key that is none: a 400 naming it)."""
    if bias is None:
        return None
    return {k: min(100.0, max(-100.0, v)) for k, v in bias.items()}


def check_logprob_caps(req, max_logprobs: int) -> None:
    """A 400 naming the field (vLLM's message) where logprobs (completions), top_logprobs (chat) or
    prompt_logprobs ask for more than the engine's max_logprobs (-1: no cap)."""
    for name, kind in (("logprobs", "sample"), ("top_logprobs", "sample"), ("prompt_logprobs", "prompt")):
        value = getattr(req, name, None)
        if isinstance(value, bool):                  # chat's logprobs: a flag, its count is top_logprobs
            continue
        message = over_max_logprobs(kind, value, max_logprobs)
        if message is not None:
            raise APIError(400, message, name)
