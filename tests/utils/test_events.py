import statistics

import pytest
import torch

from detzoo.utils.events import EventStorage, get_event_storage, has_event_storage


def test_scalars_history_and_smoothing():
    values = [5.0, 1.0, 3.0, 9.0, 2.0]
    with EventStorage(start_iter=10) as storage:
        for v in values:
            storage.put_scalar("loss", torch.tensor(v))
            storage.put_scalar("lr", v / 10, smoothing_hint=False)
            storage.iter += 1
        assert storage.latest()["loss"] == (2.0, 14)
        smoothed = storage.latest_with_smoothing_hint(window_size=3)
        assert smoothed["loss"][0] == statistics.median(values[-3:])
        assert smoothed["lr"][0] == pytest.approx(0.2)
        assert [it for _, it in storage.history("loss").values()] == [10, 11, 12, 13, 14]


def test_nesting_and_scope():
    assert not has_event_storage()
    with pytest.raises(RuntimeError, match="EventStorage"):
        get_event_storage()
    with EventStorage() as outer:
        with EventStorage() as inner:
            assert get_event_storage() is inner
            with inner.name_scope("rpn"):
                inner.put_scalar("num_pos", 3)
            assert "rpn/num_pos" in inner.latest()
        assert get_event_storage() is outer


def test_conflicting_smoothing_hint_is_an_error():
    with EventStorage() as s:
        s.put_scalar("x", 1.0, smoothing_hint=True)
        with pytest.raises(ValueError, match="smoothing_hint"):
            s.put_scalar("x", 1.0, smoothing_hint=False)


def test_unknown_history_names_the_metric():
    with EventStorage() as s:
        with pytest.raises(KeyError, match="nope"):
            s.history("nope")
