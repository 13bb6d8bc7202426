import pytest

from cream.plugins.contracts import PairStats
from cream.rewards.pairing import choose_pair


@pytest.mark.parametrize(
    "rewards, texts, expected, dropped_field",
    [
        ([0.1, 0.5, -0.2], ["a", "b", "c"], (1, 2), None),
        ([0.5, 0.5, -0.2], ["a", "b", "c"], (0, 2), None),  # tied best: first index
        ([0.3, 0.3, 0.3], ["a", "b", "c"], None, "dropped_all_equal"),
        ([0.9, 0.1], ["same", " same "], None, "dropped_identical_text"),
        ([None, 0.4, None], ["a", "b", "c"], None, "dropped_unscored"),
        ([None, 0.4, 0.1], ["a", "b", "c"], (1, 2), None),  # unscored responses take no part
        ([-1.0, -3.0, -2.0, -5.0], ["a", "b", "c", "d"], (0, 3), None),
    ],
)
def test_choose_pair(rewards, texts, expected, dropped_field):
    stats = PairStats()
    choice = choose_pair(rewards, texts, stats)
    if expected is None:
        assert choice is None
        assert getattr(stats, dropped_field) == 1 and stats.kept == 0 and stats.dropped == 1
    else:
        assert (choice.chosen, choice.rejected) == expected
        assert stats.kept == 1 and stats.dropped == 0
