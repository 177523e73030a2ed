import copy
import pickle

import numpy as np
import pytest
import torch

from detzoo.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks


def make_instances(n=5, seed=0, image_size=(30, 40)):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 20
    boxes = Boxes(torch.cat([xy, xy + 5], dim=1))
    square = [np.array([0, 0, 4, 0, 4, 4, 0, 4], dtype=np.float64)]
    return Instances(
        image_size,
        gt_boxes=boxes,
        gt_classes=torch.arange(n) + 10 * seed,
        scores=torch.rand(n, generator=g),
        gt_masks=BitMasks(torch.rand(n, *image_size, generator=g) > 0.5),
        gt_keypoints=Keypoints(torch.rand(n, 3, 3, generator=g)),
        gt_polygons=PolygonMasks([[p + i for p in square] for i in range(n)]),
        names=[f"obj{i}" for i in range(n)],
    )


def test_fields_as_attributes():
    inst = Instances((10, 20))
    assert inst.image_size == (10, 20)
    inst.scores = torch.tensor([0.5, 0.7])
    inst.set("labels", torch.tensor([1, 2]))
    assert inst.has("scores") and inst.has("labels") and not inst.has("boxes")
    assert torch.equal(inst.get("scores"), inst.scores)
    assert list(inst.get_fields()) == ["scores", "labels"]
    inst.get_fields()["extra"] = [1, 2]  # the dict is the object's own
    assert inst.extra == [1, 2]
    inst.remove("labels")
    assert not inst.has("labels")
    with pytest.raises(AttributeError, match="Cannot find field 'labels'"):
        inst.labels
    with pytest.raises(KeyError, match="labels"):
        inst.remove("labels")


def test_length_checks():
    inst = Instances((10, 20), scores=torch.rand(3))
    assert len(inst) == 3
    with pytest.raises(ValueError, match="length 2 to Instances of length 3"):
        inst.labels = torch.tensor([1, 2])
    with pytest.raises(NotImplementedError, match="Empty Instances"):
        len(Instances((1, 1)))
    with pytest.raises(NotImplementedError, match="not iterable"):
        iter(inst)


def _assert_selected(selected, full, index_list):
    assert len(selected) == len(index_list)
    assert torch.equal(selected.gt_boxes.tensor, full.gt_boxes.tensor[index_list])
    assert torch.equal(selected.gt_classes, full.gt_classes[index_list])
    assert torch.equal(selected.gt_masks.tensor, full.gt_masks.tensor[index_list])
    assert torch.equal(selected.gt_keypoints.tensor, full.gt_keypoints.tensor[index_list])
    for got, i in zip(selected.gt_polygons.polygons, index_list):
        assert all(a is b for a, b in zip(got, full.gt_polygons.polygons[i]))
    assert selected.image_size == full.image_size


@pytest.mark.parametrize(
    "item,index_list",
    [
        (1, [1]),
        (-1, [4]),
        (slice(1, 4), [1, 2, 3]),
        (slice(None, None, 2), [0, 2, 4]),
        (torch.tensor([True, False, True, True, False]), [0, 2, 3]),
        (torch.tensor([4, 0, 2]), [4, 0, 2]),
    ],
)
def test_getitem(item, index_list):
    full = make_instances()
    if isinstance(item, torch.Tensor):
        full.remove("names")  # python lists cannot take tensor indices
    selected = full[item]
    _assert_selected(selected, full, index_list)
    assert isinstance(selected.gt_boxes, Boxes) and selected.gt_classes.dim() == 1
    if "names" in selected.get_fields():
        assert selected.names == [full.names[i] for i in index_list]


def test_getitem_out_of_range():
    with pytest.raises(IndexError, match="5 out of range for length 5"):
        make_instances()[5]
    with pytest.raises(IndexError):
        make_instances()[-6]


def test_boolean_filter_like_detectron2_usage():
    inst = make_instances(n=6)
    inst.remove("names")
    confident = inst[inst.scores > 0.5]
    expected = (inst.scores > 0.5).nonzero().squeeze(1).tolist()
    _assert_selected(confident, inst, expected)


def test_cat():
    parts = [make_instances(n, seed) for n, seed in [(2, 0), (3, 1), (1, 2)]]
    joined = Instances.cat(parts)
    assert len(joined) == 6
    assert torch.equal(joined.gt_classes, torch.cat([p.gt_classes for p in parts]))
    assert torch.equal(joined.gt_boxes.tensor, torch.cat([p.gt_boxes.tensor for p in parts]))
    assert torch.equal(joined.gt_masks.tensor, torch.cat([p.gt_masks.tensor for p in parts]))
    assert joined.names == parts[0].names + parts[1].names + parts[2].names
    assert len(joined.gt_polygons) == 6
    assert Instances.cat(parts[:1]) is parts[0]


def test_cat_errors():
    a, b = make_instances(2, 0), make_instances(2, 1, image_size=(31, 40))
    with pytest.raises(ValueError, match=r"element 1 has image size \(31, 40\)"):
        Instances.cat([a, b])
    with pytest.raises(ValueError, match="at least one"):
        Instances.cat([])
    with pytest.raises(TypeError, match="element 1 is a dict"):
        Instances.cat([a, {}])
    odd = [Instances((1, 1), x=np.zeros(2)), Instances((1, 1), x=np.zeros(2))]
    with pytest.raises(ValueError, match="field 'x' of type ndarray has no cat"):
        Instances.cat(odd)


def test_to_and_copy():
    inst = make_instances()
    moved = inst.to("cpu")
    assert moved is not inst and moved.names is inst.names
    assert torch.equal(moved.gt_boxes.tensor, inst.gt_boxes.tensor)
    cast = Instances((2, 2), scores=torch.zeros(3)).to(torch.float64)
    assert cast.scores.dtype == torch.float64
    for clone in (copy.deepcopy(inst), pickle.loads(pickle.dumps(inst))):
        assert torch.equal(clone.gt_classes, inst.gt_classes) and clone.image_size == (30, 40)


def test_repr():
    text = repr(Instances((3, 4), scores=torch.zeros(2)))
    assert text.startswith("Instances(num_instances=2, image_height=3, image_width=4")
    assert "scores: tensor" in text
    assert repr(Instances((3, 4))).startswith("Instances(num_instances=0")
