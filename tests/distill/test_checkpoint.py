from pathlib import Path

import pytest
import torch

from torchslim.distill.trainer import fit


def _train(tiny_task, checkpoint: Path | None, epochs: int = 3, crash_at: int | None = None):
    torch.manual_seed(0)
    model = tiny_task.build()

    def loader(epoch: int):
        if crash_at is not None and epoch == crash_at:
            raise KeyboardInterrupt
        return tiny_task.train_loader(seed=epoch)

    history = fit(
        model,
        loader,
        lambda m, x, y: tiny_task.loss(m(x), y),
        epochs=epochs,
        lr=1e-2,
        evaluate=tiny_task.evaluate,
        checkpoint=checkpoint,
    )
    return model, history


def test_resumed_training_equals_uninterrupted_training(tiny_task, tmp_path: Path) -> None:
    reference, ref_history = _train(tiny_task, None)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_task, tmp_path / "ckpt", crash_at=2)
    assert (tmp_path / "ckpt" / "trainer.json").is_file()
    resumed, history = _train(tiny_task, tmp_path / "ckpt")
    assert history == ref_history
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_checkpoint_holds_no_pickle(tiny_task, tmp_path: Path) -> None:
    _train(tiny_task, tmp_path / "ckpt", epochs=1)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["state.safetensors", "trainer.json"]
