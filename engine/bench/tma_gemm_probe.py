"""Probe (issue 4, ninth session; not used by the engine): a TMA (tensor descriptor) Triton GEMM,
plain or persistent, swept over its tiles against cuBLAS on the Qwen3-8B decode projections at M = 128
and 256. `python -m engine.bench.tma_gemm_probe` (OUT names the folder for tma.json)."""
import itertools, json, os, sys, time
import torch, triton, triton.language as tl
import torch.nn.functional as F
from triton.tools.tensor_descriptor import TensorDescriptor
from engine.bench.skinny_gemm import _case, graph_us

NUM_SMS = torch.cuda.get_device_properties(0).multi_processor_count


@triton.jit(do_not_specialize=["M"])
def tma_gemm(x_desc, w_desc, out_ptr, M, N, K, stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr, STAGES: tl.constexpr, PERSISTENT: tl.constexpr, NUM_PROGS: tl.constexpr):
    tl.extra.cuda.gdc_launch_dependents()
    tl.extra.cuda.gdc_wait()
    num_m = tl.cdiv(M, BLOCK_M)
    num_tiles = num_m * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    if PERSISTENT:
        start = tl.program_id(0)
        step = NUM_PROGS
    else:
        start = tl.program_id(0)
        step = num_tiles
    for tile in tl.range(start, num_tiles, step, flatten=True):
        m0 = (tile % num_m) * BLOCK_M
        n0 = (tile // num_m) * BLOCK_N
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for kt in tl.range(0, k_tiles, num_stages=STAGES):
            a = x_desc.load([m0, kt * BLOCK_K])
            b = w_desc.load([n0, kt * BLOCK_K])
            acc = tl.dot(a, b.T, acc)
        rows = m0 + tl.arange(0, BLOCK_M)
        cols = n0 + tl.arange(0, BLOCK_N)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :], acc.to(tl.bfloat16),
                 mask=(rows < M)[:, None] & (cols < N)[None, :])


def run(x, w, cfg):
    M, K = x.shape
    N = w.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    xd = TensorDescriptor.from_tensor(x, [cfg["BLOCK_M"], cfg["BLOCK_K"]])
    wd = TensorDescriptor.from_tensor(w, [cfg["BLOCK_N"], cfg["BLOCK_K"]])
    tiles = triton.cdiv(M, cfg["BLOCK_M"]) * triton.cdiv(N, cfg["BLOCK_N"])
    progs = min(tiles, NUM_SMS * cfg.get("per_sm", 1)) if cfg["PERSISTENT"] else tiles
    tma_gemm[(progs,)](xd, wd, out, M, N, K, out.stride(0), BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                       BLOCK_K=cfg["BLOCK_K"], STAGES=cfg["STAGES"], PERSISTENT=cfg["PERSISTENT"], NUM_PROGS=progs,
                       num_warps=cfg["num_warps"], launch_pdl=True)
    return out


SHAPES = {"8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b down": (4096, 12288), "8b gate_up": (24576, 4096)}
configs = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, STAGES=s, num_warps=w, PERSISTENT=p)
           for bm, bn, bk, s, w, p in itertools.product((64, 128), (64, 128, 256), (64, 128), (3, 4, 5), (4, 8), (False, True))
           if (bm + bn) * bk * 2 * s <= 220 * 1024 and not (bm == 64 and w == 8)]
print(len(configs), "configs", flush=True)
rows_out = []
t0 = time.time()
for name, (n, k) in SHAPES.items():
    for m in (128, 256):
        x, ws = _case(n, k, m)
        want = F.linear(x, ws[0]).float()
        cub = graph_us([lambda w=w: F.linear(x, w) for w in ws])
        best = None
        for cfg in configs:
            try:
                got = run(x, ws[0], cfg).float()
                err = ((got - want).abs().max() / want.abs().max()).item()
                if err > 0.02:
                    print("WRONG", name, m, cfg, err, flush=True); continue
                t = graph_us([lambda w=w: run(x, w, cfg) for w in ws])
            except Exception as e:
                print("fail", cfg, type(e).__name__, str(e)[:100], flush=True); continue
            if best is None or t < best[1]:
                best = (cfg, t)
        print(f"{name:12} M={m:4} cublas {cub:7.2f}  tma {best[1]:7.2f}  x{cub/best[1]:.3f}  {best[0]}  ({time.time()-t0:.0f}s)", flush=True)
        rows_out.append(dict(case=name, m=m, cublas_us=cub, tma_us=best[1], config=best[0]))
        del ws; torch.cuda.empty_cache()
json.dump(rows_out, open(os.path.join(os.environ.get("OUT", "."), "tma.json"), "w"), indent=1)
