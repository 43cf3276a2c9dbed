"""Run open_clip residual attention blocks through fused scaled_dot_product_attention."""
import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import UserError


def check_plain_blocks(resblocks: nn.ModuleList, tower: str) -> None:
    """Our forward reuses the block weights; only open_clip's default (OpenAI-style) block is supported."""
    for block in resblocks:
        attn = getattr(block, 'attn', None)
        if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None or hasattr(block, 'ln_1_kv'):
            raise UserError(f'the {tower} tower of this CLIP model does not use plain OpenAI-style attention blocks')


def _queries_keys_values(attn: nn.MultiheadAttention, x: torch.Tensor) -> tuple:
    """q, k, v [B, heads, L, C / heads] of `attn`'s weights on x [B, L, C]."""
    batch, length, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    return qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)


def attention_weights(attn: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """[B, heads, L, L]: how much each token attends to each other in `attn` on x [B, L, C] (rows sum to 1)."""
    q, k, _ = _queries_keys_values(attn, x)
    return torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)


def self_attention(attn: nn.MultiheadAttention, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    """Multi-head self-attention of `attn`'s weights on x [B, L, C]."""
    batch, length, width = x.shape
    q, k, v = _queries_keys_values(attn, x)
    dropout = attn.dropout if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=is_causal)
    out = out.transpose(1, 2).reshape(batch, length, width)
    return attn.out_proj(out)


def run_block(block: nn.Module, x: torch.Tensor, is_causal: bool = False) -> torch.Tensor:
    """One open_clip ResidualAttentionBlock (pre-norm, layer scale) on x [B, L, C]."""
    x = x + block.ls_1(self_attention(block.attn, block.ln_1(x), is_causal=is_causal))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
