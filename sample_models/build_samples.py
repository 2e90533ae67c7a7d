"""Train the bundled sample models on scikit-learn's digits and export them to ONNX.

Run in its own environment (torch is never a dependency of ptq):

    python -m venv .venv-samples
    .venv-samples/bin/pip install -r sample_models/requirements.txt
    .venv-samples/bin/python sample_models/build_samples.py

Writes, next to this file:
  digits_cnn.onnx          Conv+BatchNorm+ReLU, residual Add, Concat, MaxPool, Resize,
                           GlobalAveragePool and a Gemm head (opset 13)
  digits_transformer.onnx  one transformer block: MatMul between activations, LayerNorm,
                           Softmax, GELU (Erf) (opset 17)
  digits/calib/NNNN.npy    200 calibration samples, [1, 1, 8, 8] float32
  digits/eval/NNNN.npy     500 evaluation samples, same layout
  digits/eval/labels.csv   "file,label" for the evaluation samples

The 1,797 digits are split with a fixed seed into train (1,097), calibration (200) and
evaluation (500); the three sets are disjoint.  Pixels (0..16) are scaled to [-1, 1].
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent
SEED = 20261125
N_CALIB = 200
N_EVAL = 500


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.res_a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.res_b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.branch1 = nn.Sequential(nn.Conv2d(16, 8, 1), nn.ReLU())
        self.branch3 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.head_conv = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.stem(x)
        x = torch.relu(x + self.res_b(self.res_a(x)))
        x = torch.cat([self.branch1(x), self.branch3(x)], dim=1)
        x = self.pool(x)
        x = self.head_conv(x)
        x = self.avg(x).flatten(1)
        return self.fc(x)


class DigitsTransformer(nn.Module):
    """Each of the 8 image rows is a token of 8 pixels."""

    def __init__(self, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.zeros(1, 8, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 10)
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x.reshape(-1, 8, 8)) + self.pos
        h = self.ln1(t)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) * self.scale, dim=-1)
        t = t + self.proj(att @ self.v(h))
        t = t + self.fc2(nn.functional.gelu(self.fc1(self.ln2(t))))
        return self.head(t.mean(dim=1))


def split(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    return order[N_CALIB + N_EVAL:], order[:N_CALIB], order[N_CALIB:N_CALIB + N_EVAL]


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int) -> None:
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def export(model: nn.Module, path: pathlib.Path, opset: int) -> None:
    torch.onnx.export(
        model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=opset,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
    )


def write_split(folder: pathlib.Path, x: np.ndarray, y: np.ndarray | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.npy"):
        old.unlink()
    lines = ["file,label"]
    for i, sample in enumerate(x):
        name = f"{i:04d}.npy"
        np.save(folder / name, sample[None])
        if y is not None:
            lines.append(f"{name},{int(y[i])}")
    if y is not None:
        (folder / "labels.csv").write_text("\n".join(lines) + "\n")


def main() -> None:
    torch.manual_seed(SEED)
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # [N, 1, 8, 8] in [-1, 1]
    y = digits.target.astype(np.int64)
    tr, ca, ev = split(len(x), np.random.default_rng(SEED))
    write_split(HERE / "digits" / "calib", x[ca], None)
    write_split(HERE / "digits" / "eval", x[ev], y[ev])
    for name, model, epochs, opset in [
        ("digits_cnn", DigitsCNN(), 30, 13),
        ("digits_transformer", DigitsTransformer(), 60, 17),
    ]:
        train(model, x[tr], y[tr], epochs)
        print(f"{name}: float accuracy on eval {accuracy(model, x[ev], y[ev]):.4f}")
        export(model, HERE / f"{name}.onnx", opset)


if __name__ == "__main__":
    main()
