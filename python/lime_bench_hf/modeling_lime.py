"""LIMe (Layer-Integrated Memory, arXiv 2502.09245) for Hugging Face transformers.

`harness export-hf` copies this file into the folder it writes for a `lime` run, next to a
config.json whose `auto_map` names the two classes below, so that

    AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)

builds this model and loads the run's weights. It is lime-bench's own model (models/src/llama.rs
and models/src/lime.rs) written in PyTorch, read top to bottom: config, blocks, model.

    ids (B,T) -> embed_tokens -> x (B,T,D)
    for each layer l:  x += Attn_l(input_layernorm(x))       causal, RoPE on q and k
                       x += MLP_l(post_attention_layernorm(x)) SwiGLU
    logits = lm_head(norm(x))

The one difference to LLaMA is in Attn_l: the layer's keys and values (per kv head, before RoPE)
are appended to a buffer of every layer's so far, S = (l+1)*R rows, row j*R + r = (source layer
j, kv head r); for l >= 1 the router W_l (R x S, no softmax) mixes the buffer, the same weights
for keys and values:  K_l = W_l . K_buf,  V_l = W_l . V_buf  (per token and channel). RoPE is
applied to the routed keys; queries are not routed; layer 0 only appends. With W_l = [0 .. 0 | I]
this is exactly LLaMA.

No KV cache: `generate` recomputes the whole sequence at each step (generation_config.json sets
use_cache false). Shapes: B batch, T tokens, D hidden_size, H heads, R kv heads, d head_dim,
g = H/R query heads per kv head (query head r*g + j reads kv head r, as in LLaMA).
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class LimeConfig(PretrainedConfig):
    model_type = "lime_bench_lime"

    def __init__(
        self,
        vocab_size=256,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=64,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.max_position_embeddings = max_position_embeddings
        super().__init__(**kwargs)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dim."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(t, head_dim, theta, device, dtype):
    """cos and sin (T, d), "rotate half" layout; built in float64 as lime-bench builds them."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim // 2, dtype=torch.float64) * 2 / head_dim)
    freqs = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (T, d/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (T, d)
    return emb.cos().to(device, dtype), emb.sin().to(device, dtype)


def apply_rope(x, cos, sin):
    """x (B, n, T, d): pairs (i, i + d/2) rotated by position."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        d_model, h, r = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        self.h, self.r, self.d = h, r, d_model // h
        self.q_proj = nn.Linear(d_model, h * self.d, bias=False)
        self.k_proj = nn.Linear(d_model, r * self.d, bias=False)
        self.v_proj = nn.Linear(d_model, r * self.d, bias=False)
        self.o_proj = nn.Linear(h * self.d, d_model, bias=False)
        # The router of layer l >= 1: (R, (l+1)*R); layer 0 has none.
        self.router = nn.Linear((layer + 1) * r, r, bias=False) if layer > 0 else None

    def forward(self, x, buf_k, buf_v, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d).transpose(1, 2)  # (B,H,T,d)
        k = self.k_proj(x).view(b, t, self.r, self.d)  # (B,T,R,d), pre-RoPE
        v = self.v_proj(x).view(b, t, self.r, self.d)  # (B,T,R,d)
        buf_k.append(k)
        buf_v.append(v)
        if self.router is not None:
            all_k = torch.cat(buf_k, dim=2)  # (B,T,S,d), S = (l+1)*R, source-major
            all_v = torch.cat(buf_v, dim=2)  # (B,T,S,d)
            w = self.router.weight  # (R,S)
            k = torch.einsum("rs,btsd->btrd", w, all_k)  # (B,T,R,d)
            v = torch.einsum("rs,btsd->btrd", w, all_v)  # (B,T,R,d)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B,R,T,d)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        g = self.h // self.r
        k = k.repeat_interleave(g, dim=1)  # (B,H,T,d): query head r*g + j reads kv head r
        v = v.repeat_interleave(g, dim=1)
        scores = q @ k.transpose(-1, -2) / self.d**0.5  # (B,H,T,T)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        y = scores.softmax(dim=-1) @ v  # (B,H,T,d)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, self.h * self.d))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate x) * up x)."""

    def __init__(self, config):
        super().__init__()
        d, f = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, buf_k, buf_v, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), buf_k, buf_v, cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LimePreTrainedModel(PreTrainedModel):
    config_class = LimeConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]

    def _init_weights(self, module):
        # Every weight comes from the exported checkpoint; nothing to initialise.
        pass


class LimeModel(LimePreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [DecoderLayer(config, l) for l in range(config.num_hidden_layers)]
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)  # (B,T,D)
        d = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = rope_tables(input_ids.shape[1], d, self.config.rope_theta, x.device, x.dtype)
        buf_k, buf_v = [], []  # the pre-RoPE keys and values of the layers so far
        for layer in self.layers:
            x = layer(x, buf_k, buf_v, cos, sin)
        return self.norm(x)


class LimeForCausalLM(LimePreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = LimeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        # attention_mask is accepted for the generate() API; lime-bench pads on the right only,
        # and causal attention never reads a later (padded) position.
        logits = self.lm_head(self.model(input_ids))  # (B,T,V)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return CausalLMOutput(loss=loss, logits=logits)
