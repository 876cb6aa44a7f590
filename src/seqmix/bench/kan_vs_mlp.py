"""`seqmix kan-vs-mlp`: a KAN against an MLP of the same parameter count on scikit-learn's handwritten digits.

The KAN paper (Liu et al. 2024, §6) says "KANs are usually 10x slower than MLPs, given the same number of
parameters"; this measures our KANLinear. Data: ``sklearn.datasets.load_digits`` (1,797 8×8 images, 64
features in 0..16, shipped with scikit-learn: no download), scaled to [-1, 1], stratified train/test split.
Both models train with the same optimiser, batches and epochs; only the training steps are timed (the
per-epoch test evaluation is not). Seeds run the two models in alternating order (A B, B A, ...).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from seqmix.ffn.kan import KAN


def configure(p) -> None:
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--kan-hidden", type=int, default=32, help="KAN widths [64, kan_hidden, 10]")
    p.add_argument("--grid-size", type=int, default=5)
    p.add_argument("--spline-order", type=int, default=3)
    p.add_argument("--seeds", type=int, default=5, help="repeat with seeds 0..seeds-1 (split, init, batches)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads while timing")
    p.add_argument("--out", type=Path, default=Path("kan_vs_mlp.png"), help="where to save the plot (PNG)")


def load_digits_split(seed: int, test_fraction: float = 0.2):
    """(x_train, y_train, x_test, y_test): float32 features in [-1, 1] and int64 labels."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ValueError("kan-vs-mlp needs scikit-learn: pip install 'seqmix[bench]'") from err
    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(digits.data, digits.target, test_size=test_fraction,
                                              stratify=digits.target, random_state=seed)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32) / 8.0 - 1.0  # 0..16 -> [-1, 1], the KAN grid range
    return as_x(x_tr), torch.tensor(y_tr), as_x(x_te), torch.tensor(y_te)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def matched_mlp(n_in: int, n_out: int, n_params: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear (with biases) whose hidden width makes its parameter count closest to n_params."""
    hidden = max(1, round((n_params - n_out) / (n_in + 1 + n_out)))
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def train(model: nn.Module, data, epochs: int, batch_size: int, lr: float, seed: int) -> dict:
    """AdamW on cross-entropy. Returns per-epoch test accuracy and cumulative training seconds."""
    x_tr, y_tr, x_te, y_te = data
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    accuracy, seconds, elapsed = [], [], 0.0
    for _ in range(epochs):
        order = torch.randperm(len(x_tr), generator=gen)
        model.train()
        start = time.perf_counter()
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        elapsed += time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            accuracy.append((model(x_te).argmax(-1) == y_te).float().mean().item())
        seconds.append(elapsed)
    return {"accuracy": accuracy, "seconds": seconds}


def compare(epochs: int = 40, batch_size: int = 64, lr: float = 3e-3, kan_hidden: int = 32, grid_size: int = 5,
            spline_order: int = 3, seeds: int = 5) -> dict:
    """Train both models for every seed; returns {"KAN"|"MLP": {"params", "runs": [train(...) per seed]}}."""
    results = {"KAN": {"runs": []}, "MLP": {"runs": []}}
    for seed in range(seeds):
        data = load_digits_split(seed)
        torch.manual_seed(seed)
        kan = KAN([64, kan_hidden, 10], grid_size=grid_size, spline_order=spline_order, grid_range=(-1.0, 1.0))
        mlp = matched_mlp(64, 10, count_parameters(kan))
        models = {"KAN": kan, "MLP": mlp}
        for name in (["KAN", "MLP"] if seed % 2 == 0 else ["MLP", "KAN"]):
            results[name]["params"] = count_parameters(models[name])
            results[name]["runs"].append(train(models[name], data, epochs, batch_size, lr, seed))
    results["MLP"]["hidden"] = mlp[0].out_features
    results["KAN"]["hidden"] = kan_hidden
    return results


def summarise(results: dict) -> dict:
    """Final test accuracy (mean, sd over seeds), median training seconds and the KAN/MLP time ratio."""
    out = {}
    for name, r in results.items():
        final = [run["accuracy"][-1] for run in r["runs"]]
        times = [run["seconds"][-1] for run in r["runs"]]
        out[name] = {"params": r["params"], "hidden": r["hidden"], "accuracy": statistics.mean(final),
                     "accuracy_sd": statistics.stdev(final) if len(final) > 1 else 0.0,
                     "seconds": statistics.median(times)}
    out["time_ratio"] = out["KAN"]["seconds"] / out["MLP"]["seconds"]
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(10, 4))
    for name, color in (("KAN", "tab:red"), ("MLP", "tab:blue")):
        for i, run in enumerate(results[name]["runs"]):
            label = f"{name} ({results[name]['params']:,} params)" if i == 0 else None
            epochs = range(1, len(run["accuracy"]) + 1)
            by_epoch.plot(epochs, run["accuracy"], color=color, alpha=0.7, label=label)
            by_time.plot(run["seconds"], run["accuracy"], color=color, alpha=0.7, label=label)
    by_epoch.set(xlabel="epoch", ylabel="test accuracy", title="digits: accuracy per epoch")
    by_time.set(xlabel="training time (s)", ylabel="test accuracy", title="digits: accuracy per second")
    for ax in (by_epoch, by_time):
        ax.set_ylim(0.5, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args) -> int:
    for name in ("epochs", "batch_size", "kan_hidden", "grid_size", "seeds", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    results = compare(args.epochs, args.batch_size, args.lr, args.kan_hidden, args.grid_size, args.spline_order,
                      args.seeds)
    s = summarise(results)
    print(f"sklearn digits, {args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr}, "
          f"{args.seeds} seed(s), {torch.get_num_threads()} thread(s)")
    print("| model | widths | params | test accuracy | training time (median) |")
    print("|---|---|---|---|---|")
    for name in ("KAN", "MLP"):
        r = s[name]
        print(f"| {name} | 64-{r['hidden']}-10 | {r['params']:,} | {100 * r['accuracy']:.2f}% ± "
              f"{100 * r['accuracy_sd']:.2f} | {r['seconds']:.2f} s |")
    print(f"KAN / MLP training time: {s['time_ratio']:.1f}x")
    plot(results, args.out)
    print(f"plot: {args.out}")
    return 0
