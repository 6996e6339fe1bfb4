"""The PyTorch models of bench_gpu.py (imported only when a PyTorch case runs)."""
from __future__ import annotations

import torch
from torch import nn


class Activity(nn.Module):
    """examples/activity.py's classifier: input (B, 6, 2000), PyTorch's native NCL layout."""

    def __init__(self, hidden=200, classes=7, rate=0.3):
        super().__init__()
        self.conv = nn.Conv1d(6, 64, 100, stride=100)
        self.lstm = nn.LSTM(64, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 128, bias=False)
        self.bn = nn.BatchNorm1d(128)
        self.out = nn.Linear(128, classes)
        self.drop = nn.Dropout(rate)

    def forward(self, x):
        h = self.drop(torch.relu(self.conv(x))).transpose(1, 2)              # (B, 20, 64)
        h, _ = self.lstm(h)
        h = torch.relu(self.bn(self.fc(h.reshape(-1, h.shape[-1]))))         # (B*20, 128)
        return self.out(self.drop(h))


def mnist_cnn(rate=0.4):
    """The TF-tutorial MNIST CNN of _gpu_models.cnn_loss (NCHW input)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(7 * 7 * 64, 1024), nn.ReLU(), nn.Dropout(rate), nn.Linear(1024, 10))


class _Cat(nn.Module):
    def __init__(self, *branches):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


def _own_inception3(num_classes):
    """The same InceptionV3 as benchmarks/_models.py, for when torchvision is not installed."""
    def cbn(cin, cout, k, stride=1, same=True):
        k = (k, k) if isinstance(k, int) else k
        pad = (k[0] // 2, k[1] // 2) if same else 0
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False),
                             nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU(inplace=True))
    seq, pool = nn.Sequential, lambda: nn.AvgPool2d(3, 1, 1)  # noqa: E731
    layers = [cbn(3, 32, 3, 2, False), cbn(32, 32, 3, 1, False), cbn(32, 64, 3), nn.MaxPool2d(3, 2),
              cbn(64, 80, 1, 1, False), cbn(80, 192, 3, 1, False), nn.MaxPool2d(3, 2)]
    c = 192
    for pf in (32, 64, 64):                                                    # A
        layers.append(_Cat(cbn(c, 64, 1), seq(cbn(c, 48, 1), cbn(48, 64, 5)),
                           seq(cbn(c, 64, 1), cbn(64, 96, 3), cbn(96, 96, 3)), seq(pool(), cbn(c, pf, 1))))
        c = 224 + pf
    layers.append(_Cat(cbn(c, 384, 3, 2, False),                                 # B
                       seq(cbn(c, 64, 1), cbn(64, 96, 3), cbn(96, 96, 3, 2, False)), nn.MaxPool2d(3, 2)))
    c = 768
    for c7 in (128, 160, 160, 192):                                             # C
        layers.append(_Cat(cbn(c, 192, 1), seq(cbn(c, c7, 1), cbn(c7, c7, (1, 7)), cbn(c7, 192, (7, 1))),
                           seq(cbn(c, c7, 1), cbn(c7, c7, (7, 1)), cbn(c7, c7, (1, 7)), cbn(c7, c7, (7, 1)),
                               cbn(c7, 192, (1, 7))),
                           seq(pool(), cbn(c, 192, 1))))
    layers.append(_Cat(seq(cbn(c, 192, 1), cbn(192, 320, 3, 2, False)),          # D
                       seq(cbn(c, 192, 1), cbn(192, 192, (1, 7)), cbn(192, 192, (7, 1)),
                           cbn(192, 192, 3, 2, False)), nn.MaxPool2d(3, 2)))
    c = 1280
    for _ in range(2):                                                          # E
        split = lambda: _Cat(cbn(384, 384, (1, 3)), cbn(384, 384, (3, 1)))  # noqa: E731
        layers.append(_Cat(cbn(c, 320, 1), seq(cbn(c, 384, 1), split()),
                           seq(cbn(c, 448, 1), cbn(448, 384, 3), split()), seq(pool(), cbn(c, 192, 1))))
        c = 2048
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


def inception_v3(num_classes=1000):
    """(model, where it comes from): torchvision's Inception3 when installed."""
    try:
        import torchvision
    except ImportError:
        return _own_inception3(num_classes), "bench's own Inception3 (torchvision not installed)"
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                          num_classes=num_classes)
    return net, f"torchvision {torchvision.__version__} inception_v3"
