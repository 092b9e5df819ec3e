"""Train three small models with real-world shapes on scikit-learn's digits and export them to ONNX.

Offline generation script (torch is needed here only; the product never imports it). Deterministic:
seeded, 2 CPU threads, deterministic algorithms (a rerun on the same machine is byte-identical). Run
from the repository root (about 2.5 + 1.5 + 0.5 minutes on 2 otherwise idle CPU cores):

    python tests/data/make_trained_models.py [mobilenet_digits recognizer_digits attention_classifier]

Naming models remakes only those (trained_data.npz, which does not depend on training, is always rewritten).

Writes into tests/data/:
  mobilenet_digits.onnx      MobileNetV3-style classifier, 1x32x32 digits -> 10 logits (opset 13)
  recognizer_digits.onnx     conv stem + 2 pre-norm transformer layers + CTC head over a 6625-class
                             vocabulary (PaddleOCR-sized), 1x16x48 strips of 3 digits -> [N, 12, 6625]
                             softmax (opset 13; LayerNorm as ReduceMean/Sub/Pow/Sqrt/Div, GELU as Erf)
  attention_classifier.onnx  ViT-style classifier, 1x16x16 digits as 16 4x4 patches + class token
                             -> 10 logits (opset 17; LayerNorm as the LayerNormalization op)
  trained_data.npz           per model: <name>_calibration (training data), <name>_test_images,
                             <name>_test_labels (held-out digits, never seen in training)

Split: the same as make_digits_cnn.py (np.random.seed(0) permutation of the 1797 digits; the first 1300
train, the other 497 are held out; the attention classifier's data equals digits_data.npz's). The
recognizer's training strips are random triples of training digits; its test strips are built from held-out digits only.
Each ONNX file records onnxruntime's accuracy on its held-out set in metadata_props["mcc.test_accuracy"]
(repr of a float; tests/compiler/test_trained_models.py recomputes it exactly).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

OUT = Path(__file__).resolve().parent
VOCAB = 6625          # PaddleOCR ppocr_keys_v1 size incl. blank and space; blank = 0, digit d = class d + 1
BLANK = 0
torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

# ---------------------------------------------------------------------------------------------- data
d = load_digits()
raw = d.images.astype(np.float32) / 16.0            # [1797, 8, 8]
labels = d.target.astype(np.int64)
perm = np.random.RandomState(0).permutation(len(raw))   # == np.random.seed(0); np.random.permutation
TRAIN, TEST = perm[:1300], perm[1300:]


def resize(size: int) -> np.ndarray:
    x = F.interpolate(torch.from_numpy(raw)[:, None], size=(size, size), mode='bilinear', align_corners=False)
    return ((x - 0.5) / 0.5).numpy()                # background -1, ink up to +1


X16, X32 = resize(16), resize(32)


def shift(xb: torch.Tensor, m: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by up to m pixels (background -1 fills in)."""
    n, _, h, w = xb.shape
    p = F.pad(xb, (m, m, m, m), value=-1.0)
    off = torch.randint(0, 2 * m + 1, (n, 2), generator=g)
    return torch.stack([p[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(off.tolist())])


def ort_outputs(path: Path, feeds: dict) -> list[np.ndarray]:
    """Same session settings as tests/conftest.py:ort_run (the oracle the tests use)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=['CPUExecutionProvider']).run(None, feeds)


def ctc_greedy(probs: np.ndarray) -> list[list[int]]:
    """Greedy CTC decode of [N, T, VOCAB] -> digit sequences (collapse repeats, drop blanks)."""
    out = []
    for row in probs.argmax(-1):
        seq, prev = [], BLANK
        for c in row.tolist():
            if c != prev and c != BLANK:
                seq.append(c - 1)
            prev = c
        out.append(seq)
    return out


def export(net: nn.Module, example: torch.Tensor, path: Path, opset: int, out_name: str,
           dyn_in: dict, dyn_out: dict) -> None:
    net.eval()
    torch.onnx.export(net, (example,), str(path), input_names=['image'], output_names=[out_name],
                      dynamic_axes={'image': dyn_in, out_name: dyn_out}, opset_version=opset,
                      dynamo=False, do_constant_folding=False)


def stamp(path: Path, acc: float, props: dict[str, str]) -> None:
    m = onnx.load(str(path))
    for k, v in {'mcc.test_accuracy': repr(acc), **props}.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def fit(net: nn.Module, steps: int, lr: float, wd: float, batch_fn, loss_fn) -> None:
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    net.train()
    t0 = time.time()
    for step in range(steps):
        xb, yb = batch_fn(step)
        loss = loss_fn(net(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if step % 250 == 0 or step == steps - 1:
            print(f'  step {step:5d}/{steps} loss {loss.item():.4f}  {time.time() - t0:.0f} s', flush=True)
    net.eval()


def epoch_batches(x: np.ndarray, y: np.ndarray, bs: int, m: int, noise: float, seed: int):
    """batch_fn over shuffled epochs of (x, y), with random shifts and a little noise."""
    g = torch.Generator().manual_seed(seed)
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    per_epoch = len(X) // bs
    order = []

    def batch(step: int):
        if step % per_epoch == 0:
            order[:] = [torch.randperm(len(X), generator=g)]
        b = order[0][(step % per_epoch) * bs:(step % per_epoch + 1) * bs]
        xb = shift(X[b], m, g) if m else X[b]
        return xb + noise * torch.randn(xb.shape, generator=g), Y[b]
    return batch


# ------------------------------------------------------------------------------ 1. MobileNetV3-style
class HSwishExplicit(nn.Module):
    """Hard-swish spelled out, as older exporters and hand-written models do: x * relu6(x + 3) / 6."""
    def forward(self, x): return x * F.relu6(x + 3.0) / 6.0


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        mid = max(8, (c // r + 4) // 8 * 8)
        self.fc1, self.fc2 = nn.Conv2d(c, mid, 1), nn.Conv2d(mid, c, 1)

    def forward(self, x):
        w = F.adaptive_avg_pool2d(x, 1)                       # GlobalAveragePool
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(w))))   # HardSigmoid, Mul


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, exp: int, cout: int, k: int, s: int, se: bool, hs: bool):
        super().__init__()
        act = HSwishExplicit if hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [nn.Conv2d(cin, exp, 1, bias=False), nn.BatchNorm2d(exp), act()]
        layers += [nn.Conv2d(exp, exp, k, s, k // 2, groups=exp, bias=False), nn.BatchNorm2d(exp), act()]
        if se:
            layers.append(SqueezeExcite(exp))
        layers += [nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body, self.residual = nn.Sequential(*layers), s == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetDigits(nn.Module):
    # (cin, expansion, cout, kernel, stride, SE, hard-swish) -- MobileNetV3-Small, narrowed for 32x32
    CFG = ((16, 16, 16, 3, 2, True, False),     # 16x16 -> 8x8
           (16, 72, 24, 3, 1, False, False),
           (24, 88, 24, 3, 1, False, False),
           (24, 96, 40, 5, 2, True, True),      # 8x8 -> 4x4
           (40, 120, 40, 5, 1, True, True),
           (40, 120, 48, 5, 1, True, True),
           (48, 144, 48, 5, 1, True, True))

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.blocks = nn.Sequential(*[InvertedResidual(*c) for c in self.CFG])
        self.last = nn.Sequential(nn.Conv2d(48, 288, 1, bias=False), nn.BatchNorm2d(288), nn.Hardswish())
        self.head = nn.Sequential(nn.Linear(288, 256), nn.Hardswish(), nn.Dropout(0.1), nn.Linear(256, 10))

    def forward(self, x):
        x = self.last(self.blocks(self.stem(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ------------------------------------------------------------------- shared: hand-written attention
class Attention(nn.Module):
    """Multi-head self-attention from Linear/Reshape/Transpose/MatMul/Softmax (timm / PaddleOCR SVTR style)."""
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-norm transformer encoder layer with an exact (Erf) GELU MLP."""
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


# ------------------------------------------------------------------ 2. transformer text recognizer
def cbr(i: int, o: int, k: int, s) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class Recognizer(nn.Module):
    def __init__(self, dim: int = 40, heads: int = 4, mlp: int = 80):
        super().__init__()
        self.stem = nn.Sequential(
            cbr(1, 16, 3, 2),                # 16 x W    -> 8 x W/2
            cbr(16, 32, 3, 2),               #           -> 4 x W/4
            cbr(32, 32, 3, (2, 1)),          #           -> 2 x W/4
            nn.Conv2d(32, dim, (2, 3), 1, (0, 1)), nn.BatchNorm2d(dim), nn.ReLU())   # -> 1 x W/4
        self.blocks = nn.Sequential(Block(dim, heads, mlp), Block(dim, heads, mlp))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, VOCAB)

    def forward(self, x):
        x = self.stem(x).squeeze(2).permute(0, 2, 1)       # [N, T, C], T = W / 4
        logits = self.head(self.norm(self.blocks(x)))
        return F.log_softmax(logits, -1) if self.training else F.softmax(logits, -1)


def strips(idx: np.ndarray, n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """n strips of 3 digits drawn from images idx: [n, 1, 16, 48] and digit labels [n, 3]."""
    pick = rng.choice(idx, size=(n, 3))
    return np.concatenate([X16[pick[:, j]] for j in range(3)], axis=3), labels[pick]


# ---------------------------------------------------------------------- 3. ViT-style classifier
class AttentionClassifier(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, mlp: int = 128):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 4, 4)                       # 16x16 -> 4x4 patches = 16 tokens
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 17, dim))
        self.blocks = nn.Sequential(Block(dim, heads, mlp), Block(dim, heads, mlp))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)               # [N, 16, C]
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


# ------------------------------------------------------------------------------------------- main
def data_sets() -> dict[str, np.ndarray]:
    """Everything trained_data.npz holds (deterministic; independent of training)."""
    rxte, ryte = strips(TEST, 300, np.random.RandomState(3))
    rxcal, _ = strips(TRAIN, 128, np.random.RandomState(4))
    return {'mobilenet_calibration': X32[TRAIN][:128], 'mobilenet_test_images': X32[TEST],
            'mobilenet_test_labels': labels[TEST],
            'recognizer_calibration': rxcal, 'recognizer_test_images': rxte, 'recognizer_test_labels': ryte,
            'attention_calibration': X16[TRAIN][:128], 'attention_test_images': X16[TEST],
            'attention_test_labels': labels[TEST]}


def make_mobilenet(data: dict) -> float:
    net = MobileNetDigits()
    fit(net, 1300 // 64 * 30, 4e-3, 1e-4, epoch_batches(X32[TRAIN], labels[TRAIN], 64, 2, 0.05, 1),
        F.cross_entropy)
    path = OUT / 'mobilenet_digits.onnx'
    xte, yte = data['mobilenet_test_images'], data['mobilenet_test_labels']
    export(net, torch.from_numpy(xte[:1]), path, 13, 'logits', {0: 'batch'}, {0: 'batch'})
    acc = float((ort_outputs(path, {'image': xte})[0].argmax(1) == yte).mean())
    stamp(path, acc, {'mcc.test_set': 'trained_data.npz mobilenet_test_images/labels (497 held-out digits)',
                      'mcc.source': 'tests/data/make_trained_models.py'})
    return acc


def make_recognizer(data: dict) -> float:
    net = Recognizer()
    rng, g = np.random.RandomState(2), torch.Generator().manual_seed(2)

    def batch(step: int):
        xb, yb = strips(TRAIN, 128, rng)
        xb = shift(torch.from_numpy(xb), 1, g)
        return xb + 0.05 * torch.randn(xb.shape, generator=g), torch.from_numpy(yb + 1)   # digit d = class d+1

    def ctc(logp, yb):
        # CTC reads only the blank's and the labels' log-probs: take those 11 columns (blank, digits) of
        # the full-vocabulary log_softmax -- same loss and gradients, far cheaper than CTC over 6625 classes
        # (the normalization still pushes every unused class down, as in real OCR training).
        n, t = logp.shape[0], logp.shape[1]
        return F.ctc_loss(logp[:, :, :11].permute(1, 0, 2), yb, torch.full((n,), t, dtype=torch.long),
                          torch.full((n,), 3, dtype=torch.long), blank=BLANK, zero_infinity=True)

    fit(net, RECOGNIZER_STEPS, 3e-3, 1e-4, batch, ctc)
    path = OUT / 'recognizer_digits.onnx'
    xte, yte = data['recognizer_test_images'], data['recognizer_test_labels']
    export(net, torch.from_numpy(xte[:1]), path, 13, 'probs', {0: 'batch', 3: 'width'}, {0: 'batch', 1: 'seq'})
    dec = ctc_greedy(ort_outputs(path, {'image': xte})[0])
    acc = float(np.mean([s == l for s, l in zip(dec, yte.tolist())]))
    stamp(path, acc, {'mcc.test_set': 'trained_data.npz recognizer_test_images/labels (300 strips of 3 '
                                      'held-out digits); metric: greedy CTC decode == label sequence',
                      'mcc.vocabulary': f'{VOCAB} classes; blank = 0; digit d = class d + 1; others unused',
                      'mcc.source': 'tests/data/make_trained_models.py'})
    return acc


def make_attention(data: dict) -> float:
    net = AttentionClassifier()
    fit(net, 1300 // 64 * ATTENTION_EPOCHS, 2e-3, 0.05,
        epoch_batches(X16[TRAIN], labels[TRAIN], 64, 1, 0.05, 5), F.cross_entropy)
    path = OUT / 'attention_classifier.onnx'
    xte, yte = data['attention_test_images'], data['attention_test_labels']
    export(net, torch.from_numpy(xte[:1]), path, 17, 'logits', {0: 'batch'}, {0: 'batch'})
    acc = float((ort_outputs(path, {'image': xte})[0].argmax(1) == yte).mean())
    stamp(path, acc, {'mcc.test_set': 'trained_data.npz attention_test_images/labels (497 held-out digits)',
                      'mcc.source': 'tests/data/make_trained_models.py'})
    return acc


RECOGNIZER_STEPS, ATTENTION_EPOCHS = 500, 100
MODELS = {'mobilenet_digits': make_mobilenet, 'recognizer_digits': make_recognizer,
          'attention_classifier': make_attention}


def main(argv: list[str]) -> int:
    """Make every model, or only those named on the command line (the data file is always rewritten)."""
    names = argv or list(MODELS)
    data = data_sets()
    np.savez_compressed(OUT / 'trained_data.npz', **data)
    results = {}
    for name in names:
        print(f'{name}: training', flush=True)
        t0 = time.time()
        torch.manual_seed(0)
        results[name] = (MODELS[name](data), time.time() - t0)
    print()
    for name, (acc, secs) in results.items():
        size = (OUT / f'{name}.onnx').stat().st_size
        print(f'{name:22s} held-out accuracy {acc:.4f}  ({secs:.0f} s, {size / 1e6:.2f} MB)')
    print(f'trained_data.npz       {(OUT / "trained_data.npz").stat().st_size / 1e6:.2f} MB')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
