import pytest
import torch

from data.tokenizer import EOT_ID, MASK_ID, SOT_ID, CLIPTokenizer
from engine.nam import apply_mask, mask_probabilities, uniform_probabilities, valid_token_mask


def caption_ids() -> torch.Tensor:
    return CLIPTokenizer(16)(["a man in a red shirt and blue jeans", "woman", "a long caption " * 10])


def test_valid_tokens_lie_strictly_between_sot_and_eot():
    ids = caption_ids()
    valid = valid_token_mask(ids)
    for row, flags in zip(ids, valid, strict=True):
        eot = int((row == EOT_ID).nonzero()[0])
        assert row[0] == SOT_ID
        assert flags.tolist() == [0 < i < eot for i in range(len(row))]
    assert int(valid[1].sum()) == 1  # "woman" is one token


def test_probabilities_are_recentred_to_p_and_zero_on_invalid():
    valid = torch.tensor([[False, True, True, True, False, False]])
    noise = torch.tensor([[9.0, 0.2, 0.3, 0.4, 9.0, 9.0]])
    probabilities = mask_probabilities(noise, valid, 0.15)
    torch.testing.assert_close(probabilities, torch.tensor([[0.0, 0.05, 0.15, 0.25, 0.0, 0.0]]))
    assert float(probabilities[valid].mean()) == pytest.approx(0.15)


def test_clipping_follows_the_reference_and_can_be_turned_off():
    valid = torch.tensor([[True, True, True]])
    noise = torch.tensor([[0.0, 0.0, 3.0]])  # mean 1: r' = -0.85, -0.85, 2.15
    torch.testing.assert_close(mask_probabilities(noise, valid, 0.15), torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(mask_probabilities(noise, valid, 0.15, clip=False), torch.tensor([[-0.85, -0.85, 2.15]]))


def test_noisier_tokens_are_masked_more_often():
    valid = torch.ones(1, 6, dtype=torch.bool)
    noise = torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.1, 0.5]])
    probabilities = mask_probabilities(noise, valid, 0.15).expand(4000, 6)
    ids = torch.full((4000, 6), 320)
    _, drawn = apply_mask(ids, probabilities, valid.expand(4000, 6), torch.Generator().manual_seed(0))
    rates = drawn.float().mean(0)
    assert rates[5] > 3 * rates[:5].mean()


def test_mask_is_bert_style_and_never_touches_specials():
    ids = caption_ids().repeat(300, 1)
    valid = valid_token_mask(ids)
    masked, drawn = apply_mask(ids, uniform_probabilities(valid, 0.3), valid, torch.Generator().manual_seed(1))
    assert not (drawn & ~valid).any()
    assert torch.equal(masked[~valid], ids[~valid])  # SOT, EOT and padding unchanged
    assert drawn.any(dim=1).all()  # at least one token per caption
    became_mask = (masked == MASK_ID) & drawn
    changed_other = (masked != ids) & (masked != MASK_ID) & drawn
    share_mask = float(became_mask.sum() / drawn.sum())
    share_random = float(changed_other.sum() / drawn.sum())
    assert share_mask == pytest.approx(0.8, abs=0.03)
    assert share_random == pytest.approx(0.1, abs=0.03)  # a random token can equal the original, rarely
    assert int(masked.max()) == EOT_ID
    torch.testing.assert_close(masked.argmax(dim=1), ids.argmax(dim=1))  # EOT pooling still finds EOT


def test_each_caption_gets_one_masked_token_even_at_p_zero():
    ids = caption_ids()
    valid = valid_token_mask(ids)
    probabilities = torch.zeros(ids.shape).masked_fill(valid, 0.0)
    probabilities[0, 3] = 1e-9  # the most probable token is the one forced
    _, drawn = apply_mask(ids, probabilities, valid, torch.Generator().manual_seed(0))
    assert drawn.sum(dim=1).tolist() == [1, 1, 1]
    assert bool(drawn[0, 3])


def test_masking_is_deterministic_given_the_generator():
    ids = caption_ids()
    valid = valid_token_mask(ids)
    first = apply_mask(ids, uniform_probabilities(valid, 0.5), valid, torch.Generator().manual_seed(7))[0]
    again = apply_mask(ids, uniform_probabilities(valid, 0.5), valid, torch.Generator().manual_seed(7))[0]
    other = apply_mask(ids, uniform_probabilities(valid, 0.5), valid, torch.Generator().manual_seed(8))[0]
    assert torch.equal(first, again) and not torch.equal(first, other)
