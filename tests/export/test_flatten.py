"""flatten_to_tuple / schemas: flattening then rebuilding gives the same object back, and
TracingAdapter's argument checks."""
import pytest
import torch
from torch import nn

from detzoo.export import TracingAdapter, flatten_to_tuple
from detzoo.export.flatten import DictSchema, InstancesSchema, ListSchema
from detzoo.structures import Boxes, Instances, ROIMasks, RotatedBoxes


def _instances():
    return Instances(
        (20, 30),
        pred_boxes=Boxes(torch.rand(3, 4)),
        scores=torch.rand(3),
        pred_classes=torch.tensor([0, 2, 1]),
    )


def _assert_instances_equal(a, b):
    assert tuple(int(s) for s in a.image_size) == tuple(int(s) for s in b.image_size)
    assert sorted(a.get_fields()) == sorted(b.get_fields())
    for name, value in a.get_fields().items():
        other = b.get(name)
        assert type(value) is type(other)
        torch.testing.assert_close(getattr(value, "tensor", value), getattr(other, "tensor", other), rtol=0, atol=0)


def test_nested_round_trip():
    obj = [{"b": torch.ones(2), "a": (torch.zeros(1), "label")}, torch.arange(3)]
    values, schema = flatten_to_tuple(obj)
    # dict keys are taken in sorted order: "a" before "b"
    assert [type(v).__name__ for v in values] == ["Tensor", "str", "Tensor", "Tensor"]
    rebuilt = schema(values)
    assert rebuilt[0]["a"][1] == "label" and isinstance(rebuilt[0]["a"], tuple)
    torch.testing.assert_close(rebuilt[0]["b"], torch.ones(2))
    torch.testing.assert_close(rebuilt[1], torch.arange(3))


def test_instances_round_trip():
    instances = _instances()
    values, schema = flatten_to_tuple({"instances": instances})
    assert isinstance(schema, DictSchema) and isinstance(schema.schemas[0], InstancesSchema)
    assert len(values) == 4  # three fields + image size
    torch.testing.assert_close(values[-1], torch.tensor([20, 30]))
    _assert_instances_equal(schema(values)["instances"], instances)


def test_tensor_wrappers_keep_their_class():
    for wrapped in (Boxes(torch.rand(2, 4)), RotatedBoxes(torch.rand(2, 5)), ROIMasks(torch.rand(2, 5, 5))):
        values, schema = flatten_to_tuple(wrapped)
        assert values == (wrapped.tensor,)
        assert type(schema(values)) is type(wrapped)


def test_schemas_compare_by_value():
    _, first = flatten_to_tuple([_instances()])
    _, second = flatten_to_tuple([_instances()])
    assert isinstance(first, ListSchema) and first == second


def test_non_string_keys_rejected():
    with pytest.raises(KeyError, match="str keys"):
        flatten_to_tuple({1: torch.ones(1)})


def test_wrong_number_of_values():
    _, schema = flatten_to_tuple([torch.ones(1), torch.ones(1)])
    with pytest.raises(ValueError, match="expects 2"):
        schema((torch.ones(1),))


class _ToInstances(nn.Module):
    def forward(self, inputs):
        image = inputs[0]["image"]
        boxes = image.flatten()[:8].view(2, 4)
        return [{"instances": Instances(image.shape[-2:], pred_boxes=Boxes(boxes), scores=boxes.sum(1))}]


def test_adapter_traces_and_rebuilds():
    image = torch.rand(3, 4, 5)
    adapter = TracingAdapter(_ToInstances(), [{"image": image}])
    traced = torch.jit.trace(adapter, adapter.flattened_inputs)
    other = torch.rand(3, 4, 5)
    rebuilt = adapter.outputs_schema(traced(other))[0]["instances"]
    _assert_instances_equal(rebuilt, _ToInstances()([{"image": other}])[0]["instances"])
    wrapper = adapter._create_wrapper(traced)
    _assert_instances_equal(wrapper([{"image": other}])[0]["instances"], rebuilt)


def test_adapter_rejects_non_tensor_inputs():
    with pytest.raises(ValueError, match="tensors only"):
        TracingAdapter(_ToInstances(), [{"image": torch.rand(3, 4, 5), "file_name": "x.jpg"}])
    adapter = TracingAdapter(_ToInstances(), [{"image": torch.rand(3, 4, 5), "file_name": "x.jpg"}],
                             allow_non_tensor=True)
    assert adapter.inputs_schema is None and len(adapter.flattened_inputs) == 1
    with pytest.raises(ValueError, match="own `flattened_inputs`"):
        adapter(torch.rand(3, 4, 5))


def test_adapter_follows_model_mode():
    model = _ToInstances().eval()
    assert not TracingAdapter(model, [{"image": torch.rand(3, 4, 5)}]).training
