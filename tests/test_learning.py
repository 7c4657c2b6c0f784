"""Learning: with a reward model that prefers the word 'good', PPO raises the mean reward."""
import pytest
from conftest import read_metrics, tiny_args

import abc_ppo


@pytest.mark.parametrize("scheme", ["abc", "sparse"])
def test_reward_rises(tiny, tmp_path, scheme):
    abc_ppo.main(tiny_args(tiny, tmp_path, "--reward", scheme, "--steps", "30", "--batch_size", "16",
                           "--mini_batch_size", "4", "--ppo_epochs", "4", "--lr", "2e-3", "--seed", "1"))
    rewards = [r["reward_mean"] for r in read_metrics(tmp_path)]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"{scheme}: first 5 steps {first:.2f}, last 5 steps {last:.2f}")
    assert last > first + 1.0, rewards
