#!/usr/bin/env python3
"""PyTorch (eager, CPU) reference for `harness bench train`: the same llama and LIMe models, the
same training step and the same timing protocol, so the Rust tokens/s can be put next to what a
straightforward PyTorch user gets on the same machine (issue "Speed on CPU", item 2).

Install (only PyPI is needed; there is no CPU-only torch wheel on PyPI, the `+cpu` builds live
on PyTorch's own index):

    pip install -r bench/requirements.txt        # torch==2.15.0 (pulls the CUDA wheels, ~3 GB)
    # where download.pytorch.org is reachable, a CPU-only build is much smaller:
    # pip install torch==2.15.0 --index-url https://download.pytorch.org/whl/cpu

Usage:

    python3 bench/torch_reference.py --config tiny --warmup 3 --repeats 10 --threads 2
    python3 bench/torch_reference.py --config tiny,mqar,medium --models llama,lime
    python3 bench/torch_reference.py --config tiny --check     # loss of a few steps first
    python3 bench/torch_reference.py --device cuda --precision bf16   # on a GPU machine

Prints one JSON line per (config, model):
    {"impl": "torch", "config": ..., "model": ..., "tokens_per_s": ..., "ms_per_step": ..., ...}

What is mirrored from the Rust side (harness/src/bench.rs, models/src/{llama,lime}.rs,
harness/src/optim.rs):
  * configs (layers, d, heads, vocab, T, batch): tiny (4,32,4,64,64,64), mqar (4,128,4,8192,256,32),
    medium (8,256,8,512,256,16); d_ff = 4d, kv heads = heads, untied LM head, RoPE theta 1e4,
    RMSNorm eps 1e-5.
  * model: pre-norm blocks x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x)), final RMSNorm, LM head;
    rotate-half RoPE on q and k; causal attention via F.scaled_dot_product_attention(is_causal).
  * LIMe: each layer appends its pre-RoPE per-kv-head K|V to a buffer of all layers so far
    (source-major, (S, B, T, 2*d_h), S = (l+1)*R, as in models/src/lime.rs); layer l >= 1 routes
    with W_l (R x S): [K_l|V_l] = W_l @ buffer (one GEMM), then RoPE on the routed keys; layer 0
    is unrouted. Init: U(-b, b), b = sqrt(3/S), last R x R block = identity.
  * init: N(0, 0.02) for embeddings and all projection matrices, ones for norm gains.
  * inputs: ids[i] = i*7919 % V over the B*T positions, targets = (ids + 1) % V; loss = mean
    cross-entropy over all B*T positions.
  * one timed step = forward + loss + backward + clip_grad_norm_(1.0) + AdamW step
    (lr 1e-3, betas (0.9, 0.95), eps 1e-8; weight decay 0.1 on the projection matrices and the
    LM head; norms and embedding without decay; router weights lr x10 without decay).
  * timing: --warmup steps (default 3: PyTorch's first steps pay for the allocator and oneDNN's
    primitive caches), then the median of --repeats steps (default 10; wall clock, perf_counter).
    Threads as a PyTorch user runs 2 cores: torch.set_num_threads(--threads),
    torch.set_num_interop_threads(1).
  * also reported: torch's own f32 matmul rate (best of 5 timed 1024^3 matmuls, GFLOP/s), the
    same measure `harness bench train` prints for itself.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> (layers, d_model, heads, vocab, seq_len, batch); same as `train_config` in bench.rs.
CONFIGS = {
    "tiny": (4, 32, 4, 64, 64, 64),
    "mqar": (4, 128, 4, 8192, 256, 32),
    "medium": (8, 256, 8, 512, 256, 16),
    # The default experiment (`harness --task mqar`): 2 layers, d=64, 2 heads, vocab 256, T=64,
    # batch 128 (bench.rs reads it from the mqar preset and checks it against this tuple).
    "default": (2, 64, 2, 256, 64, 128),
}
MODELS = ("llama", "lime")

INIT_STD = 0.02
ROPE_THETA = 1e4
NORM_EPS = 1e-5
LR = 1e-3
ROUTER_LR_MULT = 10.0
WEIGHT_DECAY = 0.1
BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8
GRAD_CLIP = 1.0

# Set by --device / --precision: where the step runs and whether forward+loss run under
# torch.autocast(bfloat16) (bf16 matmuls, f32 master weights and optimizer: the same split as
# the harness's --precision bf16).
DEVICE = torch.device("cpu")
AUTOCAST_BF16 = False
# Set by --compile: the model wrapped in torch.compile (default mode, inductor), as a PyTorch
# user runs a fixed model; the warm-up steps include the compilation.
COMPILE = False


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def rope_tables(t, head_dim, dtype):
    """cos, sin (T, d_h/2) for positions 0..T, frequencies theta^(-2i/d_h), built in f64."""
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim // 2, dtype=torch.float64) * 2.0 / head_dim))
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate-half RoPE: x (B, n, T, d_h), cos/sin (T, d_h/2); pairs (i, i + d_h/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    def __init__(self, d, n_heads, n_kv_heads, layer, lime):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d // n_heads
        dh = self.head_dim
        self.q_proj = nn.Linear(d, n_heads * dh, bias=False)
        self.k_proj = nn.Linear(d, n_kv_heads * dh, bias=False)
        self.v_proj = nn.Linear(d, n_kv_heads * dh, bias=False)
        self.o_proj = nn.Linear(n_heads * dh, d, bias=False)
        self.lime = lime
        # LIMe router W_l (R, (l+1)R) for l >= 1; layer 0 only appends to the buffer.
        self.router = None
        if lime and layer > 0:
            r, s = n_kv_heads, (layer + 1) * n_kv_heads
            self.router = nn.Module()
            self.router.w = nn.Parameter(torch.empty(r, s))

    def forward(self, h, cos, sin, buf):
        b, t, _ = h.shape
        nh, r, dh = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(h).view(b, t, nh, dh).transpose(1, 2)  # (B,H,T,dh)
        k = self.k_proj(h).view(b, t, r, dh)  # (B,T,R,dh)
        v = self.v_proj(h).view(b, t, r, dh)  # (B,T,R,dh)
        if not self.lime:
            k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B,R,T,dh)
        else:
            # ---- LIMe routed path: mix the pre-RoPE K|V of all layers so far ----
            kv = torch.cat((k, v), dim=-1).permute(2, 0, 1, 3)  # (R,B,T,2dh)
            buf.append(kv)
            if self.router is None:
                routed = kv  # layer 0: unrouted
            else:
                allkv = torch.cat(buf, dim=0)  # (S,B,T,2dh), S = (l+1)R
                s = allkv.shape[0]
                routed = (self.router.w @ allkv.reshape(s, -1)).view(r, b, t, 2 * dh)  # (R,B,T,2dh)
            routed = routed.transpose(0, 1)  # (B,R,T,2dh)
            k, v = routed[..., :dh], routed[..., dh:]
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B,H,T,dh)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, nh * dh))


class Mlp(nn.Module):
    def __init__(self, d, d_ff):
        super().__init__()
        self.w_gate = nn.Linear(d, d_ff, bias=False)
        self.w_up = nn.Linear(d, d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d, bias=False)

    def forward(self, x):
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    def __init__(self, d, n_heads, layer, lime):
        super().__init__()
        self.attn_norm = nn.RMSNorm(d, eps=NORM_EPS)
        self.attn = Attention(d, n_heads, n_heads, layer, lime)
        self.mlp_norm = nn.RMSNorm(d, eps=NORM_EPS)
        self.mlp = Mlp(d, 4 * d)

    def forward(self, x, cos, sin, buf):
        x = x + self.attn(self.attn_norm(x), cos, sin, buf)
        return x + self.mlp(self.mlp_norm(x))


class Model(nn.Module):
    def __init__(self, variant, n_layers, d, n_heads, vocab):
        super().__init__()
        assert variant in MODELS, variant
        lime = variant == "lime"
        self.head_dim = d // n_heads
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, n_heads, l, lime) for l in range(n_layers))
        self.norm = nn.RMSNorm(d, eps=NORM_EPS)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self._rope = {}
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        for name, p in self.named_parameters():
            if name.endswith(".router.w"):
                r, s = p.shape
                bound = math.sqrt(3.0 / s)
                p.uniform_(-bound, bound)
                p[:, s - r:] = torch.eye(r)
            elif name == "norm.weight" or name.endswith("_norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, INIT_STD)

    def forward(self, ids):
        t = ids.shape[1]
        if t not in self._rope:
            cos, sin = rope_tables(t, self.head_dim, self.lm_head.weight.dtype)
            self._rope[t] = (cos.to(self.lm_head.weight.device), sin.to(self.lm_head.weight.device))
        cos, sin = self._rope[t]
        x = self.embed_tokens(ids)
        buf = []  # LIMe buffer, unused by llama
        for block in self.layers:
            x = block(x, cos, sin, buf)
        return self.lm_head(self.norm(x))


def param_groups(model):
    """Our three AdamW groups (harness/src/optim.rs, models::param_group)."""
    decay, no_decay, router = [], [], []
    for name, p in model.named_parameters():
        if ".router." in name:
            router.append(p)
        elif name == "embed_tokens.weight" or name == "norm.weight" or name.endswith("_norm.weight"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "lr": LR, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "lr": LR, "weight_decay": 0.0},
    ]
    if router:
        groups.append({"params": router, "lr": LR * ROUTER_LR_MULT, "weight_decay": 0.0})
    return groups


def make_optimizer(model, impl):
    kw = {}
    if impl == "foreach":
        kw["foreach"] = True
    elif impl == "fused":
        kw["fused"] = True
    elif impl == "loop":
        kw["foreach"] = False
    return torch.optim.AdamW(param_groups(model), lr=LR, betas=BETAS, eps=ADAM_EPS, **kw)


def make_batch(vocab, t, b):
    """Same inputs/targets as bench.rs: ids[i] = i*7919 % V, targets = (ids+1) % V."""
    ids = (torch.arange(b * t, dtype=torch.int64) * 7919) % vocab
    return ids.view(b, t), (ids + 1) % vocab


def build(config, variant, optim_impl, seed=0):
    n_layers, d, h, v, t, b = CONFIGS[config]
    torch.manual_seed(seed)
    model = Model(variant, n_layers, d, h, v).to(DEVICE)
    opt = make_optimizer(model, optim_impl)
    if COMPILE:
        model = torch.compile(model)
    inputs, targets = make_batch(v, t, b)
    return model, opt, inputs.to(DEVICE), targets.to(DEVICE), (b, t, v)


def train_step(model, opt, inputs, targets, vocab):
    """One step; returns (loss, [total, fwd, bwd, optim] seconds)."""
    sync()
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=AUTOCAST_BF16):
        logits = model(inputs)
        loss = F.cross_entropy(logits.view(-1, vocab).float(), targets)
    sync()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    opt.step()
    sync()
    t3 = time.perf_counter()
    return loss.item(), [t3 - t0, t1 - t0, t2 - t1, t3 - t2]


def median(xs):
    # Same convention as bench.rs: the upper median v[n/2] of the sorted values.
    return sorted(xs)[len(xs) // 2]


def matmul_rate():
    """torch's f32 matmul rate on DEVICE: best of 5 timed 1024^3 matmuls after a warm-up, GFLOP/s."""
    n = 1024
    x = torch.ones(n, n, device=DEVICE)
    y = x @ x
    best = float("inf")
    for _ in range(5):
        sync()
        t0 = time.perf_counter()
        y = x @ x
        sync()
        best = min(best, time.perf_counter() - t0)
    del y
    return 2 * n ** 3 / best / 1e9


def bench(config, variant, repeats, optim_impl, warmup):
    model, opt, inputs, targets, (b, t, v) = build(config, variant, optim_impl)
    model.train()
    for _ in range(max(0, warmup)):
        train_step(model, opt, inputs, targets, v)
    times = [train_step(model, opt, inputs, targets, v)[1] for _ in range(max(1, repeats))]
    med = [median([x[k] for x in times]) for k in range(4)]
    return {
        "impl": "torch-compile" if COMPILE else "torch",
        "config": config,
        "model": variant,
        "tokens_per_s": round(b * t / med[0], 1),
        "ms_per_step": round(med[0] * 1e3, 3),
        "fwd_ms": round(med[1] * 1e3, 3),
        "bwd_ms": round(med[2] * 1e3, 3),
        "optim_ms": round(med[3] * 1e3, 3),
        "repeats": repeats,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "gemm_gflops": round(matmul_rate(), 1),
        "torch": torch.__version__,
        "optim_impl": optim_impl,
        "device": str(DEVICE) + (f" ({torch.cuda.get_device_name(DEVICE)})" if DEVICE.type == "cuda" else ""),
        "precision": "bf16" if AUTOCAST_BF16 else "f32",
        "params": sum(p.numel() for p in model.parameters()),
    }


def check(config, variant, steps, optim_impl):
    """Train a fresh model for a few steps on the fixed batch and print the loss: it must fall
    (the task, target = input + 1, is a bigram the model learns quickly)."""
    model, opt, inputs, targets, (_, _, v) = build(config, variant, optim_impl)
    losses = []
    for i in range(steps):
        loss, _ = train_step(model, opt, inputs, targets, v)
        losses.append(loss)
        print(json.dumps({"check": True, "config": config, "model": variant, "step": i, "loss": round(loss, 5)}),
              flush=True)
    ok = math.isfinite(losses[-1]) and losses[-1] < losses[0]
    print(json.dumps({"check": True, "config": config, "model": variant, "first_loss": round(losses[0], 5),
                      "last_loss": round(losses[-1], 5), "ln_vocab": round(math.log(v), 5),
                      "decreased": ok}), flush=True)
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", "--configs", default="tiny,mqar,medium",
                    help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--model", "--models", default="llama,lime", help="comma-separated: llama, lime")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps after the warm-up (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (intra-op)")
    ap.add_argument("--optim-impl", choices=("default", "loop", "foreach", "fused"), default="default",
                    help="torch.optim.AdamW implementation (default: torch's own choice)")
    ap.add_argument("--check", action="store_true", help="first train a fresh model a few steps and print the loss")
    ap.add_argument("--check-steps", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--precision", choices=("f32", "bf16"), default="f32",
                    help="bf16: forward+loss under torch.autocast(bfloat16), f32 weights and optimizer")
    ap.add_argument("--compile", action="store_true", help="wrap the model in torch.compile (inductor)")
    args = ap.parse_args(argv)
    global DEVICE, AUTOCAST_BF16, COMPILE
    COMPILE = args.compile
    DEVICE = torch.device(args.device)
    AUTOCAST_BF16 = args.precision == "bf16"
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")

    configs = [c for c in args.config.split(",") if c]
    variants = [m for m in args.model.split(",") if m]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r} (known: {', '.join(CONFIGS)})")
    for m in variants:
        if m not in MODELS:
            ap.error(f"unknown model {m!r} (known: {', '.join(MODELS)})")

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    ok = True
    for c in configs:
        for m in variants:
            if args.check:
                ok &= check(c, m, args.check_steps, args.optim_impl)
            print(json.dumps(bench(c, m, args.repeats, args.optim_impl, args.warmup)), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
