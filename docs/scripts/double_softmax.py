"""Print the loss and logit-gradient size of CrossEntropyLoss on logits vs on softmax outputs.

    python docs/scripts/double_softmax.py

docs/mnist.md quotes its table: it shows why the Graphcore tutorial's softmax output, fed to
CrossEntropyLoss (which applies log-softmax again), trains slowly and cannot unlearn
confident mistakes.
"""

import math

import torch
import torch.nn.functional as F

CASES = {
    "uniform (initialisation)": 0.0,
    "confident and right (logit +8 on the true class)": 8.0,
    "confident and wrong (logit +8 on another class)": -8.0,
}


def loss_and_gradient(logit: float, double_softmax: bool) -> tuple[float, float]:
    """Loss and the norm of its gradient w.r.t. the 10 logits, true class 0."""
    z = torch.zeros(1, 10)
    z[0, 0 if logit > 0 else 1] = abs(logit)
    z.requires_grad_(True)
    out = z.softmax(dim=1) if double_softmax else z
    loss = F.cross_entropy(out, torch.tensor([0]))
    loss.backward()
    return loss.item(), z.grad.norm().item()


def main() -> None:
    print(f"lowest possible loss with softmax outputs: {math.log(math.e + 9) - 1:.4f}")
    print("| case | loss (logits) | loss (softmax) | grad (logits) | grad (softmax) | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, logit in CASES.items():
        l1, g1 = loss_and_gradient(logit, double_softmax=False)
        l2, g2 = loss_and_gradient(logit, double_softmax=True)
        print(f"| {name} | {l1:.4f} | {l2:.4f} | {g1:.5f} | {g2:.5f} | {g1 / g2:.0f}x |")


if __name__ == "__main__":
    main()
