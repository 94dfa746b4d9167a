"""The CLIP teacher: any open_clip model loaded frozen, its dense (MaskCLIP) features and text prototypes.

    teacher = load_teacher(TeacherConfig(model="ViT-B-16", pretrained="openai"))
    dense = dense_features(teacher, images)            # [B, D, H/16, W/16]
    protos = text_prototypes(teacher, ["cat", "dog"])  # [C, D]
    logits = cosine_logits(dense, protos, temperature=0.01)  # model.prototypes

The tiny test/demo architectures in `model/clip_configs/` are registered with open_clip when it is first
used. open_clip is imported on first use, not with this module: it brings torchvision and
torch._dynamo (2-4 s on a 2-core box), which a job's check of its user's inputs should not wait for.
Weights at a URL arrive through `fetch` (formats.teacher_weights supplies one), so this module
does no storage I/O of its own.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "clip_configs"


@functools.cache
def open_clip() -> ModuleType:
    """open_clip, with this package's tiny architectures registered."""
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    return open_clip


@functools.cache
def architectures() -> frozenset[str]:
    """The names open_clip.list_models() gives once this package's configs are registered, read from the
    same config files without importing open_clip (tests/model/test_clip_teacher.py holds the two equal)."""
    package = importlib.util.find_spec("open_clip")
    folders = [Path(p) / "model_configs" for p in package.submodule_search_locations] + [CONFIG_DIR]
    return frozenset(f.stem for folder in folders for f in folder.glob("*.json"))


PRECISIONS = ("fp32", "fp16", "bf16", "pure_fp16", "pure_bf16")


def auto_precision(setting: str, device: str | torch.device) -> str:
    """A precision setting with "auto" decided where the model runs: fp16 on a GPU, fp32 on a CPU
    (whose fp16 and bf16 matmuls are not faster). Called on the actor or worker, not the driver."""
    if setting != "auto":
        return setting
    return "fp16" if torch.device(device).type == "cuda" else "fp32"

# ModifiedResNet downsamples by 2 in the stem conv, the stem avgpool and layers 2-4.
RESNET_STRIDE = 32


def imagenet_templates() -> tuple[Callable[[str], str], ...]:
    """open_clip's 80 templates of the CLIP paper, each a callable name -> prompt."""
    return tuple(open_clip().OPENAI_IMAGENET_TEMPLATES)

# MaskCLIP's scene templates; `str.format` bound to each keeps the same callable interface.
SCENE_TEMPLATES: tuple[Callable[[str], str], ...] = tuple(
    t.format
    for t in (
        "there is a {} in the scene.",
        "there is the {} in the scene.",
        "this is a {} in the scene.",
        "this is the {} in the scene.",
        "this is one {} in the scene.",
    )
)


def default_templates() -> tuple[Callable[[str], str], ...]:
    """The prompt ensemble text prototypes use: the CLIP paper's 80 and MaskCLIP's scene templates."""
    return imagenet_templates() + SCENE_TEMPLATES


@dataclass(frozen=True)
class TeacherConfig:
    """Which open_clip model teaches and where its weights come from.

    pretrained: "" (random init, for tests only), an open_clip tag of `model` ("openai",
    "laion2b_s34b_b79k", ...), a local checkpoint file, or an fsspec URL ("s3://...") of one.
    """

    model: str = "tiny-rn"
    pretrained: str = ""
    precision: str = "fp32"

    def __post_init__(self):
        if self.model not in architectures():
            raise ValueError(f"unknown open_clip model {self.model!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")


@dataclass
class Teacher:
    """A frozen open_clip CLIP in eval mode with what is needed to feed it."""

    model: nn.Module
    tokenizer: Any
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    pretrained_source: str
    random_init: bool
    embed_dim: int
    patch_size: int

    def normalise(self, pixels: Tensor) -> Tensor:
        """Float images [B, 3, H, W] in [0, 1] -> the model's input (its own mean and std)."""
        mean = torch.tensor(self.mean, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
        return (pixels - mean) / std


# (url, local path): copy the remote file at `url` to `local path`.
Fetch = Callable[[str, str], None]


# Suffixes open_clip reads weights from; its tags are bare identifiers ("openai", "laion2b_s34b_b79k").
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")


def names_a_file(pretrained: str) -> bool:
    """A name with a folder or a weights suffix names a file: no open_clip tag has either."""
    return os.sep in pretrained or pretrained.endswith(WEIGHT_SUFFIXES)


def pretrained_kind(model_name: str, pretrained: str) -> str | None:
    """What `pretrained` names for `model_name`: "random" (empty), "tag" (an open_clip tag of it), "file"
    (an existing local file), "url" (an fsspec URL, not looked up here), or None (none of these).

    A file's name (names_a_file) is told without importing open_clip: a missing file is reported as fast
    as every other mistake in a user's input.
    """
    if not pretrained:
        return "random"
    if "://" in pretrained:
        return "url"
    if names_a_file(pretrained):
        return "file" if os.path.isfile(pretrained) else None
    if open_clip().is_pretrained_cfg(model_name, pretrained):
        return "tag"
    return "file" if os.path.isfile(pretrained) else None


def resolve_pretrained(model_name: str, pretrained: str, tmp_dir: str, fetch: Fetch | None = None) -> str | None:
    """What to pass as open_clip's `pretrained`: a tag, a local file, or None for random init.

    A URL is copied into `tmp_dir` by `fetch` first (open_clip reads local files only).
    """
    kind = pretrained_kind(model_name, pretrained)
    if kind == "random":
        return None
    if kind in ("tag", "file"):
        return pretrained
    if kind == "url":
        if fetch is None:
            raise ValueError(f"pretrained={pretrained!r} is a URL: load the teacher through "
                             "formats.teacher_weights.load_teacher, which can fetch it")
        # Keep the name: open_clip picks the reader by suffix (.safetensors, .npz).
        local = os.path.join(tmp_dir, os.path.basename(pretrained.rstrip("/")))
        fetch(pretrained, local)
        return local
    raise ValueError(
        f"pretrained={pretrained!r} is none of: an open_clip tag of {model_name!r} "
        f"{open_clip().list_pretrained_tags_by_model(model_name)}, an existing local file, "
        f"or an fsspec URL (s3://..., gs://...); use '' for random weights"
    )


def load_teacher(cfg: TeacherConfig, device: str | torch.device = "cpu", fetch: Fetch | None = None) -> Teacher:
    """Build `cfg.model` with its weights, frozen and in eval mode; `fetch` copies URL weights locally."""
    # Random weights come from a fixed seed, so every actor of a job (and the driver's text
    # encoder) holds the same random teacher; the caller's RNG state is left untouched.
    with tempfile.TemporaryDirectory() as tmp_dir, torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        checkpoint = resolve_pretrained(cfg.model, cfg.pretrained, tmp_dir, fetch)
        model = open_clip().create_model(
            cfg.model, pretrained=checkpoint, precision=cfg.precision, device=device
        )
    if checkpoint is None:
        log.warning(
            "!!! CLIP TEACHER %s HAS RANDOM WEIGHTS (pretrained=''): its features and text "
            "prototypes are meaningless as a teacher; use this for tests only !!!",
            cfg.model,
        )
    model.eval().requires_grad_(False)
    pre = open_clip().get_model_preprocess_cfg(model)
    return Teacher(
        model=model,
        tokenizer=open_clip().get_tokenizer(cfg.model),
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        image_size=_square(model.visual.image_size, "image size"),
        pretrained_source=cfg.pretrained,
        random_init=checkpoint is None,
        embed_dim=model.visual.output_dim,
        patch_size=_tower(model.visual).stride(model.visual),
    )


def _square(size: int | Sequence[int], what: str) -> int:
    if isinstance(size, int):
        return size
    if len(set(size)) != 1:
        raise ValueError(f"non-square {what} {tuple(size)} is not supported")
    return int(size[0])


def _unwrap(teacher_or_model: Teacher | nn.Module) -> nn.Module:
    return teacher_or_model.model if isinstance(teacher_or_model, Teacher) else teacher_or_model


# ---------------------------------------------------------------- dense features


def interpolate_pos_embed(pos: Tensor, grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Resize a [1 + gh*gw, C] positional embedding (class token first) to `new_grid`.

    Bicubic, as MaskCLIP and open_clip's own resize; unchanged when the grids agree.
    """
    if tuple(grid) == tuple(new_grid):
        return pos
    cls, patches = pos[:1], pos[1:]
    patches = patches.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=new_grid, mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1).to(pos.dtype)
    return torch.cat([cls, patches])


def value_path_block(block: ResidualAttentionBlock, x: Tensor) -> Tensor:
    """MaskCLIP's last block: attention replaced by its value path, so tokens do not mix.

    x: [B, N, C] -> [B, N, C]. v = ln_1(x) W_v + b_v through out_proj, then both residuals.
    """
    attn = block.attn
    width = x.shape[-1]
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width :], attn.in_proj_bias[2 * width :])
    x = x + block.ls_1(attn.out_proj(v))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def self_self_block(block: ResidualAttentionBlock, x: Tensor) -> Tensor:
    """ClearCLIP's last block: q-q attention over the values, with no residual and no MLP.

    x: [B, N, C] -> [B, N, C]. A training-free teacher beyond the value path (METHOD.md §2, §5:
    such methods reach VOC-20 80-88 with ViT-B/16, MaskCLIP 49.5).
    """
    attn = block.attn
    b, n, c = x.shape
    q, _, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, v = (t.reshape(b, n, attn.num_heads, -1).transpose(1, 2) for t in (q, v))  # [B, h, N, c/h]
    out = F.scaled_dot_product_attention(q, q, v)  # softmax(q q^T / sqrt(c/h)) v
    return block.ls_1(attn.out_proj(out.transpose(1, 2).reshape(b, n, c)))


# How the last ViT block turns tokens into per-patch features.
LAST_BLOCKS: dict[str, Callable[[ResidualAttentionBlock, Tensor], Tensor]] = {
    "maskclip": value_path_block,
    "clearclip": self_self_block,
}


class _TrunkDone(Exception):
    """Raised by the hook that keeps the last block's input when no global embedding is wanted: the
    rest of open_clip's forward (the last block, the pool, the projection) is not run for nothing."""


def _vit_dense(visual: VisionTransformer, images: Tensor, last_block: str, with_global: bool
               ) -> tuple[Tensor, Tensor | None]:
    """[B, 3, H, W] -> dense [B, D, H/p, W/p] through `LAST_BLOCKS[last_block]`, and with `with_global`
    the global embedding [B, D] through the ordinary last block: the trunk below it runs once for both."""
    from open_clip.transformer import ResidualAttentionBlock

    if visual.attn_pool is not None:
        raise TypeError("dense features of a ViT with an attentional pooler are not supported")
    block = visual.transformer.resblocks[-1]
    if not isinstance(block, ResidualAttentionBlock) or not visual.transformer.batch_first:
        raise TypeError(f"dense features need batch-first ResidualAttentionBlocks, got {type(block)}")
    patch = _square(visual.patch_size, "patch size")
    h, w = images.shape[-2] // patch, images.shape[-1] // patch
    pos = interpolate_pos_embed(visual.positional_embedding, visual.grid_size, (h, w))
    # open_clip's own forward gives the global embedding (any input size with the positional
    # embedding swapped in); a hook keeps the last block's input [B, 1 + h*w, C] for the dense path
    captured: dict[str, Tensor] = {}

    def keep(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        captured["x"] = args[0]
        if not with_global:
            raise _TrunkDone

    hook = block.register_forward_pre_hook(keep)
    pooled = None
    try:
        pooled = torch.func.functional_call(visual, {"positional_embedding": pos},
                                            (images.to(visual.conv1.weight.dtype),))
    except _TrunkDone:
        pass
    finally:
        hook.remove()
    pooled = pooled[0] if isinstance(pooled, tuple) else pooled  # output_tokens models return (pooled, tokens)
    x = captured["x"]
    dense = visual.ln_post(LAST_BLOCKS[last_block](block, x)[:, 1:]) @ visual.proj  # [B, h*w, D]
    return dense.transpose(1, 2).reshape(x.shape[0], -1, h, w), pooled


def _resnet_dense(visual: ModifiedResNet, images: Tensor, last_block: str, with_global: bool
                  ) -> tuple[Tensor, Tensor | None]:
    """[B, 3, H, W] -> dense [B, D, H/32, W/32], the attention pool's v_proj then c_proj at every
    position, and with `with_global` the global embedding [B, D] (the pool itself) from the same trunk pass.

    As MaskCLIP's ResNet head (1x1 v/c convs on the layer4 map), no positional embedding is
    added: the attention pool's embedding belongs to its q-k path, and leaving it out keeps any
    input size valid without interpolation. Only "maskclip" is defined for the ResNet pool.
    """
    if last_block != "maskclip":
        raise ValueError(f"last_block={last_block!r} is defined for ViTs only; ResNets take 'maskclip'")
    # channels-last activations: the trunk's convolutions measured 17% faster so on the CPU box
    # (oneDNN), the layout cuDNN prefers under autocast; the same arithmetic
    x = images.to(visual.conv1.weight.dtype).contiguous(memory_format=torch.channels_last)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(x)))))
    pool = visual.attnpool
    dense = pool.c_proj(pool.v_proj(x.permute(0, 2, 3, 1)))  # [B, h, w, D]
    if not with_global:
        return dense.permute(0, 3, 1, 2), None
    native = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
    pos = interpolate_pos_embed(pool.positional_embedding, (native, native), tuple(x.shape[-2:]))
    pooled = torch.func.functional_call(pool, {"positional_embedding": pos}, (x,))  # any input size
    return dense.permute(0, 3, 1, 2), pooled


@dataclass(frozen=True)
class DenseTower:
    """How to get a dense grid out of one kind of open_clip vision tower."""

    # (visual, images, last_block, with_global) -> (dense, global or None)
    features: Callable[[nn.Module, Tensor, str, bool], tuple[Tensor, Tensor | None]]
    stride: Callable[[nn.Module], int]  # pixels per grid cell


@functools.cache
def dense_towers() -> dict[type, DenseTower]:
    """The vision towers with dense features, by open_clip's class."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    return {
        VisionTransformer: DenseTower(_vit_dense, lambda v: _square(v.patch_size, "patch size")),
        ModifiedResNet: DenseTower(_resnet_dense, lambda v: RESNET_STRIDE),
    }


def _tower(visual: nn.Module) -> DenseTower:
    towers = dense_towers()
    tower = towers.get(type(visual))
    if tower is None:
        names = ", ".join(t.__name__ for t in towers)
        raise TypeError(f"no dense features for vision tower {type(visual).__name__}; supported: {names}")
    return tower


@torch.no_grad()
def dense_and_global(
    teacher_or_model: Teacher | nn.Module, images: Tensor, last_block: str = "maskclip"
) -> tuple[Tensor, Tensor]:
    """Dense CLIP features [B, D, H/p, W/p] and the global embedding [B, D], both fp32, not
    normalised, from one pass: [B, 3, H, W] normalised images.

    last_block: a key of LAST_BLOCKS; "maskclip" (value path) is the method's teacher.
    """
    return _dense(teacher_or_model, images, last_block, with_global=True)


@torch.no_grad()
def dense_features(teacher_or_model: Teacher | nn.Module, images: Tensor, last_block: str = "maskclip") -> Tensor:
    """Dense CLIP features only, as `dense_and_global` gives them; nothing of the global embedding is
    computed (the attention pool, or the ViT's ordinary last block: 11% of the tiny ResNet's pass)."""
    return _dense(teacher_or_model, images, last_block, with_global=False)[0]


def _dense(teacher_or_model: Teacher | nn.Module, images: Tensor, last_block: str, with_global: bool
           ) -> tuple[Tensor, Tensor | None]:
    if last_block not in LAST_BLOCKS:
        raise ValueError(f"last_block must be one of {sorted(LAST_BLOCKS)}, got {last_block!r}")
    visual = _unwrap(teacher_or_model).visual
    dense, pooled = _tower(visual).features(visual, images, last_block, with_global)
    return dense.float(), pooled.float() if pooled is not None else None


@torch.no_grad()
def global_embedding(teacher_or_model: Teacher | nn.Module, images: Tensor) -> Tensor:
    """CLIP's image embedding, not normalised: [B, 3, H, W] -> [B, D] fp32."""
    model = _unwrap(teacher_or_model)
    return model.encode_image(images.to(model.visual.conv1.weight.dtype)).float()


# ---------------------------------------------------------------- text


@torch.no_grad()
def text_prototypes(
    teacher: Teacher,
    names: Sequence[str],
    templates: Sequence[Callable[[str], str]] | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Prompt-ensembled class embeddings [C, D], unit norm.

    templates: None = default_templates(). Every template is filled with every name; each prompt's embedding is normalised, the mean
    over templates taken per name, and normalised again.
    """
    templates = default_templates() if templates is None else templates
    prompts = [template(name) for name in names for template in templates]
    device = next(teacher.model.parameters()).device
    tokens = teacher.tokenizer(prompts).to(device)
    emb = torch.cat([teacher.model.encode_text(chunk).float() for chunk in tokens.split(batch_size)])
    emb = F.normalize(emb, dim=-1).reshape(len(names), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)

