import pytest
import torch

from data.tokenizer import EOT_ID, MASK_ID, SOT_ID, CaptionTokenizer
from engine.config import ConfigError, load_config
from engine.method.nam import apply_mask, mask_probabilities, uniform_probabilities, valid_token_mask


def caption_ids() -> torch.Tensor:
    return CaptionTokenizer(16)(["a man in a red shirt and blue jeans", "woman", "a long caption " * 10])


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


def test_masker_scores_this_epoch_and_masks_the_noisy_word_more_next_epoch():
    """score() records r = 1 - max cosine per token; mask() in the next epoch turns it into higher masking
    probabilities for the token that matched no patch. Epoch 0 masks uniformly, and EM never reads scores."""
    from engine.config import NamConfig
    from engine.method.nam import TokenMasker
    from engine.method.noise_table import ShardedNoiseTable

    ids = caption_ids()[:1].repeat(400, 1)  # one caption, many draws
    caption_id = torch.arange(400)
    valid = valid_token_mask(ids)
    noisy = int(valid[0].nonzero()[2])  # the third word matches no patch; every other word matches patch 0
    patches = torch.eye(4, 8).unsqueeze(0).repeat(400, 1, 1)  # (B, M=4, E=8)
    tokens = patches[:, :1].repeat(1, ids.shape[1], 1).clone()  # (B, N, E), all equal to patch 0
    tokens[:, noisy] = torch.eye(8)[7]  # orthogonal to every patch: r = 1
    masker = TokenMasker(NamConfig(tap_layer=1, kernel="torch"), ShardedNoiseTable(400, ids.shape[1]))
    first, unscored = masker.mask(ids, caption_id, epoch=0, generator=torch.Generator().manual_seed(0))
    assert unscored == 0
    masker.score(caption_id, ids, tokens, patches)
    masker.noise_table.end_epoch(caption_id)
    second, unscored = masker.mask(ids, caption_id, epoch=1, generator=torch.Generator().manual_seed(0))
    assert unscored == 0
    changed_first = (first != ids).float().mean(0)
    changed_second = (second != ids).float().mean(0)
    assert changed_second[noisy] > 2 * changed_first[noisy]  # the noisy word is masked far more often
    others = valid[0].clone()
    others[noisy] = False
    assert changed_second[others].mean() < changed_first[others].mean()  # the mean stays p, so the rest less
    em = TokenMasker(NamConfig(masking="em", tap_layer=1), None)
    assert not em.needs_scores and em.mask(ids, caption_id, epoch=3, generator=torch.Generator())[1] == 0
    none = TokenMasker(NamConfig(masking="none", tap_layer=1), None)
    assert none.mask(ids, caption_id, epoch=3, generator=torch.Generator())[0] is ids


def test_force_mask_first_token_is_the_references_rule():
    """A caption with no drawn word: first_token masks position 1 with <|mask|> (never 80/10/10); most_probable
    draws the most probable valid word; a caption without words is left alone either way."""
    sot, eot = SOT_ID, EOT_ID
    ids = torch.tensor([[sot, 320, 1794, 2866, eot, 0], [sot, 320, 1794, 2866, eot, 0], [sot, eot, 0, 0, 0, 0]])
    valid = valid_token_mask(ids)
    nothing = torch.zeros(ids.shape)
    probabilities = nothing.clone()
    probabilities[:, 3] = 1e-3  # rarely drawn, but the most probable: forced when not drawn
    for seed in range(20):
        masked, drawn = apply_mask(
            ids, probabilities, valid, torch.Generator().manual_seed(seed), force_mask="first_token"
        )
        assert drawn[:2].nonzero()[:, 1].tolist() == [1, 1] and not drawn[2].any()
        assert (masked[:2, 1] == MASK_ID).all() and torch.equal(masked[:, 2:], ids[:, 2:])
        assert torch.equal(masked[2], ids[2])
        _, drawn = apply_mask(
            ids, probabilities, valid, torch.Generator().manual_seed(seed), force_mask="most_probable"
        )
        assert drawn[:2].nonzero()[:, 1].tolist() == [3, 3] and not drawn[2].any()


def test_force_mask_is_validated_and_the_paper_configs_use_the_references_rule():
    with pytest.raises(ConfigError, match="nam.force_mask must be one of most_probable, first_token"):
        load_config(None, ["nam.force_mask=first"])
    assert load_config().nam.force_mask == "most_probable"
    for name in ("pretrain_luperson_mllm", "finetune_cuhk", "finetune_icfg", "finetune_rstp"):
        assert load_config(f"configs/{name}.yaml").nam.force_mask == "first_token", name
