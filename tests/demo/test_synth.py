import numpy as np
from PIL import Image

from demo.synth import CLASSES, EMPTY_EVERY, SHAPES, render_scene, write_corpus


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


def test_with_any_shape_an_outline_tells_nothing_of_the_class(tmp_path):
    outlines = {kind: set() for kind in CLASSES[1:]}
    for seed in range(60):
        scene = render_scene(seed, 64, any_shape=True)
        assert scene.caption == render_scene(seed, 64, any_shape=True).caption  # deterministic
        for kind in outlines:
            outlines[kind] |= {s for s in set(SHAPES.values()) if f"{kind} {s} " in scene.caption}
        # the same scene but for its outlines: same classes, same number of objects
        tied = render_scene(seed, 64)
        assert tied.caption.count(" at the ") == scene.caption.count(" at the ")
        assert [p.split()[1] for p in tied.caption.split(" and ")[1:]] == \
            [p.split()[1] for p in scene.caption.split(" and ")[1:]]
    assert all(len(shapes) >= 4 for shapes in outlines.values()), outlines
    write_corpus(str(tmp_path), num_train=0, num_val=1, size=64, num_test=2)
    assert len(list((tmp_path / "test_anyshape" / "masks").iterdir())) == 2


def test_captions_name_the_background_and_some_training_scenes_are_background_alone(tmp_path):
    scene, empty = render_scene(5, 64), render_scene(5, 64, empty=True)
    assert scene.caption.endswith(" on a mottled background.") and (scene.mask > 0).any()
    assert empty.caption == "a photo of a mottled background." and not empty.mask.any()
    write_corpus(str(tmp_path), num_train=2 * EMPTY_EVERY, num_val=2, size=64)
    captions = [p.read_text() for p in sorted((tmp_path / "train").glob("*.txt"))]
    assert [i for i, c in enumerate(captions) if " at the " not in c] == [EMPTY_EVERY - 1, 2 * EMPTY_EVERY - 1]
    # the labelled scenes keep their objects: the evaluation splits are not thinned
    val = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "val" / "masks").iterdir())]
    assert all(m.any() for m in val)
