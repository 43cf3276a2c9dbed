"""CLIP text tower on prompt embeddings, and learnable per-identity prompt tokens."""
from functools import partial
from typing import Callable, Optional

import open_clip
import torch
from torch import nn

from model.blocks import check_plain_blocks, run_block
from utils.errors import UserError

PLACEHOLDER = 'X'


class TextEncoder(nn.Module):
    """Encodes token embeddings [B, L, width] with CLIP's causal text transformer -> [B, embed_dim]."""

    def __init__(self, clip_model: nn.Module, truncate: bool = True):
        super().__init__()
        check_plain_blocks(clip_model.transformer.resblocks, 'text')
        if getattr(clip_model, 'text_pool_type', 'argmax') != 'argmax':
            raise UserError('the text tower of this CLIP model does not pool at the end-of-text token')
        self.resblocks = clip_model.transformer.resblocks
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        # Causal attention: tokens after the last EOT never influence it, so they can be dropped.
        self.truncate = truncate

    def forward(self, prompts: torch.Tensor, tokenized: torch.Tensor, truncate: Optional[bool] = None,
                last_end_of_text: Optional[int] = None) -> torch.Tensor:
        """prompts [B, L, width]; tokenized [B, L] or [1, L] token ids (EOT has the largest id);
        `last_end_of_text`: the largest EOT position when the caller knows it (truncating then needs no
        read of the tokens from the device)."""
        eot = tokenized.argmax(dim=-1).expand(prompts.shape[0])
        x = prompts + self.positional_embedding[:prompts.shape[1]].to(prompts.dtype)
        if self.truncate if truncate is None else truncate:
            x = x[:, :(int(eot.max()) if last_end_of_text is None else last_end_of_text) + 1]
        for block in self.resblocks:
            x = run_block(block, x, is_causal=True)
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection


def default_tokenizer(clip_model: nn.Module) -> Callable:
    return partial(open_clip.tokenize, context_length=clip_model.context_length)


class PromptLearner(nn.Module):
    """Per-identity learnable context replacing the contiguous 'X' placeholders of a template."""

    def __init__(self, num_classes: int, template: str, clip_model: nn.Module, tokenizer: Optional[Callable] = None,
                 config_key: str = 'MODEL.PROMPT_TEMPLATE'):
        super().__init__()
        tokenize = tokenizer or default_tokenizer(clip_model)
        tokenized = tokenize([template])
        placeholder = tokenize([PLACEHOLDER])[0]
        # [SOT, x, EOT, 0, ...]: the placeholder must be a single token to be found in the template.
        if int((placeholder != 0).sum()) != 3:
            raise UserError(f"{config_key}: the tokenizer splits the placeholder '{PLACEHOLDER}' into several tokens")
        positions = (tokenized[0] == placeholder[1]).nonzero().flatten()
        if positions.numel() == 0:
            raise UserError(f"{config_key} '{template}' has no '{PLACEHOLDER}' placeholder "
                            f"(e.g. 'A photo of a X X X X person.')")
        first, n_ctx = int(positions[0]), positions.numel()
        if not torch.equal(positions, torch.arange(first, first + n_ctx)):
            raise UserError(f"{config_key} '{template}': the '{PLACEHOLDER}' placeholders must be consecutive")

        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized.to(clip_model.token_embedding.weight.device))
        embedding = embedding.float().cpu()
        width = embedding.shape[-1]
        self.template = template
        self.num_classes = num_classes
        self.n_prefix = first - 1
        self.n_ctx = n_ctx
        self.register_buffer('tokenized', tokenized)
        self.end_of_text = int(tokenized.argmax(dim=-1))  # a Python int: read once, here
        self.register_buffer('token_prefix', embedding[:, :first].clone())
        self.register_buffer('token_suffix', embedding[:, first + n_ctx:].clone())
        self.cls_ctx = nn.Parameter(torch.empty(num_classes, n_ctx, width))
        nn.init.normal_(self.cls_ctx, std=0.02)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels [B] -> prompt embeddings [B, context_length, width]."""
        ctx = self.cls_ctx[labels]
        batch = ctx.shape[0]
        return torch.cat([self.token_prefix.expand(batch, -1, -1).to(ctx.dtype), ctx,
                          self.token_suffix.expand(batch, -1, -1).to(ctx.dtype)], dim=1)
