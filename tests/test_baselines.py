import pytest
import torch

from datadistill.baselines import (average_train, fixed_lrs, herding_train, kmeans_train, knn_accuracy,
                                   knn_predict, random_train)
from datadistill.errors import ConfigError

SOURCES = [random_train, average_train, kmeans_train, herding_train]


def _build(source, blobs, steps=2, per_class=3, epochs=2, seed=0):
    return source(blobs.train, steps, per_class, blobs.num_classes, fixed_lrs(steps * epochs, 0.05),
                  blobs.mean, blobs.std, torch.Generator().manual_seed(seed))


def _row_index(rows: torch.Tensor, x: torch.Tensor) -> list[int]:
    """For each row of x (n, ...), the index of the identical row in rows (m, ...), or -1."""
    eq = (x.flatten(1)[:, None] == rows.flatten(1)[None]).all(-1)  # (n, m)
    return [int(r.nonzero()[0]) if r.any() else -1 for r in eq]


@pytest.mark.parametrize("source", SOURCES, ids=lambda f: f.__name__)
def test_shapes_labels_and_metadata_match_a_distilled_set(blobs, source):
    s = _build(source, blobs)
    assert s.images.shape == (2, 9, 1, 8, 8) and s.images.dtype == torch.float32
    assert s.labels.tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 2]] * 2  # class-major within a step
    assert s.steps == 2 and s.epochs == 2 and s.lrs.tolist() == pytest.approx([0.05] * 4)
    assert s.num_classes == 3 and s.mean == (0.0,) and s.std == (1.0,)
    assert torch.isfinite(s.images).all()


def test_random_train_takes_distinct_training_images_of_the_right_class(blobs):
    s = _build(random_train, blobs, steps=3, per_class=4)
    x, y = s.images.flatten(0, 1), s.labels.flatten()
    where = _row_index(blobs.train.x, x)
    assert -1 not in where, "every image must be a training image"
    assert len(set(where)) == len(where), "no image twice"
    assert blobs.train.y[where].tolist() == y.tolist()
    assert _row_index(blobs.test.x, x) == [-1] * len(where), "no test image"
    other = _build(random_train, blobs, steps=3, per_class=4, seed=1)
    assert not torch.equal(other.images, s.images)


def test_average_train_is_the_class_mean_of_the_training_split(blobs):
    s = _build(average_train, blobs)
    for c in range(3):
        want = blobs.train.x[blobs.train.y == c].mean(0)
        got = s.images[s.labels == c]  # (steps * per_class, C, H, W)
        assert torch.equal(got, want.expand_as(got))
        assert not torch.allclose(want, blobs.test.x[blobs.test.y == c].mean(0))


def test_kmeans_with_one_centre_per_image_gives_back_the_class_images(blobs):
    # 40 training images per class: 4 steps x 10 per class centres each sit on one image
    s = _build(kmeans_train, blobs, steps=4, per_class=10)
    for c in range(3):
        mine = blobs.train.x[blobs.train.y == c]
        centres = s.images[s.labels == c]
        exact = "donot_use_mm_for_euclid_dist"  # the matmul form is off by ~1e-2 at zero distance
        nearest = torch.cdist(centres.flatten(1), mine.flatten(1), compute_mode=exact).min(1)
        assert nearest.values.max() < 1e-5
        assert sorted(nearest.indices.tolist()) == list(range(40)), "a permutation of the images"


def test_kmeans_centres_are_near_their_class_and_seeded(blobs):
    a, b = _build(kmeans_train, blobs, seed=3), _build(kmeans_train, blobs, seed=3)
    assert torch.equal(a.images, b.images)
    class_means = torch.stack([blobs.train.x[blobs.train.y == c].mean(0) for c in range(3)])
    closest = torch.cdist(a.images.flatten(0, 1).flatten(1), class_means.flatten(1)).argmin(1)
    assert torch.equal(closest, a.labels.flatten())


@pytest.mark.parametrize("source", [random_train, kmeans_train], ids=lambda f: f.__name__)
def test_asking_for_more_images_than_a_class_has_is_refused(blobs, source):
    with pytest.raises(ConfigError, match=r"^42 real images per class asked for \(.*\), but class 0 has 40 training "
                                          r"images$"):
        _build(source, blobs, steps=6, per_class=7)


def test_bad_shapes_and_step_sizes_are_refused(blobs):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match="lrs must be a 1-d tensor"):
        random_train(blobs.train, 2, 1, 3, fixed_lrs(3, 0.1), (0.0,), (1.0,), g)
    with pytest.raises(ConfigError, match="steps must be positive"):
        average_train(blobs.train, 0, 1, 3, fixed_lrs(3, 0.1), (0.0,), (1.0,), g)
    with pytest.raises(ConfigError, match="step size must be positive"):
        fixed_lrs(3, 0.0)
    with pytest.raises(ConfigError, match="number of step sizes must be positive"):
        fixed_lrs(0, 0.1)
    assert fixed_lrs(4, 0.02).tolist() == pytest.approx([0.02] * 4)


def test_knn_on_its_own_memory_with_k1_is_perfect(blobs):
    train = blobs.train
    assert knn_accuracy(train.x, train.y, train.x, train.y, k=1) == 1.0
    assert 0.9 < knn_accuracy(train.x, train.y, blobs.test.x, blobs.test.y, k=3) <= 1.0


def _brute_force_knn(mx, my, tx, k, p):
    out = []
    for x in tx.double():
        d = [float(((x - m).abs() ** p).sum() ** (1 / p)) for m in mx.double()]
        order = sorted(range(len(d)), key=d.__getitem__)[:k]
        votes = {}
        for rank, i in enumerate(order):
            n, first = votes.get(int(my[i]), (0, rank))
            votes[int(my[i])] = (n + 1, first)
        out.append(max(votes, key=lambda c: (votes[c][0], -votes[c][1])))
    return out


@pytest.mark.parametrize("k,p", [(1, 2.0), (2, 2.0), (4, 1.0), (5, 3.0), (6, 0.5)])
def test_knn_matches_brute_force(k, p):
    g = torch.Generator().manual_seed(k)
    mx, my = torch.randn(30, 2, 3, 3, generator=g), torch.randint(0, 3, (30,), generator=g)
    tx, ty = torch.randn(50, 2, 3, 3, generator=g), torch.randint(0, 3, (50,), generator=g)
    want = _brute_force_knn(mx, my, tx, k, p)
    assert knn_predict(mx, my, tx, k, p).tolist() == want
    assert knn_accuracy(mx, my, tx, ty, k, p) == pytest.approx(
        sum(w == t for w, t in zip(want, ty.tolist())) / 50)


def test_knn_tie_goes_to_the_class_of_the_nearest():
    mx = torch.tensor([[0.0], [1.0], [-1.5], [2.5]])
    my = torch.tensor([1, 0, 0, 1])  # from 0.1: class 1 at 0.1, class 0 at 0.9, 1.6, class 1 at 2.4
    assert knn_predict(mx, my, torch.tensor([[0.1]]), k=2).tolist() == [1]
    assert knn_predict(mx, my, torch.tensor([[0.9]]), k=2).tolist() == [0]
    assert knn_predict(mx, my, torch.tensor([[0.1]]), k=3).tolist() == [0]


@pytest.mark.parametrize("k,p,message", [(0, 2.0, "k must be at least 1, got 0"),
                                         (1, 0.0, "p must be positive, got 0.0"),
                                         (1, -1.0, "p must be positive"),
                                         (121, 2.0, r"k=121 neighbours asked for \(nearest_neighbor K P\), the "
                                                    r"memory holds 120 images; accepted: K in 1..120")])
def test_knn_bad_arguments(blobs, k, p, message):
    with pytest.raises(ConfigError, match=message) as e:
        knn_accuracy(blobs.train.x, blobs.train.y, blobs.test.x, blobs.test.y, k, p)
    assert "\n" not in str(e.value)


def test_herding_picks_greedily_toward_the_class_mean(blobs):
    s = _build(herding_train, blobs, steps=2, per_class=2)  # 4 picks per class, dealt over 2 steps
    for c in range(3):
        x = blobs.train.x[blobs.train.y == c].flatten(1).double()
        mu = x.mean(0)
        picks = torch.cat([s.images[step, 2 * c:2 * c + 2] for step in range(2)]).flatten(1).double()
        # brute force: each pick minimises the distance of the running mean to the class mean
        for i in range(4):
            before = picks[:i].sum(0)
            gaps = ((mu - (before + x) / (i + 1)) ** 2).sum(1)
            used = torch.tensor([bool((x[j] == picks[:i]).all(1).any()) for j in range(len(x))])
            assert torch.equal(picks[i], x[gaps.masked_fill(used, float("inf")).argmin()])
        # and the picks' mean is nearer the class mean than most random draws of 4
        g = torch.Generator().manual_seed(0)
        draws = [((x[torch.randperm(len(x), generator=g)[:4]].mean(0) - mu) ** 2).sum() for _ in range(50)]
        assert ((picks.mean(0) - mu) ** 2).sum() < torch.stack(draws).quantile(0.1)
