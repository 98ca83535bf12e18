"""A small, fast LLM serving engine. Offline use: `from engine import LLM, SamplingParams` (and `Logprob`,
what outputs' logprobs hold, and `RequestOutputKind`, SamplingParams.output_kind's values)."""
from engine.outputs import Logprob
from engine.sampling_params import RequestOutputKind, SamplingParams


def __getattr__(name: str):
    # LLM pulls in torch and the models; import it lazily so `engine.sampling_params` stays light.
    if name == "LLM":
        from engine.llm import LLM
        return LLM
    raise AttributeError(name)


__all__ = ["LLM", "Logprob", "RequestOutputKind", "SamplingParams"]
