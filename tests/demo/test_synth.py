import numpy as np

from demo.synth import CLASSES, SHAPES, render_scene, write_corpus


def test_scenes_are_deterministic_and_captioned():
    a, b = render_scene(7, 96), render_scene(7, 96)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask) and a.caption == b.caption
    assert a.image.shape == (96, 96, 3) and a.mask.shape == (96, 96)
    for label in np.unique(a.mask)[1:]:
        assert f"{CLASSES[label]} {SHAPES[CLASSES[label]]}" in a.caption


def test_colour_does_not_identify_a_class():
    # the same class must show up in clearly different mean colours across scenes
    means = {c: [] for c in range(1, len(CLASSES))}
    for seed in range(60):
        s = render_scene(seed, 64)
        for c in np.unique(s.mask)[1:]:
            means[c].append(s.image[s.mask == c].mean(0))
    for c, m in means.items():
        assert len(m) >= 3, CLASSES[c]
        assert np.ptp(np.stack(m), axis=0).max() > 80, CLASSES[c]


def test_every_class_appears_in_a_small_corpus(tmp_path):
    labels = set()
    for seed in range(40):
        labels |= set(np.unique(render_scene(seed, 64).mask).tolist())
    assert labels == set(range(len(CLASSES)))
    write_corpus(str(tmp_path), num_train=3, num_val=2, size=64)
    assert sorted(p.name for p in (tmp_path / "train").iterdir())[:2] == ["000000.jpg", "000000.txt"]
    assert (tmp_path / "val" / "classes.txt").read_text().split() == list(CLASSES)
    assert len(list((tmp_path / "val" / "masks").iterdir())) == 2
