"""The thread count chosen by measurement (issue 20 item 4)."""

from __future__ import annotations


import torch

from captum_influence_patterns.utils.threads import available_cores, fastest_threads


class TestFastestThreads:
    def test_measures_the_candidates_and_restores_torch(self) -> None:
        before = torch.get_num_threads()
        chosen = fastest_threads([1, 2], repeats=1)
        assert torch.get_num_threads() == before
        assert set(chosen["seconds"]) == {1, 2}
        assert all(t > 0 for t in chosen["seconds"].values())
        fastest = min(chosen["seconds"].values())
        assert chosen["seconds"][chosen["threads"]] == fastest

    def test_one_candidate_needs_no_measurement(self) -> None:
        assert fastest_threads([1]) == {"threads": 1, "seconds": {}}
        assert available_cores() >= 1

