from __future__ import annotations

import math

import pytest
import torch

from monai_shpeft.networks.token_selection import attention_received, num_selected_tokens, select_important_tokens


def direct_attention_received(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """The whole ``[B, H, N, N]`` attention map, averaged over heads and queries."""
    return torch.softmax(query @ key.transpose(-2, -1) * scale, dim=-1).mean(dim=(1, 2))


def hand_made_attention() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries and keys whose attention map is known in closed form.

    Every query is ``e0`` and the key of token ``j`` in head ``h`` is ``a[b, h, j] * e0``, so every attention row of
    head ``h`` is ``softmax(a[b, h])`` and the attention received is ``mean_h softmax(a[b, h])``.
    """
    logits = torch.tensor(
        [
            [[0.0, 0.0, 0.0, 4.0, 0.0], [0.0, 3.0, 0.0, 0.0, 0.0]],  # head 0 looks at token 3, head 1 at token 1
            [[2.0, 2.0, 0.0, 0.0, 6.0], [1.0, 0.0, 0.0, 0.0, 5.0]],  # both heads look at token 4
        ]
    )
    batch, heads, tokens = logits.shape
    e0 = torch.zeros(4)
    e0[0] = 1.0
    query = e0.expand(batch, heads, tokens, 4).clone()
    key = logits[..., None] * e0
    expected = torch.softmax(logits, dim=-1).mean(dim=1)
    return query, key, expected


def test_hand_made_attention_map_is_received_as_expected() -> None:
    """With every row of the map known, the scores are the closed form and the most-attended tokens come first."""
    query, key, expected = hand_made_attention()
    scores = attention_received(query, key, scale=1.0)
    assert scores.shape == (2, 5)
    torch.testing.assert_close(scores, expected, atol=1e-7, rtol=0)
    # closed form of batch 0, token 3: only head 0 prefers it
    e4, e3 = math.exp(4.0), math.exp(3.0)
    assert scores[0, 3].item() == pytest.approx((e4 / (e4 + 4) + 1 / (e3 + 4)) / 2, abs=1e-7)
    assert scores[0].argsort(descending=True)[:2].tolist() == [3, 1]
    assert scores[1].argmax().item() == 4
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(2), atol=1e-6, rtol=0)
    assert select_important_tokens(scores, 0.4).tolist() == [[1, 3], [0, 4]]


def test_random_queries_match_the_full_softmax_map_and_rows_sum_to_one() -> None:
    """On queries that differ per row, the scores equal ``softmax(q k^T * scale).mean((1, 2))``."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(3, 4, 11, 8, generator=generator)
    key = torch.randn(3, 4, 11, 8, generator=generator)
    for scale in (None, 0.7):
        scores = attention_received(query, key, scale=scale)
        expected = direct_attention_received(query, key, 8**-0.5 if scale is None else scale)
        torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(scores.sum(dim=1), torch.ones(3), atol=1e-6, rtol=0)
        assert (scores > 0).all()


@pytest.mark.parametrize("query_chunk", [1, 3, 11, 64])
def test_chunked_queries_give_the_same_scores(query_chunk: int) -> None:
    """Materialising the map a few rows at a time (11 tokens: 1, 3, exact and oversize chunks) changes nothing."""
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(2, 3, 11, 4, generator=generator)
    key = torch.randn(2, 3, 11, 4, generator=generator)
    whole = attention_received(query, key, query_chunk=256)
    torch.testing.assert_close(attention_received(query, key, query_chunk=query_chunk), whole, atol=1e-6, rtol=0)


def test_half_precision_inputs_are_scored_in_float32() -> None:
    """Scores of float16 queries/keys are float32 and agree with the float32 computation."""
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(1, 2, 9, 4, generator=generator)
    key = torch.randn(1, 2, 9, 4, generator=generator)
    scores = attention_received(query.half(), key.half())
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, attention_received(query, key), atol=2e-3, rtol=0)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\(1, 2, 5, 4\) and \(1, 2, 6, 4\)"):
        attention_received(torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 6, 4))
    with pytest.raises(ValueError, match="B, H, N, d"):
        attention_received(torch.zeros(2, 5, 4), torch.zeros(2, 5, 4))


def test_selection_on_hand_written_scores() -> None:
    """Exactly the top tokens are kept, in position order; a tie at the cut goes to the earlier token."""
    scores = torch.tensor(
        [
            [0.1, 0.4, 0.2, 0.4, 0.3],  # tie between the two best
            [0.5, 0.5, 0.5, 0.5, 0.5],  # all tied: the first ones
            [0.3, 0.1, 0.3, 0.3, 0.9],  # tie across the cut: positions 0 and 2 beat 3
            [0.0, 0.0, 0.0, 0.0, 1.0],  # the best is last
        ]
    )
    two = select_important_tokens(scores, 0.4)  # ceil(0.4 * 5) = 2
    assert two.dtype == torch.long
    assert two.tolist() == [[1, 3], [0, 1], [0, 4], [0, 4]]
    three = select_important_tokens(scores, 0.6)  # 3
    assert three.tolist() == [[1, 3, 4], [0, 1, 2], [0, 2, 4], [0, 1, 4]]
    assert select_important_tokens(scores, 0.01).tolist() == [[1], [0], [4], [4]]
    assert select_important_tokens(scores, 1.0).tolist() == [list(range(5))] * 4


def test_selection_is_sorted_and_matches_topk_on_distinct_scores() -> None:
    scores = torch.rand(6, 50, generator=torch.Generator().manual_seed(3))
    index = select_important_tokens(scores, 0.2)
    assert index.shape == (6, 10)
    assert torch.equal(index, torch.topk(scores, 10, dim=1).indices.sort(dim=1).values)
    assert (index.diff(dim=1) > 0).all()
    with pytest.raises(ValueError, match="B, N"):
        select_important_tokens(torch.rand(50), 0.2)


@pytest.mark.parametrize(
    ("num_tokens", "ratio", "expected"),
    [
        (1025, 0.2, 205),  # ViT-B/16 at 512 px: 1024 patches + class token
        (17, 0.2, 4),  # ceil(3.4)
        (197, 0.2, 40),
        (10, 0.3, 3),  # 0.3 * 10 = 3.0000000000000004 in floating point: still 3
        (10, 0.7, 7),  # 7.000000000000001
        (17, 1.0, 17),
        (10, 0.001, 1),  # never fewer than one
        (1, 0.2, 1),
    ],
)
def test_num_selected_tokens(num_tokens: int, ratio: float, expected: int) -> None:
    assert num_selected_tokens(num_tokens, ratio) == expected


@pytest.mark.parametrize("ratio", [0.0, 1.5, -0.2])
def test_num_selected_tokens_rejects_ratios_outside_unit_interval(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"token ratio must be in \(0, 1\]"):
        num_selected_tokens(17, ratio)
    with pytest.raises(ValueError, match="token ratio"):
        select_important_tokens(torch.rand(1, 17), ratio)


def test_num_selected_tokens_rejects_empty_layers() -> None:
    with pytest.raises(ValueError, match="num_tokens must be positive"):
        num_selected_tokens(0, 0.2)
