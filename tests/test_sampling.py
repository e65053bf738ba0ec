"""Sampling: KV-cached decoding equals full recomputation; keep masks, top-k/top-p, bad input."""
import copy

import pytest
import torch

from model.config import NuwaConfig
from model.nuwa import Nuwa
from model.sampling import SamplingConfig, generate, sample_logits


@pytest.fixture(scope="module", params=[(False, False), (True, False), (True, True)],
                ids=["absolute", "rotary", "rotary-wrapped"])
def model(request):
    torch.manual_seed(0)
    rotary, spatial_wrap = request.param
    config = NuwaConfig.from_preset("tiny", text_vocab_size=64, codebook_size=32, frames=3, grid_height=4,
                                    grid_width=5, width=32, heads=2, encoder_layers=1, decoder_layers=2,
                                    rotary=rotary, spatial_wrap=spatial_wrap, sketch_codebook_size=16)
    return Nuwa(config).eval()


@pytest.mark.parametrize("grid", [(1, 4, 5), (3, 4, 5)])
@pytest.mark.parametrize("sampling", [SamplingConfig(), SamplingConfig(temperature=0.8, top_k=8, top_p=0.9),
                                      SamplingConfig(temperature=0)])
def test_cached_decoding_gives_the_tokens_of_uncached_decoding(model, grid, sampling):
    text = torch.randint(1, 64, (3, 77), generator=torch.Generator().manual_seed(1))
    text[torch.arange(77) >= torch.tensor([[5], [12], [77]])] = 0  # captions of 5, 12 and 77 ids, then padding
    runs = [generate(model, text, grid, sampling=sampling, generator=torch.Generator().manual_seed(7), use_cache=c)
            for c in (True, False)]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (3, *grid) and int(runs[0].max()) < 32


@pytest.mark.parametrize("grid", [(1, 4, 5), (3, 4, 5)], ids=["s2i", "s2v"])
def test_cached_decoding_from_a_sketch_gives_the_tokens_of_uncached_decoding(model, grid):
    """S2I and S2V: the condition is a sketch on the code grid, read through the image or video window."""
    sketch = torch.randint(0, 16, (2, *grid), generator=torch.Generator().manual_seed(2))
    text = torch.zeros(2, 77, dtype=torch.long)  # unused under a sketch
    runs = [generate(model, text, grid, sketch=sketch, sampling=SamplingConfig(top_k=8), use_cache=c,
                     generator=torch.Generator().manual_seed(4)) for c in (True, False)]
    assert torch.equal(runs[0], runs[1])
    other = generate(model, text, grid, sketch=sketch.roll(1, 0), sampling=SamplingConfig(temperature=0))
    assert not torch.equal(other, generate(model, text, grid, sketch=sketch, sampling=SamplingConfig(temperature=0)))
    with pytest.raises(ValueError, match="a sketch condition has none"):
        generate(model, text, grid, sketch=sketch, sampling=SamplingConfig(guidance=2.0), unconditional=text[:1])


def test_classifier_free_guidance(model):
    """Cached equals uncached under guidance; an unconditional text equal to the caption changes nothing;
    a different one does."""
    grid = (3, 4, 5)
    text = torch.randint(1, 64, (2, 77), generator=torch.Generator().manual_seed(5))
    none = torch.zeros(1, 77, dtype=torch.long)
    none[0, :3] = torch.tensor([2, 7, 3])
    guided = SamplingConfig(temperature=0.9, top_k=8, guidance=3.0)
    runs = [generate(model, text, grid, sampling=guided, unconditional=none, use_cache=c,
                     generator=torch.Generator().manual_seed(6)) for c in (True, False)]
    assert torch.equal(runs[0], runs[1])
    greedy = generate(model, text, grid, sampling=SamplingConfig(temperature=0))
    same = generate(model, text, grid, sampling=SamplingConfig(temperature=0, guidance=3.0), unconditional=text)
    assert torch.equal(same, greedy)
    pushed = generate(model, text, grid, sampling=SamplingConfig(temperature=0, guidance=3.0), unconditional=none)
    assert not torch.equal(pushed, greedy)
    with pytest.raises(ValueError, match="unconditional"):
        generate(model, text, grid, sampling=guided)


def test_kept_positions_are_copied_and_decoded_like_the_reference(model):
    grid = (3, 4, 5)
    text = torch.randint(0, 64, (2, 77), generator=torch.Generator().manual_seed(2))
    reference = torch.randint(0, 32, (2, *grid), generator=torch.Generator().manual_seed(3))
    keep = torch.zeros(grid, dtype=torch.bool)
    keep[0] = True                       # V2V / TV2V: the first frame is given
    keep[1:, 1:3, 1:4] = True            # TI2I-style: a kept block inside later frames
    out = generate(model, text, grid, reference=reference, keep=keep, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out[:, keep], reference[:, keep])
    uncached = generate(model, text, grid, reference=reference, keep=keep, generator=torch.Generator().manual_seed(4),
                        use_cache=False)
    assert torch.equal(out, uncached)  # the uncached path feeds kept tokens through the full decoder


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_cached_decoding_gives_the_tokens_of_uncached_decoding(model):
    model = copy.deepcopy(model).cuda()
    text = torch.randint(1, 64, (3, 77), generator=torch.Generator().manual_seed(1)).cuda()
    keep = torch.zeros(3, 4, 5, dtype=torch.bool)
    keep[0] = True
    reference = torch.randint(0, 32, (3, 3, 4, 5), generator=torch.Generator().manual_seed(3))
    for sampling, kept in ((SamplingConfig(temperature=0), {}), (SamplingConfig(top_k=8), {}),
                           (SamplingConfig(), dict(keep=keep, reference=reference))):
        runs = [generate(model, text, (3, 4, 5), sampling=sampling, use_cache=c, **kept,
                         generator=torch.Generator("cuda").manual_seed(7)) for c in (True, False)]
        assert runs[0].is_cuda and torch.equal(runs[0], runs[1])


def test_sample_logits_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    assert sample_logits(logits[:1], SamplingConfig(temperature=0), gen).item() == 4
    top2 = sample_logits(logits, SamplingConfig(top_k=2), gen)
    assert set(top2.tolist()) == {3, 4}
    # softmax of [0..4]: p(4) = 0.636, p(3) = 0.234 → top-p 0.8 keeps {4, 3}, top-p 0.5 keeps {4}.
    assert set(sample_logits(logits, SamplingConfig(top_p=0.8), gen).tolist()) == {3, 4}
    assert set(sample_logits(logits, SamplingConfig(top_p=0.5), gen).tolist()) == {4}
    assert len(set(sample_logits(logits, SamplingConfig(), gen).tolist())) == 5


def test_bad_requests(model):
    text = torch.zeros(1, 77, dtype=torch.long)
    with pytest.raises(ValueError, match="no reference codes"):
        generate(model, text, (1, 4, 5), keep=torch.ones(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="code grid"):
        generate(model, text, (4, 4, 5))
