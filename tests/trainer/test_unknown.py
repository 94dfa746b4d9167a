"""Refreshing unknown prototypes from the teacher features seen in training."""

import torch
import torch.nn.functional as F

from trainer.unknown import UnknownRefresher


def test_refresh_finds_the_clusters_and_flags_those_a_name_explains():
    g = torch.Generator().manual_seed(0)
    directions = torch.eye(8)[:3]  # direction 0 is a known class; 1 and 2 are not
    refresher = UnknownRefresher(directions[:1], num_unknown=3, explain_rule="cosine", explain_threshold=0.8,
                                 max_vectors=600, vectors_per_batch=64)
    for _ in range(20):
        truth = torch.randint(3, (4 * 4 * 4,), generator=g)
        vectors = F.normalize(directions[truth] + 0.05 * torch.randn(64, 8, generator=g), dim=-1)
        refresher.observe(vectors.T.reshape(8, 4, 4, 4).permute(1, 0, 2, 3))  # [V=4, D=8, 4, 4]
    assert sum(len(b) for b in refresher.buffer) <= 600 + 64
    targets = refresher.refresh()
    assert torch.equal(targets.known, directions[:1])
    assert len(targets.centres) == 3 and int(targets.explained.sum()) == 1
    assert (targets.centres[targets.explained] @ directions[0]).item() > 0.95  # the named cluster
    unknown = targets.unknown
    assert (unknown @ directions[0]).max() <= 0.8  # nothing the known name explains
    assert (unknown @ directions[1:].T).max(0).values.min() > 0.95  # both unexplained clusters found
