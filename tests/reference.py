"""A deliberately plain MoNE forward: every token computed at full width with masked weights (spec sections 1-3).

Written for clarity, not speed, and independent of the fast sorted path: no grouping, no sort, no slicing of
weight matrices. Tests compare the library against it.
"""

import math

import torch
import torch.nn.functional as F


def reference_epr(probs, distribution):
    """Spec section 3 in plain Python, one example at a time."""
    B, N, E = probs.shape
    expert = torch.zeros(B, N, dtype=torch.long)
    for b in range(B):
        taken = set()
        for j in range(E - 1, 0, -1):
            k = math.floor(distribution[j] * N)
            candidates = sorted((t for t in range(N) if t not in taken), key=lambda t: (-probs[b, t, j].item(), t))
            for t in candidates[:k]:
                expert[b, t] = j
                taken.add(t)
    return expert


def width_masks(expert, expert_widths, dim):
    """[B, N] expert indices -> [B, N, D] masks with ones on each token's first d_j features."""
    widths = torch.tensor(expert_widths)[expert]  # [B, N]
    return (torch.arange(dim) < widths.unsqueeze(-1)).to(torch.get_default_dtype())


def reference_block(block, x, mask, scale):
    """One nested block on full-width tokens [B, N, D]; ``mask`` zeroes features outside each token's expert."""
    B, N, D = x.shape
    H = block.attn.num_heads
    mask = mask.to(x.dtype)
    h = block.norm1(x) * mask  # Extract_j: features beyond d_j are ignored
    qkv = h @ block.attn.qkv.weight.T  # [B, N, 3D]
    if block.attn.qkv.bias is not None:  # qkv_bias=False has none
        qkv = qkv + block.attn.qkv.bias
    q, k, v = qkv.reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) / math.sqrt(D // H)).softmax(-1)
    o = (attn @ v).transpose(1, 2).reshape(B, N, D)
    z = x + (o @ block.attn.proj.weight.T + block.attn.proj.bias) * mask  # Pad_j: only d_j outputs land
    h = block.norm2(z) * mask
    y = F.gelu(h @ block.mlp.fc1.weight.T + block.mlp.fc1.bias) @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    return z + scale.unsqueeze(-1) * y * mask


def reference_encoder(model, x, distribution):
    """Router, EPR and the nested blocks on tokens [G, N, D], each of the G groups (image or frame) on its own."""
    probs = (model.blocks[0].norm1(x) @ model.router.weight.T + model.router.bias).softmax(-1)
    expert = reference_epr(probs.detach(), distribution)
    mask = width_masks(expert, model.expert_widths, x.shape[-1])
    alpha = model.alpha.clamp(0.0, 0.999)
    scale = alpha * probs.gather(-1, expert.unsqueeze(-1)).squeeze(-1) + 1
    for block in model.blocks:
        x = reference_block(block, x, mask, scale)
    return x, expert


def reference_features(model, images, distribution):
    """Tokens [B, N, D] after all blocks, and the expert of each token [B, N]."""
    x = model.patch_embed(images) + model.pos_embed
    return reference_encoder(model, x, distribution)


def tubelet_tokens(model, clips):
    """Tubelet embedding written as cut-into-tubelets then a matmul: [B, C, T, H, W] -> [B, T', N, D]."""
    B, C, T, H, W = clips.shape
    t, p = model.tubelet_size, model.patch_embed.patch_size[0]
    tubes = clips.reshape(B, C, T // t, t, H // p, p, W // p, p)
    tubes = tubes.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, T // t, (H // p) * (W // p), C * t * p * p)
    proj = model.patch_embed.proj
    return tubes @ proj.weight.reshape(proj.out_channels, -1).T + proj.bias


def reference_vivit(model, clips, distribution):
    """A MoNE ViViT factorised encoder: logits [B, num_classes] and the expert of each token [B * T', N].

    Every temporal index is routed and run through the masked spatial blocks on its own; the temporal blocks are
    the same masked block with every token at full width and an MLP scale of 1 (a plain pre-LN block).
    """
    x = tubelet_tokens(model, clips) + model.pos_embed.unsqueeze(1)  # [B, T', N, D]
    B, T, N, D = x.shape
    x, expert = reference_encoder(model, x.reshape(B * T, N, D), distribution)
    x = F.layer_norm(x.reshape(B, T, N, D).mean(2), (D,), model.spatial_norm.weight, model.spatial_norm.bias, 1e-6)
    x = x + model.temporal_pos_embed
    full_width, no_scale = torch.ones(B, T, D, dtype=x.dtype), torch.ones(B, T, dtype=x.dtype)
    for block in model.temporal_blocks:
        x = reference_block(block, x, full_width, no_scale)
    x = F.layer_norm(x.mean(1), (D,), model.fc_norm.weight, model.fc_norm.bias, 1e-6)
    return x @ model.head.weight.T + model.head.bias, expert


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (alpha excepted) a non-trivial random value, so equivalence checks are sensitive."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "alpha":
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model
