"""The CLIP teacher on tiny random-weight open_clip models, checked against hand computations."""

from __future__ import annotations

import copy
import logging

import open_clip
import pytest
import s3fs
import torch
import torch.nn.functional as F
from torch import nn

from formats import teacher_weights
from model.baselines import TeacherNet, shift
from model.clip_teacher import (
    SCENE_TEMPLATES,
    Teacher,
    TeacherConfig,
    architectures,
    dense_features,
    global_embedding,
    imagenet_templates,
    interpolate_pos_embed,
    load_teacher,
    pretrained_kind,
    resolve_pretrained,
    text_prototypes,
)

ATOL = 1e-5


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random 1-D parameters (biases, norms, class token): default inits leave many at 0 or 1,
    which would hide a forgotten bias or a swapped LayerNorm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def vit() -> Teacher:
    torch.manual_seed(0)
    teacher = load_teacher(TeacherConfig(model="tiny-vit"))
    perturb(teacher.model)
    return teacher


@pytest.fixture(scope="module")
def rn() -> Teacher:
    torch.manual_seed(1)
    teacher = load_teacher(TeacherConfig(model="tiny-rn"))
    perturb(teacher.model)
    # Random BN statistics so the eval-mode trunk is not near-identity.
    with torch.no_grad():
        for m in teacher.model.visual.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return teacher


def images(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- ViT by hand


def ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)


def attend(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, [B, N, C] each."""
    n_batch, n_tok, c = q.shape
    q, k, v = (t.reshape(n_batch, n_tok, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    att = torch.softmax(q @ k.transpose(-1, -2) / (c // heads) ** 0.5, dim=-1)
    return (att @ v).transpose(1, 2).reshape(n_batch, n_tok, c)


def block_by_hand(x, sd, b, heads, mode):
    """One open_clip residual block from raw tensors. mode "full": the normal block; "value":
    MaskCLIP's value path; "qq": ClearCLIP's q-q attention without residual and MLP."""
    qkv = F.linear(ln(x, sd, b + "ln_1"), sd[b + "attn.in_proj_weight"], sd[b + "attn.in_proj_bias"])
    q, k, v = qkv.chunk(3, -1)
    if mode == "full":
        mixed = attend(q, k, v, heads)
    elif mode == "qq":
        mixed = attend(q, q, v, heads)
    else:
        mixed = v
    gamma1, gamma2 = sd.get(b + "ls_1.gamma", 1.0), sd.get(b + "ls_2.gamma", 1.0)
    out = gamma1 * F.linear(mixed, sd[b + "attn.out_proj.weight"], sd[b + "attn.out_proj.bias"])
    if mode == "qq":
        return out
    x = x + out
    hidden = F.gelu(F.linear(ln(x, sd, b + "ln_2"), sd[b + "mlp.c_fc.weight"], sd[b + "mlp.c_fc.bias"]))
    return x + gamma2 * F.linear(hidden, sd[b + "mlp.c_proj.weight"], sd[b + "mlp.c_proj.bias"])


def vit_dense_by_hand(sd, imgs, patch, native, heads, layers, last="value"):
    x = F.conv2d(imgs, sd["visual.conv1.weight"], stride=patch)
    n_batch, c, h, w = x.shape
    x = x.flatten(2).transpose(1, 2)
    pos = sd["visual.positional_embedding"]
    if (h, w) != native:
        grid = pos[1:].reshape(1, *native, c).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, c)])
    x = torch.cat([sd["visual.class_embedding"].expand(n_batch, 1, c), x], dim=1) + pos
    x = ln(x, sd, "visual.ln_pre")
    for i in range(layers):
        mode = last if i == layers - 1 else "full"
        x = block_by_hand(x, sd, f"visual.transformer.resblocks.{i}.", heads, mode)
    x = ln(x[:, 1:], sd, "visual.ln_post") @ sd["visual.proj"]
    return x.transpose(1, 2).reshape(n_batch, -1, h, w)


@pytest.fixture(scope="module")
def vit_layer_scale() -> nn.Module:
    """tiny-vit with layer scale (ls_1/ls_2), which the plain config lacks."""
    torch.manual_seed(2)
    vision = dict(open_clip.get_model_config("tiny-vit")["vision_cfg"], ls_init_value=0.5)
    model = open_clip.create_model("tiny-vit", vision_cfg=vision).eval()
    return perturb(model, seed=3)


@pytest.mark.parametrize("size", [(64, 64), (96, 128), (40, 24)])
@pytest.mark.parametrize("layer_scale", [False, True])
def test_vit_dense_features_equal_value_path_by_hand(vit, vit_layer_scale, size, layer_scale):
    model = vit_layer_scale if layer_scale else vit.model
    sd = model.state_dict()
    assert ("visual.transformer.resblocks.3.ls_1.gamma" in sd) == layer_scale
    imgs = images(2, *size)
    expected = vit_dense_by_hand(sd, imgs, patch=8, native=(8, 8), heads=4, layers=4)
    got = dense_features(model, imgs)
    assert got.shape == (2, 64, size[0] // 8, size[1] // 8)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("layer_scale", [False, True])
def test_vit_clearclip_last_block_equals_self_self_attention_by_hand(vit, vit_layer_scale, layer_scale):
    model = vit_layer_scale if layer_scale else vit.model
    imgs = images(2, 96, 128)
    expected = vit_dense_by_hand(model.state_dict(), imgs, 8, (8, 8), heads=4, layers=4, last="qq")
    got = dense_features(model, imgs, last_block="clearclip")
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)
    assert not torch.allclose(got, dense_features(model, imgs), atol=1e-2)


def test_last_block_choice_is_checked(vit, rn):
    with pytest.raises(ValueError, match="last_block must be one of"):
        dense_features(vit, images(1, 64, 64), last_block="sclip")
    with pytest.raises(ValueError, match="ViTs only"):
        dense_features(rn, images(1, 64, 64), last_block="clearclip")


def test_vit_dense_features_equal_global_embedding_when_all_tokens_are_equal(vit):
    """With every token equal (class token = patch embedding of a constant image, zero
    positional embedding), attention returns each token's own value, so MaskCLIP's value path
    is exact and every position carries CLIP's global embedding."""
    model = copy.deepcopy(vit.model)
    visual = model.visual
    imgs = torch.full((1, 3, 64, 64), 0.7)
    with torch.no_grad():
        visual.positional_embedding.zero_()
        visual.class_embedding.copy_(visual.conv1(imgs)[0, :, 0, 0])
    dense = dense_features(model, imgs)  # [1, D, 8, 8]
    glob = global_embedding(model, imgs)  # [1, D]
    torch.testing.assert_close(dense, glob[:, :, None, None].expand_as(dense), atol=ATOL, rtol=1e-4)
    # ...which the unmodified model on a random image does not have: the check can fail.
    imgs = images(1, 64, 64)
    dense, glob = dense_features(vit, imgs), global_embedding(vit, imgs)
    assert not torch.allclose(dense, glob[:, :, None, None].expand_as(dense), atol=1e-2)


# ---------------------------------------------------------------- ResNet


def test_resnet_dense_features_equal_value_and_output_projection_by_hand(rn):
    visual, sd = rn.model.visual, rn.model.state_dict()
    imgs = images(2, 96, 160)
    with torch.no_grad():
        trunk = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(imgs)))))
    tokens = trunk.permute(0, 2, 3, 1)  # [B, h, w, C]
    v = F.linear(tokens, sd["visual.attnpool.v_proj.weight"], sd["visual.attnpool.v_proj.bias"])
    out = F.linear(v, sd["visual.attnpool.c_proj.weight"], sd["visual.attnpool.c_proj.bias"])
    got = dense_features(rn, imgs)
    assert got.shape == (2, 64, 3, 5)
    torch.testing.assert_close(got, out.permute(0, 3, 1, 2), atol=ATOL, rtol=1e-4)


def test_resnet_dense_feature_equals_global_embedding_on_a_single_cell(rn):
    """A 32-px image gives one layer4 cell; with the pool's positional embedding zeroed, the
    query (mean token) equals the only key, so attention pooling is exactly c_proj(v_proj(x))."""
    model = copy.deepcopy(rn.model)
    pool = model.visual.attnpool
    pool.positional_embedding = nn.Parameter(torch.zeros(2, pool.positional_embedding.shape[1]))
    imgs = images(3, 32, 32)
    dense = dense_features(model, imgs)
    assert dense.shape == (3, 64, 1, 1)
    torch.testing.assert_close(dense[:, :, 0, 0], global_embedding(model, imgs), atol=ATOL, rtol=1e-4)


# ---------------------------------------------------------------- shapes, interpolation


@pytest.mark.parametrize(
    "which, size, grid",
    [
        ("vit", (64, 64), (8, 8)),
        ("vit", (96, 128), (12, 16)),
        ("vit", (70, 33), (8, 4)),
        ("rn", (128, 128), (4, 4)),
        ("rn", (64, 192), (2, 6)),
        ("rn", (96, 96), (3, 3)),
    ],
)
def test_dense_grid_is_input_size_over_patch(request, which, size, grid):
    teacher = request.getfixturevalue(which)
    assert teacher.patch_size == {"vit": 8, "rn": 32}[which]
    dense = dense_features(teacher, images(2, *size))
    assert dense.shape == (2, teacher.embed_dim, *grid)
    assert dense.dtype == torch.float32


@pytest.mark.parametrize("which", ["vit", "rn"])
def test_one_pass_gives_encode_image_as_the_global_embedding(request, which):
    from model.clip_teacher import dense_and_global

    teacher = request.getfixturevalue(which)
    x = images(2, teacher.image_size, teacher.image_size)
    dense, pooled = dense_and_global(teacher, x)
    torch.testing.assert_close(pooled, teacher.model.encode_image(x), atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(dense, dense_features(teacher, x))
    _, larger = dense_and_global(teacher, images(1, 2 * teacher.image_size, teacher.image_size))
    assert larger.shape == (1, teacher.embed_dim)  # other sizes interpolate the positional embedding


def test_interpolate_pos_embed_keeps_class_token_and_constants():
    pos = torch.randn(1 + 4 * 4, 6)
    assert interpolate_pos_embed(pos, (4, 4), (4, 4)) is pos
    const = torch.cat([torch.randn(1, 6), torch.full((16, 6), 2.5)])
    out = interpolate_pos_embed(const, (4, 4), (3, 7))
    assert out.shape == (1 + 21, 6)
    torch.testing.assert_close(out[:1], const[:1])
    torch.testing.assert_close(out[1:], torch.full((21, 6), 2.5))


def test_unsupported_vision_tower_is_a_clear_error():
    class Fake(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = nn.Identity()

    with pytest.raises(TypeError, match="Identity.*supported: VisionTransformer, ModifiedResNet"):
        dense_features(Fake(), images(1, 32, 32))


# ---------------------------------------------------------------- text


def test_templates_are_openclip_80_plus_maskclip_scene():
    assert len(imagenet_templates()) == 80
    assert imagenet_templates()[0]("cat") == "a bad photo of a cat."
    assert SCENE_TEMPLATES[0]("cat") == "there is a cat in the scene."
    assert SCENE_TEMPLATES[4]("cat") == "this is one cat in the scene."
    assert len(SCENE_TEMPLATES) == 5


def test_text_prototypes_equal_hand_ensemble(vit):
    names = ["cat", "traffic light"]
    templates = (imagenet_templates()[0], SCENE_TEMPLATES[0], "itap of a {}.".format)
    expected = []
    for name in names:
        embs = [vit.model.encode_text(vit.tokenizer([t(name)]))[0] for t in templates]
        mean = torch.stack([e / e.norm() for e in embs]).mean(0)
        expected.append(mean / mean.norm())
    expected = torch.stack(expected)
    for batch_size in (4, 256):  # 4 splits the 6 prompts across chunks
        got = text_prototypes(vit, names, templates, batch_size=batch_size)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)
    assert got.shape == (2, 64)


def test_cosine_logits_are_cosine_over_temperature():
    from model.prototypes import cosine_logits

    # Channels on dim 1: pixel 0 = (3, 0) -> unit (1, 0); pixel 1 = (4, -2) -> (2, -1) / sqrt 5.
    dense = torch.tensor([[3.0, 4.0], [0.0, -2.0]]).reshape(1, 2, 1, 2)
    protos = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # unit: (1, 0), (0, 1), (1, 1) / sqrt 2
    logits = cosine_logits(dense, protos, temperature=0.5)
    s5, s2 = 5**0.5, 2**0.5
    expected = torch.tensor([[1.0, 2 / s5], [0.0, -1 / s5], [1 / s2, 1 / (s5 * s2)]]) / 0.5
    assert logits.shape == (1, 3, 1, 2)
    torch.testing.assert_close(logits[0, :, 0], expected)


# ---------------------------------------------------------------- loading


def test_random_init_warns_loudly_and_is_frozen(caplog):
    with caplog.at_level(logging.WARNING):
        teacher = load_teacher(TeacherConfig(model="tiny-vit"))
    assert teacher.random_init
    assert any("RANDOM WEIGHTS" in r.getMessage() and "meaningless" in r.getMessage() for r in caplog.records)
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert (teacher.image_size, teacher.patch_size, teacher.embed_dim) == (64, 8, 64)
    assert teacher.mean == open_clip.OPENAI_DATASET_MEAN and teacher.std == open_clip.OPENAI_DATASET_STD


def test_random_weights_are_the_same_in_every_process_and_leave_the_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_teacher(TeacherConfig(model="tiny-vit"))
    assert torch.equal(torch.rand(1), expected_next)
    b = load_teacher(TeacherConfig(model="tiny-vit"))
    assert_same_teacher(a, b)


def assert_same_teacher(a: Teacher, b: Teacher):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    imgs = images(1, 64, 64)
    assert torch.equal(dense_features(a, imgs), dense_features(b, imgs))


def test_local_checkpoint_loads_identically(vit, tmp_path, caplog):
    path = str(tmp_path / "teacher.pt")
    torch.save(vit.model.state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="model.clip_teacher"):
        loaded = load_teacher(TeacherConfig(model="tiny-vit", pretrained=path))
    assert not loaded.random_init and loaded.pretrained_source == path
    assert not [r for r in caplog.records if r.name == "model.clip_teacher"]
    assert_same_teacher(vit, loaded)


def test_open_clip_train_checkpoint_loads(vit, tmp_path):
    path = str(tmp_path / "epoch_3.pt")
    state = {"module." + k: v for k, v in vit.model.state_dict().items()}
    torch.save({"epoch": 3, "name": "run", "state_dict": state}, path)
    assert_same_teacher(vit, load_teacher(TeacherConfig(model="tiny-vit", pretrained=path)))


def test_s3_checkpoint_loads_identically(vit, tmp_path, s3_bucket):
    local = str(tmp_path / "teacher.pt")
    torch.save(vit.model.state_dict(), local)
    url = f"{s3_bucket}/ckpt/teacher.pt"
    s3fs.S3FileSystem().put_file(local, url)
    loaded = teacher_weights.load_teacher(TeacherConfig(model="tiny-vit", pretrained=url))
    assert loaded.pretrained_source == url and not loaded.random_init
    assert_same_teacher(vit, loaded)
    # the pure model layer fetches nothing itself: a URL without a fetcher is one clear error
    with pytest.raises(ValueError, match="is a URL.*formats.teacher_weights"):
        load_teacher(TeacherConfig(model="tiny-vit", pretrained=url))


def test_pretrained_forms_are_routed(tmp_path):
    # A known tag goes to open_clip untouched (no download here).
    assert resolve_pretrained("RN50", "openai", str(tmp_path)) == "openai"
    assert resolve_pretrained("tiny-vit", "", str(tmp_path)) is None
    with pytest.raises(ValueError, match="open_clip tag.*local file.*fsspec URL"):
        load_teacher(TeacherConfig(model="tiny-vit", pretrained="no-such-tag-or-file"))
    # A tag of another model is not a tag of this one.
    with pytest.raises(ValueError, match="open_clip tag"):
        resolve_pretrained("tiny-vit", "openai", str(tmp_path))


def test_pretrained_kinds_and_a_missing_file_told_from_its_name(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    assert [pretrained_kind("RN50", p) for p in ("", "openai", str(weights), "s3://b/w.pt")] == \
        ["random", "tag", "file", "url"]
    # a folder or a weights suffix is a file name (no tag has either), missing: none of the kinds
    assert pretrained_kind("RN50", str(tmp_path / "nope.pt")) is None
    assert pretrained_kind("RN50", "nope.safetensors") is None
    assert pretrained_kind("RN50", "no-such-tag") is None


def test_architectures_are_open_clips_list_read_without_importing_it():
    # the job checks a model name with architectures() before open_clip is imported: the two lists agree
    assert architectures() == set(open_clip.list_models())
    assert {"tiny-rn", "tiny-vit", "ViT-B-16", "RN50"} <= architectures()


def test_bf16_teacher_is_close_to_fp32_and_returns_fp32(vit):
    low = load_teacher(TeacherConfig(model="tiny-vit", precision="bf16"))
    low.model.load_state_dict(vit.model.state_dict())
    assert low.model.visual.conv1.weight.dtype == torch.bfloat16
    imgs = images(2, 64, 64)
    dense, ref = dense_features(low, imgs), dense_features(vit, imgs)
    assert dense.dtype == torch.float32
    # bf16 keeps ~3 significant digits; features are O(1).
    torch.testing.assert_close(dense, ref, atol=0.1, rtol=0.05)


def test_config_rejects_unknown_model_and_precision():
    with pytest.raises(ValueError, match="unknown open_clip model"):
        TeacherConfig(model="tiny-vvit")
    with pytest.raises(ValueError, match="precision"):
        TeacherConfig(precision="fp8")


def test_the_teacher_baseline_uses_the_dense_features_the_student_was_trained_on(vit):
    imgs = images(1, 64, 64)
    normalised = (imgs - torch.tensor(vit.mean).view(1, 3, 1, 1)) / torch.tensor(vit.std).view(1, 3, 1, 1)
    for last_block in ("maskclip", "clearclip"):
        out = TeacherNet(vit, last_block)(imgs)
        torch.testing.assert_close(out.clip, dense_features(vit.model, normalised, last_block=last_block))
    assert not torch.allclose(TeacherNet(vit)(imgs).clip, TeacherNet(vit, "clearclip")(imgs).clip, atol=1e-2)


def test_shift_moves_the_image_and_repeats_its_border():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert shift(x, 0, 0).equal(x)
    assert shift(x, 1, 0)[0, 0].tolist() == [[4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [12, 13, 14, 15]]
    assert shift(x, 0, -2)[0, 0, 0].tolist() == [0, 0, 0, 1]


def test_the_matched_teacher_stitches_shifted_passes_onto_a_finer_grid(vit):
    imgs = images(1, 64, 64)
    factor = 4
    matched, native = TeacherNet(vit, factor=factor), TeacherNet(vit)
    assert matched.output_stride * factor == native.output_stride
    out = matched(imgs).clip
    assert out.shape[-2:] == (64 // matched.output_stride,) * 2
    # fine cell (k f + a, l f + b) is coarse cell (k, l) of the pass shifted by offsets a, b; the offsets
    # centre each coarse cell on its fine cell: a * fine - (patch - fine) / 2
    fine, patch = matched.output_stride, native.output_stride
    offsets = [a * fine - (patch - fine) // 2 for a in range(factor)]
    normalised = (imgs - torch.tensor(vit.mean).view(1, 3, 1, 1)) / torch.tensor(vit.std).view(1, 3, 1, 1)
    for a, b in ((0, 0), (1, 3), (3, 2)):
        coarse = dense_features(vit.model, shift(normalised, offsets[a], offsets[b]))
        torch.testing.assert_close(out[..., a::factor, b::factor], coarse, atol=1e-5, rtol=1e-4)
    assert offsets[0] < 0 < offsets[-1] and offsets[0] + offsets[-1] == 0  # symmetric about the unshifted image
    with pytest.raises(ValueError, match="must divide"):
        TeacherNet(vit, factor=3)
