"""The NÜWA model: parameter count, causality, window centring, backends, learning."""
import os

import pytest
import torch

from kernels import nearby_mask
from model.config import NuwaConfig
from model.nuwa import Nuwa, rotary_angles, rotate


def tiny(**overrides) -> Nuwa:
    torch.manual_seed(0)
    config = NuwaConfig.from_preset("tiny", text_vocab_size=64, codebook_size=32, frames=3, grid_height=5,
                                    grid_width=6, width=32, heads=2, encoder_layers=1, decoder_layers=2)
    return Nuwa(config.replace(**overrides)).eval()


def batch(model, frames, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = model.config
    text = torch.randint(0, c.text_vocab_size, (2, c.text_length), generator=gen)
    codes = torch.randint(0, c.codebook_size, (2, frames, c.grid_height, c.grid_width), generator=gen)
    return text, codes


@pytest.mark.parametrize("preset", ["nuwa-336", "nuwa-256"])
def test_paper_preset_has_870m_parameters_without_embeddings(preset):
    with torch.device("meta"):
        model = Nuwa(NuwaConfig.from_preset(preset))
    count = model.num_parameters(exclude_embeddings=True)
    assert abs(count - 870e6) / 870e6 <= 0.03, count
    assert model.num_parameters(exclude_embeddings=False) > count + 12288 * 1280


@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("frames", [1, 3])
def test_logits_at_t_ignore_tokens_from_t_on(frames, rotary):
    model = tiny(rotary=rotary)
    text, codes = batch(model, frames)
    logits, _ = model(text, codes)
    n = codes[0].numel()
    for t in (0, 1, 7, n // 2, n - 1):
        changed = codes.clone().view(2, -1)
        changed[:, t:] = torch.randint(0, model.config.codebook_size, changed[:, t:].shape)
        new_logits, _ = model(text, changed.view_as(codes))
        torch.testing.assert_close(new_logits[:, : t + 1], logits[:, : t + 1], atol=1e-6, rtol=0)
        if t + 1 < n:
            assert not torch.allclose(new_logits[:, t + 1:], logits[:, t + 1:])


def test_text_padding_is_never_read():
    """Pad slots after a caption are not keys: what the encoder computes there changes no logit."""
    model = tiny()
    text, codes = batch(model, 3)
    text[:, 0], text[0, 9:], text[1, 30:] = 2, 0, 0  # captions of 9 and 30 ids (<bos> = 2), then pad id 0
    logits, _ = model(text, codes)
    with torch.no_grad():
        model.text_pos.weight[40:] += torch.randn_like(model.text_pos.weight[40:])  # only pad slots move
    torch.testing.assert_close(model(text, codes)[0], logits)
    text[0, 50] = 5  # a real id there is read
    assert not torch.allclose(model(text, codes)[0][0], logits[0])
    keys = model.text_keys(torch.zeros(1, 77, dtype=torch.long))
    assert keys[0, 0] and not keys[0, 1:].any()  # an all-pad text keeps one key: no empty softmax


def _slots_reaching_logit(model, text, codes, t):
    """Decoder input slots whose value changes logit t (gradient ≠ 0)."""
    captured = {}

    def make_leaf(module, args):
        x = args[0].detach().requires_grad_()
        captured["x"] = x
        return (x, *args[1:])

    handle = model.decoder[0].register_forward_pre_hook(make_leaf)
    logits, _ = model(text, codes)
    handle.remove()
    logits[0, t].sum().backward()
    return set(captured["x"].grad[0].abs().sum(-1).nonzero().flatten().tolist())


@pytest.mark.parametrize("rotary, spatial_wrap", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("frames", [1, 3])
def test_window_is_centred_on_the_predicted_token(frames, rotary, spatial_wrap):
    model = tiny(decoder_layers=1, rotary=rotary, spatial_wrap=spatial_wrap)
    text, codes = batch(model, frames)
    grid = (frames, model.config.grid_height, model.config.grid_width)
    mask = nearby_mask(grid, grid, model.extent_for(grid), causal=True, wrap=model.wrap())
    for t in (0, 1, 5, 13, 2 * 6 + 3, codes[0].numel() - 1):
        expected = {0, t} | {u + 1 for u in mask[t].nonzero().flatten().tolist()}  # <bos>, own slot, window keys
        assert _slots_reaching_logit(model, text, codes, t) == expected
    if spatial_wrap and frames == 3:  # frame 1, row 0, column 5 sees frame 0's last row and column 0
        assert {4 * 6 + 5 + 1, 4 * 6 + 0 + 1, 30 + 0 + 1} <= _slots_reaching_logit(model, text, codes, 30 + 5)


def test_extents_come_from_config():
    model = tiny(decoder_layers=1, video_extent=(1, 1, 1))
    text, codes = batch(model, 3)
    t = 2 * 30 + 2 * 6 + 3  # frame 2, row 2, column 3: a 1×1×1 window holds only the token itself
    assert _slots_reaching_logit(model, text, codes, t) == {0, t}


GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA backends need a GPU")
VARIANTS = {  # the models compared with the dense reference on each device
    "cpu": (dict(attention_backend="blocked"), dict(activation_checkpointing=True),
            dict(activation_checkpointing="attention")),
    "cuda": (dict(attention_backend="blocked"), dict(attention_backend="flex"), dict(attention_backend="fused")),
}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
@pytest.mark.parametrize("rotary, spatial_wrap", [(False, False), (True, False), (True, True)])
def test_backends_agree_and_checkpointing_keeps_gradients(rotary, spatial_wrap, device):
    """Loss and gradients of every backend (and of checkpointed blocks) equal the dense reference's;
    on the GPU a bf16 autocast step also stays near the fp32 loss."""
    common = dict(rotary=rotary, spatial_wrap=spatial_wrap)
    variants = VARIANTS[device]
    if device == "cpu" and spatial_wrap and os.environ.get("TRITON_INTERPRET") == "1":  # tests/conftest.py
        # one case, with a 12-token caption: Triton's interpreter walks every text slot in Python
        variants += (dict(attention_backend="fused"),)
        common["text_length"] = 12
    text, codes = (t.to(device) for t in batch(tiny(**common), 3))
    results = []
    for overrides in (dict(attention_backend="reference"), *variants):
        model = tiny(**common, **overrides).to(device).train()
        _, loss = model(text, codes)
        loss.backward()
        results.append((loss.detach(), model.decoder[0].self_attn.query.weight.grad.clone()))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, results[0][1], atol=1e-5, rtol=1e-5 if device == "cpu" else 1e-4)
    if device == "cuda":
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = tiny(rotary=rotary, attention_backend="flex").cuda().train()(text, codes)
        assert abs(loss.item() - results[0][0].item()) < 0.02 * results[0][0].item()


def test_compiled_blocks_equal_eager():
    """model.compile: torch.compile of every block, in place (same weight names), same loss and gradients."""
    small = dict(encoder_layers=1, decoder_layers=1, frames=2)
    text, codes = batch(tiny(**small), 2)
    results = []
    for compiled in (False, True):
        model = tiny(compile=compiled, **small).train()
        _, loss = model(text, codes)
        loss.backward()
        results.append((loss.detach(), {k: p.grad for k, p in model.named_parameters()}))
    (eager_loss, eager_grads), (loss, grads) = results
    assert grads.keys() == eager_grads.keys()
    torch.testing.assert_close(loss, eager_loss, atol=1e-6, rtol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], atol=1e-6, rtol=1e-5)


def test_rotary_scores_depend_on_the_offset_only():
    grid, head_dim = (3, 4, 5), 16
    angles = rotary_angles(grid, head_dim)  # (60, 8)
    a, b = torch.randn(2, 1, 1, 1, head_dim).unbind(0)

    def score(query_at, key_at):
        index = [s * 20 + h * 5 + w for s, h, w in (query_at, key_at)]
        return (rotate(a, angles[index[0]: index[0] + 1]) * rotate(b, angles[index[1]: index[1] + 1])).sum()

    torch.testing.assert_close(score((1, 2, 3), (0, 1, 4)), score((2, 3, 1), (1, 2, 2)))  # offset (1, 1, -1)
    for other in ((0, 2, 4), (1, 1, 4), (0, 1, 3)):  # one axis changed: a different offset
        assert not torch.allclose(score((1, 2, 3), other), score((1, 2, 3), (0, 1, 4)))
    torch.testing.assert_close(rotate(a.expand(1, 1, 60, head_dim), angles).norm(dim=-1), a.norm().expand(1, 1, 60))
    with pytest.raises(ValueError, match="even head size"):
        NuwaConfig.from_preset("tiny", width=12, heads=4, rotary=True)


def test_wrapped_rotary_offsets_go_round_the_frame():
    """On wrapped rows and columns, the last row is one before the first: query at row 0, key at the last
    row scores as query at row 1, key at row 0. Time does not wrap, and without wrap neither do rows."""
    grid, head_dim = (3, 4, 5), 16
    a, b = torch.randn(2, 1, 1, 1, head_dim).unbind(0)

    def score(angles, query_at, key_at):
        index = [s * 20 + h * 5 + w for s, h, w in (query_at, key_at)]
        return (rotate(a, angles[index[0]: index[0] + 1]) * rotate(b, angles[index[1]: index[1] + 1])).sum()

    wrapped = rotary_angles(grid, head_dim, wrap=(False, True, True))
    torch.testing.assert_close(score(wrapped, (1, 0, 0), (0, 3, 4)), score(wrapped, (1, 1, 1), (0, 0, 0)))
    assert not torch.allclose(score(wrapped, (2, 0, 0), (0, 0, 0)), score(wrapped, (0, 0, 0), (1, 0, 0)))
    plain = rotary_angles(grid, head_dim)
    assert not torch.allclose(score(plain, (1, 0, 0), (0, 3, 4)), score(plain, (1, 1, 1), (0, 0, 0)))


def test_tiny_model_learns_a_fixed_batch():
    model = tiny().train()
    text, codes = batch(model, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        _, loss = model(text, codes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(32.0)).item(), abs=0.3)
    assert losses[-1] < 0.5 * losses[0]


def test_config_presets_and_bad_values():
    config = NuwaConfig.from_preset("nuwa-336")
    assert (config.width, config.heads, config.encoder_layers, config.decoder_layers) == (1280, 20, 12, 24)
    assert config.video_grid == (10, 21, 21) and config.image_extent == (1, 3, 3)
    assert NuwaConfig.from_preset("nuwa-256").video_grid == (4, 32, 32)
    with pytest.raises(ValueError, match="unknown NÜWA preset"):
        NuwaConfig.from_preset("nuwa-1b")
    with pytest.raises(ValueError, match="unknown config key"):
        NuwaConfig.from_preset("tiny", layers=3)
    with pytest.raises(ValueError, match="width"):
        NuwaConfig.from_preset("tiny", width="wide")
    model = tiny()
    text, codes = batch(model, 3)
    with pytest.raises(ValueError, match="code grid"):
        model(text, codes[:, :, :4])
    with pytest.raises(ValueError, match="text has 10 positions"):
        model(text[:, :10], codes)
