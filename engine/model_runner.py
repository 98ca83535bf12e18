"""ModelRunner: loads the model, allocates the KV cache, prepares inputs, runs a step, samples."""
from __future__ import annotations

import logging
import os
import time

import torch

from attention.backend import PAD_SLOT_ID, CommonAttentionMetadata, CudaGraphSupport, block_table_cols, dtype_name
from attention.forward_context import set_forward_context
from attention.layer import bind_attention_layers
from attention.selector import BackendChoice
from engine import kv_sizing
from engine.config import AUTO_MAX_MODEL_LEN, EngineConfig, ModelConfig
from engine.cuda_graph import CudaGraphRunner, capture_sizes, padded_size, prefill_capture_sizes
from engine.input_prep import InflightTokens, InputPreparer, StepInputs
from engine.pending_step import PendingStep
from engine.prompt_logprobs import launch_prompt_logprobs
from engine.request import Request
from engine.sampler import Sampler
from engine.sampling_metadata import SamplingMetadata
from models.loader import build_model
from scheduler.output import SchedulerOutput

logger = logging.getLogger(__name__)
# ENGINE_BLAS_LIBRARY=cublaslt (or cublas) picks torch's BLAS library for the projections on CUDA
# (torch.backends.cuda.preferred_blas_library); unset keeps torch's default. An A/B knob.
BLAS_LIBRARY = os.environ.get("ENGINE_BLAS_LIBRARY")


class ModelRunner:
    def __init__(self, config: EngineConfig, model_config: ModelConfig, hf_config, model_path: str | None,
                 load_format: str, choice: BackendChoice, device: torch.device, dtype: torch.dtype, max_model_len: int,
                 max_num_batched_tokens: int) -> None:
        self.config, self.model_config = config, model_config
        self.device, self.dtype = device, dtype
        if BLAS_LIBRARY and device.type == "cuda":
            torch.backends.cuda.preferred_blas_library(BLAS_LIBRARY)
            logger.info("BLAS library: %s (ENGINE_BLAS_LIBRARY)", BLAS_LIBRARY)
        self.kv_cache_dtype = config.kv_cache_torch_dtype(dtype)   # the model dtype, or fp8 (scale 1.0)
        self.block_size = choice.block_size
        self.backend = choice.backend
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = max_num_batched_tokens
        self.model = build_model(hf_config, model_path, load_format, dtype, device)
        self.builder = self._make_builder()
        self.num_blocks = self._size_kv_cache()
        if config.max_model_len == AUTO_MAX_MODEL_LEN:
            self._fit_max_model_len()
        self.kv_caches = self._allocate_kv_cache(self.num_blocks)
        bind_attention_layers(self.model, self.backend.get_impl_cls(), self.kv_caches)
        self.inputs = InputPreparer(config.max_num_seqs, self.max_model_len, max_num_batched_tokens, self.block_size,
                                    device)
        self.sampler = Sampler()
        self._last_sampling: tuple[list[Request], SamplingMetadata] | None = None
        self.inflight: InflightTokens | None = None     # the last launched step's sampled tokens
        self.graphs = self._capture_graphs() if self._use_graphs() else None
        self._warm_up_logits()
        self._warm_up_sampling()

    def _make_builder(self):
        mc = self.model_config
        return self.backend.get_builder_cls()(mc.num_heads, mc.num_kv_heads, mc.head_size, self.block_size,
                                              self.config.max_num_seqs, self.max_model_len, self.device)

    def _fit_max_model_len(self) -> None:
        """max_model_len -1 (vLLM's "auto"): the model's length, or what the KV cache holds where less."""
        held = self.num_blocks * self.block_size
        if held < self.max_model_len:
            logger.warning("max_model_len auto: %d tokens, what the KV cache holds (the model's positions cover %d)",
                           held, self.max_model_len)
            self.max_model_len = held
            self.builder = self._make_builder()
        else:
            logger.info("max_model_len auto: %d tokens, the model's length (the KV cache holds %d)",
                        self.max_model_len, held)

    @torch.inference_mode()
    def _warm_up_logits(self) -> None:
        """Run the LM head (eager in every step, on the step's unpadded rows) once per graph batch size,
        so the GEMM variants it picks by row count (skinny, tile) are built at start-up, not in the
        first steps (H100: 3 tile GEMM variants, 1.5 s, in the first throughput run otherwise)."""
        if self.device.type != "cuda":
            return
        start = time.perf_counter()
        hidden = torch.zeros(self.config.max_num_seqs, self.model_config.hidden_size, dtype=self.dtype,
                             device=self.device)
        sizes = capture_sizes(self.config.max_num_seqs)
        for size in sizes:
            self.model.compute_logits(hidden[:size])
        logger.info("LM head warmed up at %d batch sizes in %.1f s", len(sizes), time.perf_counter() - start)

    def _warm_up_sampling(self) -> None:
        """Compile the sampling kernel for every chunk size at start-up (see Sampler.warm_up)."""
        start = time.perf_counter()
        chunks = self.sampler.warm_up(self.config.max_num_seqs, self.model_config.vocab_size, self.device,
                                      dtypes=(self.dtype, torch.float32))
        if chunks:
            logger.info("sampling kernel compiled for chunk sizes %s in %.1f s", chunks, time.perf_counter() - start)

    def _use_graphs(self) -> bool:
        if self.device.type != "cuda" or self.config.enforce_eager:
            return False
        if self.builder.cudagraph_support is CudaGraphSupport.NEVER:
            logger.info("CUDA graphs off: attention backend %s cannot be captured", self.backend.name)
            return False
        return True

    def _capture_graphs(self) -> CudaGraphRunner:
        sizes = capture_sizes(self.config.max_num_seqs)
        support = self.builder.cudagraph_support
        small_steps = support in (CudaGraphSupport.DECODE_AND_SMALL_STEPS, CudaGraphSupport.ALWAYS)
        prefill_sizes = prefill_capture_sizes(self.max_num_batched_tokens) if small_steps else []
        if not small_steps:
            logger.info("prefill steps run eagerly: attention backend %s captures decode steps only",
                        self.backend.name)
        graphs = CudaGraphRunner(self.model, self.builder, sizes, self.model_config.hidden_size, self.dtype,
                                 self.device, prefill_sizes)
        graphs.capture(lambda num_reqs, num_tokens: self._synthetic_metadata(num_reqs, num_tokens, write=False))
        return graphs

    def _synthetic_metadata(self, num_reqs: int, num_tokens: int, write: bool) -> CommonAttentionMetadata:
        """`num_reqs` fresh requests in blocks 0, 1, ...: one token each when num_tokens == num_reqs,
        else the first holds all `num_tokens` and the rest none (start-up runs only: the profiling
        forward writes them; graph capture reads block 0 and writes nothing)."""
        dev = self.device
        query_lens = torch.ones(num_reqs, dtype=torch.int32)
        if num_tokens != num_reqs:
            query_lens.zero_()[0] = num_tokens
        qsl = torch.zeros(num_reqs + 1, dtype=torch.int32)
        qsl[1:] = torch.cumsum(query_lens, 0)
        max_query_len = int(query_lens.max())
        num_cols = block_table_cols(max_query_len, self.block_size)
        slots = torch.arange(num_tokens, dtype=torch.int64, device=dev) % (max_query_len if write else 1)
        return CommonAttentionMetadata(
            num_reqs=num_reqs, num_tokens=num_tokens, query_start_loc=qsl.to(dev),
            query_start_loc_cpu=qsl, seq_lens=query_lens.to(dev), seq_lens_cpu=query_lens,
            max_query_len=max_query_len, max_seq_len=max_query_len, block_size=self.block_size,
            block_table=torch.arange(num_cols, dtype=torch.int32, device=dev).expand(num_reqs, num_cols).contiguous(),
            slot_mapping=slots if write else slots.fill_(PAD_SLOT_ID))

    def _allocate_kv_cache(self, num_blocks: int) -> list[torch.Tensor]:
        mc = self.model_config
        return [self.backend.allocate_kv_cache(num_blocks, self.block_size, mc.num_kv_heads, mc.head_size,
                                               self.kv_cache_dtype, self.device) for _ in range(mc.num_layers)]

    def _size_kv_cache(self) -> int:
        block_bytes = kv_sizing.bytes_per_block(self.model_config, self.block_size, self.kv_cache_dtype)
        if self.device.type != "cuda":
            num_blocks, why = kv_sizing.num_blocks_cpu(self.config, block_bytes, self.block_size, self.max_model_len)
        else:
            self._profile_run()
            num_blocks, why = kv_sizing.num_blocks_cuda(self.config, block_bytes, self.device)
        min_blocks = 1 if self.config.max_model_len == AUTO_MAX_MODEL_LEN else -(-self.max_model_len // self.block_size)
        if num_blocks < min_blocks:
            raise ValueError(
                f"the KV cache holds {max(num_blocks, 0) * self.block_size} tokens ({max(num_blocks, 0)} blocks of "
                f"{self.block_size}), fewer than one request of max_model_len={self.max_model_len} needs: lower "
                f"max_model_len (to at most {max(num_blocks, 0) * self.block_size} here), or raise "
                "gpu_memory_utilization / num_kv_blocks / cpu_kv_cache_gib")
        logger.info("KV cache: %d blocks x %d tokens = %d tokens, %s, %.2f GiB (%s)", num_blocks, self.block_size,
                    num_blocks * self.block_size, dtype_name(self.kv_cache_dtype),
                    num_blocks * block_bytes / 2**30, why)
        return num_blocks

    @torch.inference_mode()
    def _profile_run(self) -> None:
        """One forward at the largest batch on a scratch cache, to measure the activation peak."""
        num_tokens = self.max_num_batched_tokens
        num_blocks = -(-num_tokens // self.block_size)
        scratch = self._allocate_kv_cache(num_blocks)
        bind_attention_layers(self.model, self.backend.get_impl_cls(), scratch)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        dev = self.device
        ids = torch.zeros(num_tokens, dtype=torch.long, device=dev)
        with set_forward_context(self.builder.build(self._synthetic_metadata(1, num_tokens, write=True))):
            hidden = self.model(ids, torch.arange(num_tokens, device=dev) % self.max_model_len)
        self.model.compute_logits(hidden[: min(num_tokens, self.config.max_num_seqs)])
        torch.cuda.synchronize(self.device)
        del scratch, hidden

    @torch.inference_mode()
    def launch(self, out: SchedulerOutput, prompt_logprobs: bool = False) -> PendingStep:
        """Prepare, run and sample one step without waiting for the GPU. prompt_logprobs: some request
        may have prompt logprobs to compute (False skips looking for them)."""
        self.inputs.release(out.finished_request_ids + out.preempted_request_ids)
        hidden, step = self._forward(out)
        prompt_step = launch_prompt_logprobs(self.model, hidden, out) if prompt_logprobs else None
        requests = [out.scheduled[i].request for i in step.sampling_rows]
        if not step.sampling_rows:
            self.inflight = None
            return PendingStep(out, [], [], None, prompt_step)
        logits = self.model.compute_logits(hidden[step.logits_indices])
        meta = self._sampling_metadata(requests, logits.shape[-1])
        result = self.sampler(logits, meta)
        self.inflight = InflightTokens(result.sampled_token_ids,
                                       {r.request_id: k for k, r in enumerate(requests)})
        return PendingStep(out, step.sampling_rows, requests, result, prompt_step)

    def _sampling_metadata(self, requests: list[Request], vocab_size: int) -> SamplingMetadata:
        """The step's sampling metadata; the last step's when it samples the same request objects in
        the same order and its metadata does not depend on the step (decode in steady state)."""
        last = self._last_sampling
        if (last is not None and len(last[0]) == len(requests)
                and all(a is b for a, b in zip(last[0], requests))):
            return last[1]
        meta = SamplingMetadata.from_requests(requests, vocab_size, self.device)
        self._last_sampling = (requests, meta) if meta.reusable else None
        return meta

    def _forward(self, out: SchedulerOutput) -> tuple[torch.Tensor, StepInputs]:
        """Run the model: a captured graph for decode batches and for steps with prefill tokens that
        fit one (requests and tokens padded), eagerly otherwise."""
        num_reqs = len(out.scheduled)
        if self.graphs is not None and self.graphs.can_run(num_reqs, out.is_decode_only):
            step = self.inputs.prepare(out, padded_size(self.graphs.sizes, num_reqs), self.inflight)
        elif self.graphs is not None and (shape := self.graphs.prefill_shape(num_reqs, out.num_batched_tokens)):
            step = self.inputs.prepare(out, shape[0], inflight=self.inflight, num_padded_tokens=shape[1])
        else:
            step = self.inputs.prepare(out, inflight=self.inflight)
            with set_forward_context(self.builder.build(step.attn)):
                return self.model(step.input_ids, step.positions), step
        return self.graphs.run(step.input_ids, step.positions, step.attn), step
