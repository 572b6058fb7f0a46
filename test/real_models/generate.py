"""Writes the real-model fixtures of the test suite into a build directory.

Run at build time by CMake (Debian's python3-torch and python3-torchvision,
test-only packages: cmake/install-deps.sh --test-packages):
    python3 generate.py OUTPUT_DIR
For each model it writes NAME.pt (scripted, or traced where the name says
so) and, in counts.json, the input shape and the calls per module of one
forward, counted by Python's own forward hooks on the eager model, under the
names modtracker gives (the root named after its class). Fixed seeds: the
files are reproducible.
"""
import json
import os
import sys

import torch
import torchvision
from torch import nn


class Encoder(nn.Module):  # a TransformerEncoder and a head, batch first
    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True), 2)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.enc(x))


@torch.jit.script
class Pair:  # an object of a TorchScript class that carries tensors into a module
    def __init__(self, a: torch.Tensor, b: torch.Tensor):
        self.a = a
        self.b = b


class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, p: Pair) -> torch.Tensor:
        return self.lin(p.a) + p.b


class Stateful(nn.Module):  # mix gets pre's output only inside a Pair
    def __init__(self):
        super().__init__()
        self.pre = nn.Linear(8, 8)
        self.mix = Mixer()

    def forward(self, x):
        return self.mix(Pair(x, self.pre(x)))


def forward_calls(model, x):
    """Calls per module of one forward, by Python's forward hooks."""
    root = type(model).__name__
    counts = {}
    handles = []
    for name, module in model.named_modules(remove_duplicate=False):
        fqn = root + ("." + name if name else "")

        def hook(m, args, out, fqn=fqn):
            counts[fqn] = counts.get(fqn, 0) + 1
        handles.append(module.register_forward_hook(hook))
    model(x)
    for h in handles:
        h.remove()
    return counts


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    models = {
        "resnet18": (lambda: torchvision.models.resnet18(), [2, 3, 64, 64], "script"),
        "resnet18_traced": (lambda: torchvision.models.resnet18(), [2, 3, 64, 64], "trace"),
        "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(), [2, 3, 64, 64], "script"),
        "densenet121": (lambda: torchvision.models.densenet121(), [2, 3, 64, 64], "script"),
        "encoder": (lambda: Encoder(), [2, 8, 32], "script"),
        "stateful": (lambda: Stateful(), [2, 8], "script"),
    }
    manifest = {}
    for name, (make, shape, how) in models.items():
        torch.manual_seed(0)
        model = make()
        x = torch.randn(shape)
        calls = forward_calls(model, x)
        if how == "trace":
            scripted = torch.jit.trace(model, x, check_trace=False)
        else:
            scripted = torch.jit.script(model)
        scripted.save(os.path.join(out_dir, name + ".pt"))
        manifest[name] = {"input": shape, "forward_calls": calls}
    with open(os.path.join(out_dir, "counts.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main(sys.argv[1])
